//! GraphQL over HTTP: no mutation over GET, and POST only as JSON.

use serde_json::json;

use super::code_of;
use crate::helpers::spawn_app_with;

#[tokio::test]
async fn a_mutation_over_get_gets_405_and_is_not_executed() {
    let app = spawn_app_with(|_| {}).await;
    let service = app.token_with(
        "svc",
        serde_json::Map::from_iter([("roles".to_string(), json!(["service"]))]),
    );
    let get = |query: &str| {
        reqwest::Client::new()
            .get(app.url("/graphql"))
            .query(&[("query", query)])
            .bearer_auth(&service)
    };
    let mutation = r#"mutation { publish(topic: "system:t", type: "x") { id } }"#;
    let refused = get(mutation).send().await.unwrap();
    assert_eq!(refused.headers()["allow"], "POST");
    assert_eq!(code_of(refused).await, (405, json!("METHOD_NOT_ALLOWED")));
    // Chosen among other operations (async-graphql reads the name from `operation_name` on GET),
    // it is refused all the same.
    let named = format!(
        "query Q {{ me {{ id }} }} {}",
        mutation.replacen("mutation", "mutation M", 1)
    );
    let refused = get(&named)
        .query(&[("operation_name", "M")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);
    let query = get("{ me { id } }").send().await.unwrap();
    assert_eq!(query.status(), 200);

    let text = app.metrics_text().await;
    assert!(
        !text.contains("type=\"mutation\""),
        "no mutation ran:\n{text}"
    );
}

#[tokio::test]
async fn a_graphql_post_that_is_not_json_gets_415() {
    let app = spawn_app_with(|_| {}).await;
    let body = json!({ "query": "{ me { id } }" }).to_string();
    let send = |content_type: Option<&'static str>| {
        let mut request = reqwest::Client::new()
            .post(app.url("/graphql"))
            .bearer_auth(app.token("alice"))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    for refused in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let response = send(refused).await.unwrap();
        assert_eq!(
            code_of(response).await,
            (415, json!("UNSUPPORTED_MEDIA_TYPE")),
            "{refused:?}"
        );
    }
    for accepted in [
        "application/json",
        "application/json; charset=utf-8",
        "application/graphql-response+json",
    ] {
        let response = send(Some(accepted)).await.unwrap();
        assert_eq!(response.status(), 200, "{accepted}");
    }
}

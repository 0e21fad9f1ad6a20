use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with};

async fn post_from(app: &TestApp, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(app.url("/graphql"))
        .bearer_auth(app.token("alice"))
        .json(&json!({ "query": "{ me { id } }" }));
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn an_ip_over_its_http_budget_gets_429_with_retry_after_and_a_graphql_error() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(post_from(&app, None).await.status(), 200);
    }
    let refused = post_from(&app, None).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "HTTP_RATE_LIMITED");
}

#[tokio::test]
async fn websocket_upgrades_share_the_per_ip_http_budget() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 1;
    })
    .await;
    assert_eq!(post_from(&app, None).await.status(), 200);
    assert_eq!(app.try_ws("/graphql", &[]).await.err(), Some(429));
}

#[tokio::test]
async fn a_forwarded_for_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 1;
    })
    .await;
    assert_eq!(post_from(&app, Some("198.51.100.1")).await.status(), 200);
    assert_eq!(
        post_from(&app, Some("198.51.100.2")).await.status(),
        429,
        "a forged header buys no fresh budget"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_ip_has_its_own_budget() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 1;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    assert_eq!(post_from(&app, Some("198.51.100.1")).await.status(), 200);
    assert_eq!(post_from(&app, Some("198.51.100.2")).await.status(), 200);
    // The client forged a hop; the proxy appended the real address, which is what counts.
    assert_eq!(
        post_from(&app, Some("6.6.6.6, 198.51.100.1"))
            .await
            .status(),
        429
    );

    let mut client = app
        .try_ws("/graphql", &[("x-forwarded-for", "203.0.113.50")])
        .await
        .unwrap();
    client
        .send(json!({ "type": "connection_init", "payload": { "token": app.token("alice") } }))
        .await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    drop(client);
    let rows = app.closed_connection_rows().await;
    assert_eq!(
        rows[0].2, "203.0.113.50",
        "the connection log records the client, not the proxy"
    );
}

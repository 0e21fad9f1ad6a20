//! `POST /api/publish` with the API key, and the internal `$` topics no client may reach.

use serde_json::{Value, json};

use crate::helpers::{PUBLISH_KEY, TestApp, spawn_app, spawn_app_from_file};

const EVENTS: &str = "subscription($t: String!) { events(topic: $t) { id type payload } }";

async fn publish(app: &TestApp, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(app.url("/api/publish"))
        .json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn an_event_published_with_the_api_key_reaches_subscribers() {
    let app = spawn_app().await;
    let mut alice = app.ws_acked("alice").await;
    alice
        .send(json!({ "id": "1", "type": "subscribe", "payload": { "query": EVENTS, "variables": { "t": "user:alice" } } }))
        .await;
    // A ping answered means the subscription is registered before the publish.
    alice.send(json!({ "type": "ping" })).await;
    assert_eq!(alice.recv().await["type"], "pong");

    let (status, body) = publish(
        &app,
        Some(PUBLISH_KEY),
        json!({ "topic": "user:alice", "type": "invoice.paid", "payload": { "amount": 42 } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let event = alice.recv().await;
    let data = &event["payload"]["data"]["events"];
    assert_eq!(data["type"], "invoice.paid");
    assert_eq!(data["payload"]["amount"], 42);
    assert_eq!(data["id"], body["id"], "the response carries the event id");
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_refused_and_counted() {
    let app = spawn_app().await;
    let body = json!({ "topic": "user:alice", "type": "x" });
    let (status, answer) = publish(&app, None, body.clone()).await;
    assert_eq!((status, code(&answer)), (401, "UNAUTHENTICATED"));
    let (status, answer) = publish(&app, Some("not-the-key"), body).await;
    assert_eq!((status, code(&answer)), (401, "UNAUTHENTICATED"));
    app.assert_metrics(&[
        "palisade_auth_failures_total{reason=\"missing\"} 1",
        "palisade_auth_failures_total{reason=\"bad_key\"} 1",
    ])
    .await;
}

#[tokio::test]
async fn the_topic_rules_still_decide_what_the_key_may_publish() {
    let app = spawn_app().await;
    // `conversation:…` is published by members, not by the service role.
    let (status, answer) = publish(
        &app,
        Some(PUBLISH_KEY),
        json!({ "topic": "conversation:9f0c", "type": "x" }),
    )
    .await;
    assert_eq!((status, code(&answer)), (403, "FORBIDDEN"));
}

#[tokio::test]
async fn malformed_bodies_get_bad_request_without_publishing() {
    let app = spawn_app().await;
    for body in [
        json!({ "topic": "user:alice" }),
        json!({ "topic": "", "type": "x" }),
        json!({ "topic": "user:alice", "type": "x", "extra": 1 }),
    ] {
        let (status, _) = publish(&app, Some(PUBLISH_KEY), body.clone()).await;
        assert!((400..500).contains(&status), "{body} got {status}");
    }
    let metrics = app.metrics_text().await;
    assert!(
        !metrics.contains("palisade_bus_publishes_total{result=\"ok\"}"),
        "nothing was published"
    );
}

#[tokio::test]
async fn the_endpoint_is_off_when_no_key_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hardening.yaml");
    std::fs::write(
        &path,
        "auth: { publish_key_env: PALISADE_TEST_UNSET_PUBLISH_KEY }\n",
    )
    .unwrap();
    let app = spawn_app_from_file(&path).await;
    let (status, answer) = publish(
        &app,
        Some(PUBLISH_KEY),
        json!({ "topic": "user:alice", "type": "x" }),
    )
    .await;
    assert_eq!((status, code(&answer)), (403, "FORBIDDEN"));
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("PALISADE_TEST_UNSET_PUBLISH_KEY"),
        "{answer}"
    );
}

#[tokio::test]
async fn internal_topics_are_out_of_reach_whatever_the_rules_say() {
    // A rule that would match anything of two segments, `$control` included.
    let app = crate::helpers::spawn_app_with(|c| {
        c.topics.rules = serde_yaml::from_str(
            "- pattern: '{a}:{b}'\n  subscribe: [authenticated]\n  publish: [authenticated]\n",
        )
        .unwrap();
    })
    .await;
    let answer = app
        .post(
            "mallory",
            "mutation { publish(topic: \"$control:x\", type: \"revoke\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(answer["errors"][0]["extensions"]["code"], "FORBIDDEN");
    let (status, _) = publish(
        &app,
        Some(PUBLISH_KEY),
        json!({ "topic": "$presence:x", "type": "join" }),
    )
    .await;
    assert_eq!(status, 403);
}

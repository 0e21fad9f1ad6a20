//! Topics, presence and replays: what a client can make the bus hold or do.

mod presence;
mod resume;
mod topics;

use std::time::Duration;

use palisade::config::Config;
use serde_json::{Value, json};

use crate::helpers::{PUBLISH_KEY, TestApp, WsClient};

pub const EVENTS: &str =
    "subscription($t: String!, $a: ID) { events(topic: $t, after: $a) { id type payload } }";

/// How long a test polls for a state the server reaches asynchronously.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Room for many operations on one connection, so the bounds under test are the only ones hit.
pub fn roomy(config: &mut Config) {
    config.operations.rate_limit.limit = 1_000_000;
    config.connections.max_operations = 1_000;
    config.connections.send_queue = 100_000;
}

/// Polls `/metrics` until `name` satisfies `done`; its last value.
pub async fn until(app: &TestApp, name: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let value = app.sample(name).await;
        if let Some(value) = value.filter(|v| done(*v)) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {value:?}, not there yet"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn subscribe(client: &mut WsClient, id: &str, topic: &str, after: Option<&str>) {
    let payload = json!({ "query": EVENTS, "variables": { "t": topic, "a": after } });
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": payload }))
        .await;
}

pub async fn complete(client: &mut WsClient, id: &str) {
    client.send(json!({ "id": id, "type": "complete" })).await;
}

/// The extensions of the first error of an HTTP GraphQL answer.
pub fn extensions(answer: &Value) -> &Value {
    &answer["errors"][0]["extensions"]
}

/// Publishes `type: "t"` on `topic` through `POST /api/publish`.
pub async fn publish(app: &TestApp, topic: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/api/publish"))
        .bearer_auth(PUBLISH_KEY)
        .json(&json!({ "topic": topic, "type": "t", "payload": { "n": 1 } }))
        .send()
        .await
        .unwrap()
}

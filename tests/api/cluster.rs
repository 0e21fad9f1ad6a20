//! Several instances sharing one Redis behave as one server, at a realistic number of connections.

use futures_util::{StreamExt, stream};
use serde_json::json;

use crate::helpers::{PUBLISH_KEY, TestApp, WsClient, redis_url, spawn_instance, unique_prefix};

const CONNECTIONS: usize = 1_000;

/// Opens an acknowledged connection for `user` subscribed to `topic`; the pong proves the
/// subscription is registered before anything is published.
async fn subscribed(app: &TestApp, user: String, topic: &str) -> WsClient {
    let mut client = app.ws_acked(&user).await;
    client
        .send(json!({ "id": "b", "type": "subscribe", "payload": {
            "query": "subscription($t: String!) { events(topic: $t) { id type payload } }",
            "variables": { "t": topic } } }))
        .await;
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_over_two_instances_all_receive_one_broadcast() {
    let prefix = unique_prefix();
    // Every client connects from 127.0.0.1, so the per-IP limits are raised for the test.
    let tweak = |c: &mut palisade::config::Config| {
        c.connections.max_per_ip = 5_000;
        c.connections.connects_per_minute_per_ip = 5_000;
        c.operations.http.per_ip_per_second = 5_000;
        c.operations.http.burst = 5_000;
    };
    let a = spawn_instance(&redis_url(), &prefix, tweak).await;
    let b = spawn_instance(&redis_url(), &prefix, tweak).await;
    let topic = "system:incident";

    // Opened 50 at a time: a realistic reconnect storm, not one client after another.
    let mut clients: Vec<WsClient> = stream::iter(0..CONNECTIONS)
        .map(|n| {
            let app = if n % 2 == 0 { &a } else { &b };
            subscribed(app, format!("user-{n}"), topic)
        })
        .buffer_unordered(50)
        .collect()
        .await;

    let response = reqwest::Client::new()
        .post(a.url("/api/publish"))
        .bearer_auth(PUBLISH_KEY)
        .json(&json!({ "topic": topic, "type": "incident", "payload": { "severity": "major" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"].clone();

    let received: Vec<serde_json::Value> = stream::iter(clients.iter_mut())
        .map(|client| async move { client.recv().await })
        .buffer_unordered(100)
        .collect()
        .await;
    assert_eq!(received.len(), CONNECTIONS);
    for message in &received {
        let event = &message["payload"]["data"]["events"];
        assert_eq!((&event["id"], &event["type"]), (&id, &json!("incident")));
    }
}

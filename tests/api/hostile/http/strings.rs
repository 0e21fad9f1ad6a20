//! Strings a client sends are stored at most `MAX_TEXT_BYTES` long.

use palisade::writer::MAX_TEXT_BYTES;
use serde_json::{Value, json};

use super::audit_rows;
use crate::helpers::spawn_app_with;

#[tokio::test]
async fn a_60_kb_user_agent_is_stored_as_at_most_512_bytes() {
    let app = spawn_app_with(|_| {}).await;
    let agent = "A".repeat(60_000);
    let mut client = app
        .try_ws("/graphql", &[("user-agent", &agent)])
        .await
        .unwrap();
    client
        .send(json!({ "type": "connection_init", "payload": { "token": app.token("alice") } }))
        .await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    drop(client);
    app.closed_connection_rows().await;
    let (stored,): (String,) = palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query_as("SELECT user_agent FROM connection_log")
            .fetch_one(pool)
            .await
            .unwrap()
    });
    assert_eq!(stored.len(), MAX_TEXT_BYTES);
    assert!(agent.starts_with(&stored));
}

fn longest_string(value: &Value) -> usize {
    match value {
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(longest_string).max().unwrap_or(0),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| key.len().max(longest_string(value)))
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

#[tokio::test]
async fn the_headers_of_an_audit_row_are_cut_to_512_bytes_each() {
    let app = spawn_app_with(|_| {}).await;
    let name = format!("x-{}", "n".repeat(4_000));
    let agent = "A".repeat(60_000);
    let mut client = app
        .try_ws("/graphql", &[(&name, "value"), ("user-agent", &agent)])
        .await
        .unwrap();
    client
        .send(json!({ "type": "connection_init", "payload": { "token": "not-a-jwt" } }))
        .await;
    assert_eq!(client.closed().await.0, 4403);
    let rows = audit_rows(&app, "socket.auth_failed").await;
    let metadata: Value = serde_json::from_str(&rows[0].1).unwrap();
    assert!(metadata["headers"].as_object().unwrap().len() > 2);
    assert!(
        longest_string(&metadata) <= MAX_TEXT_BYTES,
        "{} bytes",
        longest_string(&metadata)
    );
}

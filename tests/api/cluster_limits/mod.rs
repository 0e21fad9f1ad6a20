//! Connection limits across instances sharing one Redis (one key prefix per test). `leases`
//! covers what happens over time: a crashed instance (the real binary, killed with SIGKILL),
//! churn, and a Redis that goes away or restarts empty.

mod leases;

use std::time::Duration;

use palisade::config::{Config, OnUserLimit};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::helpers::{TestApp, WsClient, redis_url, spawn_instance, unique_prefix};

/// How long a test waits for the cluster to converge (a lease to run out, keys to be released).
pub(super) const CONVERGE: Duration = Duration::from_secs(15);

/// Connections one user may open per minute in tests that connect more often than the default.
pub(super) const MANY: u32 = 10_000;

/// Sends `connection_init` for `sub` and returns the connection once acknowledged, or the close
/// code and reason it got instead.
pub(super) async fn admit(
    app: &TestApp,
    mut client: WsClient,
    sub: &str,
) -> Result<WsClient, (u16, String)> {
    let token = app.token(sub);
    client
        .send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } }))
        .await;
    loop {
        match client.next_frame().await {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "connection_ack", "{message}");
                return Ok(client);
            }
            Message::Close(Some(frame)) => {
                return Err((frame.code.into(), frame.reason.to_string()));
            }
            Message::Close(None) => return Err((1005, String::new())),
            _ => continue,
        }
    }
}

pub(super) async fn connect(app: &TestApp, sub: &str) -> Result<WsClient, (u16, String)> {
    admit(app, app.ws("graphql-transport-ws").await, sub).await
}

async fn watch_notices(client: &mut WsClient) {
    client.send(json!({ "id": "n", "type": "subscribe", "payload": { "query": "subscription { connectionNotices { kind } }" } })).await;
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
}

pub(super) async fn assert_open(client: &mut WsClient) {
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
}

/// Two instances sharing one fresh prefix, both configured by `tweak`.
async fn pair(tweak: impl Fn(&mut Config)) -> (TestApp, TestApp) {
    let prefix = unique_prefix();
    let a = spawn_instance(&redis_url(), &prefix, &tweak).await;
    let b = spawn_instance(&redis_url(), &prefix, &tweak).await;
    (a, b)
}

#[tokio::test]
async fn close_oldest_replaces_the_users_connection_held_by_another_instance() {
    let (a, b) = pair(|c| c.connections.max_per_user = 1).await;
    let mut old = connect(&a, "alice").await.unwrap();
    watch_notices(&mut old).await;
    let mut new = connect(&b, "alice")
        .await
        .expect("the newer connection is admitted");
    let notice = old.recv().await;
    assert_eq!(
        notice["payload"]["data"]["connectionNotices"]["kind"],
        "REPLACED"
    );
    assert_eq!(
        old.closed().await,
        (1008, "Replaced by a newer connection".into())
    );
    assert_open(&mut new).await;
}

#[tokio::test]
async fn reject_new_refuses_a_connection_when_the_user_is_at_the_limit_on_another_instance() {
    let (a, b) = pair(|c| {
        c.connections.max_per_user = 1;
        c.connections.on_user_limit = OnUserLimit::RejectNew;
    })
    .await;
    let mut first = connect(&a, "alice").await.unwrap();
    assert_eq!(
        connect(&b, "alice").await.err(),
        Some((1008, "Too many connections for this user".into()))
    );
    assert_open(&mut first).await;
    assert!(
        connect(&b, "bob").await.is_ok(),
        "other users are unaffected"
    );
}

#[tokio::test]
async fn max_per_ip_counts_the_connections_of_every_instance() {
    let (a, b) = pair(|c| c.connections.max_per_ip = 2).await;
    let _first = a.try_ws("/graphql", &[]).await.unwrap();
    let _second = b.try_ws("/graphql", &[]).await.unwrap();
    assert_eq!(a.try_ws("/graphql", &[]).await.err(), Some(429));
    assert_eq!(b.try_ws("/graphql", &[]).await.err(), Some(429));
}

#[tokio::test]
async fn reconnects_per_minute_counts_the_connections_made_on_every_instance() {
    let (a, b) = pair(|c| c.connections.reconnects_per_minute = 2).await;
    connect(&a, "alice").await.unwrap();
    connect(&b, "alice").await.unwrap();
    let (code, reason) = connect(&a, "alice").await.err().unwrap();
    assert_eq!(code, 1013);
    assert!(
        reason.starts_with("Too many new connections for this user"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_revoke_on_one_instance_closes_the_users_connection_on_another() {
    let (a, b) = pair(|_| {}).await;
    let mut alice = connect(&b, "alice").await.unwrap();
    watch_notices(&mut alice).await;
    let mut bob = connect(&b, "bob").await.unwrap();
    let admin = a.token_with("ops", Map::from_iter([("roles".into(), json!(["admin"]))]));
    let response = reqwest::Client::new()
        .post(a.url("/admin/revoke"))
        .bearer_auth(admin)
        .json(&json!({ "user_id": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "closed": 0, "notified": true }),
        "closed counts this instance's connections only"
    );
    assert_eq!(
        alice.recv().await["payload"]["data"]["connectionNotices"]["kind"],
        "REVOKED"
    );
    assert_eq!(alice.closed().await, (4403, "Revoked".into()));
    assert_open(&mut bob).await;
}

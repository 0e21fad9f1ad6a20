use palisade::config::OnUserLimit;
use serde_json::{Map, json};

use crate::helpers::{TestApp, WsClient, spawn_app, spawn_app_with};

async fn init(app: &TestApp, client: &mut WsClient, sub: &str) {
    let token = app.token(sub);
    client
        .send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } }))
        .await;
}

async fn watch_notices(client: &mut WsClient) {
    client.send(json!({ "id": "n", "type": "subscribe", "payload": { "query": "subscription { connectionNotices { kind message } }" } })).await;
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
}

#[tokio::test]
async fn an_upgrade_with_a_cookie_from_a_foreign_or_missing_origin_is_refused_with_403() {
    let app = spawn_app().await;
    let cookie = ("cookie", "connect.sid=s%3Aabc.def");
    assert_eq!(
        app.try_ws("/graphql", &[cookie, ("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(app.try_ws("/graphql", &[cookie]).await.err(), Some(403));
    assert!(
        app.try_ws("/graphql", &[cookie, ("origin", "http://localhost:5173")])
            .await
            .is_ok()
    );
    // Token-only clients are not held to the origin list by default.
    assert!(
        app.try_ws("/graphql", &[("origin", "https://evil.example")])
            .await
            .is_ok()
    );

    app.state.audit.flush().await;
    let rows: Vec<(String, String)> = palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query_as("SELECT action, CAST(metadata AS TEXT) FROM audit_log WHERE action = 'origin_rejected' ORDER BY id").fetch_all(pool).await.unwrap()
    });
    assert_eq!(rows.len(), 2);
    assert!(rows[0].1.contains("https://evil.example") && rows[1].1.contains("<none>"));
}

#[tokio::test]
async fn with_check_origin_always_token_clients_need_an_allowed_origin_too() {
    let app = spawn_app_with(|c| c.auth.check_origin = palisade::config::OriginCheck::Always).await;
    assert_eq!(app.try_ws("/graphql", &[]).await.err(), Some(403));
    assert!(
        app.try_ws("/graphql", &[("origin", "http://localhost:8080")])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn too_many_connections_from_one_ip_get_429_before_the_upgrade() {
    let app = spawn_app_with(|c| c.connections.max_per_ip = 2).await;
    let first = app.try_ws("/graphql", &[]).await.unwrap();
    let _second = app.try_ws("/graphql", &[]).await.unwrap();
    assert_eq!(app.try_ws("/graphql", &[]).await.err(), Some(429));
    drop(first);
    // The slot frees once the server notices the first connection ended.
    for _ in 0..50 {
        if app.try_ws("/graphql", &[]).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the freed slot was never reusable");
}

#[tokio::test]
async fn too_many_upgrades_per_minute_from_one_ip_get_429_with_retry_after() {
    let app = spawn_app_with(|c| c.connections.connects_per_minute_per_ip = 2).await;
    for _ in 0..2 {
        app.try_ws("/graphql", &[]).await.unwrap();
    }
    let response = reqwest::Client::new()
        .get(app.url("/graphql"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "graphql-transport-ws")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn close_oldest_tells_the_old_connection_it_was_replaced_and_closes_it_with_a_code_clients_do_not_retry()
 {
    let app = spawn_app_with(|c| c.connections.max_per_user = 1).await;
    let mut old = app.ws_acked("alice").await;
    watch_notices(&mut old).await;
    let mut new = app.ws("graphql-transport-ws").await;
    init(&app, &mut new, "alice").await;
    assert_eq!(new.recv().await["type"], "connection_ack");
    let notice = old.recv().await;
    assert_eq!(
        notice["payload"]["data"]["connectionNotices"]["kind"],
        "REPLACED"
    );
    assert_eq!(
        old.closed().await,
        (1008, "Replaced by a newer connection".into())
    );
    assert!(
        app.ws_acked("bob")
            .await
            .stream
            .get_ref()
            .get_ref()
            .peer_addr()
            .is_ok(),
        "other users are unaffected"
    );
}

#[tokio::test]
async fn reject_new_refuses_the_extra_connection_and_keeps_the_old_one() {
    let app = spawn_app_with(|c| {
        c.connections.max_per_user = 1;
        c.connections.on_user_limit = OnUserLimit::RejectNew;
    })
    .await;
    let mut old = app.ws_acked("alice").await;
    let mut new = app.ws("graphql-transport-ws").await;
    init(&app, &mut new, "alice").await;
    assert_eq!(
        new.closed().await,
        (1008, "Too many connections for this user".into())
    );
    old.send(json!({ "type": "ping" })).await;
    assert_eq!(old.recv().await["type"], "pong");
}

#[tokio::test]
async fn a_user_reconnecting_too_often_is_closed_with_a_retryable_code() {
    let app = spawn_app_with(|c| c.connections.reconnects_per_minute = 2).await;
    for _ in 0..2 {
        app.ws_acked("alice").await;
    }
    let mut third = app.ws("graphql-transport-ws").await;
    init(&app, &mut third, "alice").await;
    let (code, reason) = third.closed().await;
    assert_eq!(code, 1013);
    assert!(
        reason.starts_with("Too many new connections for this user: retry in"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_admin_can_revoke_every_connection_of_a_user() {
    let app = spawn_app().await;
    let mut alice = app.ws_acked("alice").await;
    watch_notices(&mut alice).await;
    let mut bob = app.ws_acked("bob").await;
    let client = reqwest::Client::new();
    let not_admin = client
        .post(app.url("/admin/revoke"))
        .bearer_auth(app.token("mallory"))
        .json(&json!({ "user_id": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(not_admin.status(), 403);

    let admin = app.token_with(
        "ops",
        Map::from_iter([("roles".to_string(), json!(["admin"]))]),
    );
    let response = client
        .post(app.url("/admin/revoke"))
        .bearer_auth(admin)
        .json(&json!({ "user_id": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({ "closed": 1, "notified": true })
    );
    assert_eq!(
        alice.recv().await["payload"]["data"]["connectionNotices"]["kind"],
        "REVOKED"
    );
    assert_eq!(alice.closed().await, (4403, "Revoked".into()));
    bob.send(json!({ "type": "ping" })).await;
    assert_eq!(bob.recv().await["type"], "pong", "bob keeps his connection");
}

#[tokio::test]
async fn the_access_token_query_parameter_works_only_when_allowed() {
    let app = spawn_app().await;
    let path = format!("/graphql?access_token={}", app.token("alice"));
    let mut refused = app.try_ws(&path, &[]).await.unwrap();
    refused.send(json!({ "type": "connection_init" })).await;
    assert_eq!(refused.closed().await.0, 4403);

    let app = spawn_app_with(|c| c.auth.jwt.allow_query_token = true).await;
    let path = format!("/graphql?access_token={}", app.token("alice"));
    let mut accepted = app.try_ws(&path, &[]).await.unwrap();
    accepted.send(json!({ "type": "connection_init" })).await;
    assert_eq!(accepted.recv().await["type"], "connection_ack");
}

#[tokio::test]
async fn limits_are_released_when_connections_end() {
    let app = spawn_app_with(|c| c.connections.max_per_user = 1).await;
    for _ in 0..3 {
        let client = app.ws_acked("alice").await;
        drop(client);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut last = app.ws_acked("alice").await;
    last.send(json!({ "type": "ping" })).await;
    assert_eq!(last.recv().await["type"], "pong");
}

//! Credentials: token lifetimes, refreshAuth, session re-checks and what claims reach the page.
//! Spawns Palisade on port 0 with a fresh database and talks to it over real sockets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use palisade::db::Database;
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use crate::helpers::{
    SESSION_SECRET, TEST_SECRET, TestApp, WsClient, insert_session, publish_event, spawn_app_on,
    spawn_app_with, until_live,
};

/// A real HS256 token carrying exactly `claims`, for claims `TestApp::token_for` would overwrite
/// (a fractional or malformed `exp`).
fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(TEST_SECRET),
    )
    .unwrap()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn init_with(client: &mut WsClient, token: &str) {
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    client.send(init).await;
}

#[tokio::test]
async fn a_fractional_exp_still_closes_the_connection_at_expiry() {
    let app = spawn_app_with(|c| {
        c.auth.jwt.leeway = "0s".parse().unwrap();
        c.auth.jwt.expiry_warning = "1s".parse().unwrap();
    })
    .await;
    let exp = now().floor() + 2.5;
    let mut client = app
        .ws_acked_with(&signed(json!({ "sub": "alice", "exp": exp })))
        .await;
    assert_eq!(client.closed().await, (4403, "Token expired".into()));
    let closed_at = now();
    assert!(
        closed_at >= exp && closed_at < exp + 1.0,
        "closed at {closed_at}, exp {exp}"
    );
}

#[tokio::test]
async fn a_time_claim_that_is_not_a_number_is_refused_at_init() {
    let app = spawn_app_with(|_| {}).await;
    let exp = now().floor() + 600.0;
    let tokens = [
        signed(json!({ "sub": "alice", "exp": exp.to_string() })),
        signed(json!({ "sub": "alice", "exp": exp, "nbf": "yesterday" })),
        signed(json!({ "sub": "alice", "exp": 1.0e300 })),
    ];
    for token in &tokens {
        let mut client = app.ws("graphql-transport-ws").await;
        init_with(&mut client, token).await;
        assert_eq!(client.closed().await, (4403, "Forbidden".into()));
    }
    app.assert_metrics(&["palisade_auth_failures_total{reason=\"malformed\"} 3"])
        .await;
}

/// What the Express app would write into `sess` on a later request.
async fn update_session(db: &Database, sid: &str, sess: &Value) {
    palisade::on_pool!(db, |pool| {
        sqlx::query("UPDATE session SET sess = CAST($1 AS json) WHERE sid = $2")
            .bind(sess.to_string())
            .bind(sid)
            .execute(pool)
            .await
            .map(drop)
            .unwrap()
    });
}

/// A connection that sent `connection_init` with the signed cookie of session `sid`.
async fn session_init(app: &TestApp, sid: &str) -> WsClient {
    let signed = palisade::auth::session::sign(sid, SESSION_SECRET);
    let encoded =
        percent_encoding::utf8_percent_encode(&signed, percent_encoding::NON_ALPHANUMERIC);
    let cookie = format!("connect.sid={encoded}");
    let mut client = app
        .try_ws(
            "/graphql",
            &[("cookie", &cookie), ("origin", "http://localhost:5173")],
        )
        .await
        .unwrap();
    client.send(json!({ "type": "connection_init" })).await;
    client
}

/// A connection acknowledged for the session `sid`.
async fn session_connection(app: &TestApp, sid: &str) -> WsClient {
    let mut client = session_init(app, sid).await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    client
}

/// A session connection of alice, a member of workspace `acme`, with `feed` subscribed to
/// `workspace:acme:feed` and `mine` to `user:alice`, both live; returns it and the stored `sess`.
async fn acme_member_following(app: &TestApp, sid: &str) -> (WsClient, Value) {
    let sess = json!({ "cookie": { "originalMaxAge": 3_600_000 }, "passport": { "user": "alice" }, "workspaces": ["acme"] });
    insert_session(&app.state.db, sid, &sess, 60).await;
    let mut client = session_connection(app, sid).await;
    client
        .send(subscribe_events("feed", "workspace:acme:feed"))
        .await;
    client.send(subscribe_events("mine", "user:alice")).await;
    until_live(
        app,
        &mut client,
        &[("feed", "workspace:acme:feed"), ("mine", "user:alice")],
    )
    .await;
    (client, sess)
}

fn subscribe_events(id: &str, topic: &str) -> Value {
    json!({ "id": id, "type": "subscribe", "payload": {
        "query": "subscription($t: String!) { events(topic: $t) { type } }",
        "variables": { "t": topic } } })
}

fn refresh(token: &str) -> Value {
    json!({ "id": "refresh", "type": "subscribe", "payload": {
        "query": "mutation($t: String!) { refreshAuth(token: $t) { expiresAt } }",
        "variables": { "t": token } } })
}

/// Reads messages until the operation `id` ends, returning how (its final message), and the
/// messages of other operations seen meanwhile.
async fn until_ended(client: &mut WsClient, id: &str) -> (Value, Vec<Value>) {
    let mut others = Vec::new();
    loop {
        let message = client.recv().await;
        if message["id"] == id && message["type"] != "next" {
            return (message, others);
        }
        others.push(message);
    }
}

#[tokio::test]
async fn refresh_auth_ends_only_the_subscriptions_the_new_claims_no_longer_grant() {
    let app = spawn_app_with(|_| {}).await;
    let member = Map::from_iter([("workspaces".to_string(), json!(["acme"]))]);
    let mut client = app.ws_acked_with(&app.token_with("alice", member)).await;
    client
        .send(subscribe_events("feed", "workspace:acme:feed"))
        .await;
    client.send(subscribe_events("mine", "user:alice")).await;
    until_live(
        &app,
        &mut client,
        &[("feed", "workspace:acme:feed"), ("mine", "user:alice")],
    )
    .await;

    client.send(refresh(&app.token("alice"))).await;
    let (ended, others) = until_ended(&mut client, "feed").await;
    assert_eq!(ended["type"], "error", "{ended}");
    assert_eq!(
        ended["payload"][0]["extensions"]["code"], "FORBIDDEN",
        "{ended}"
    );
    assert_eq!(ended["payload"][0]["path"], json!(["events"]), "{ended}");
    assert!(
        others.iter().all(|m| m["id"] == "refresh"),
        "nothing else was sent meanwhile: {others:?}"
    );

    // The workspace event reaches nobody; the user's own topic still delivers.
    publish_event(&app, "workspace:acme:feed", "after-refresh").await;
    publish_event(&app, "user:alice", "after-refresh").await;
    loop {
        let message = client.recv().await;
        if message["id"] == "refresh" {
            continue;
        }
        assert_eq!(message["id"], "mine", "{message}");
        assert_eq!(
            message["payload"]["data"]["events"]["type"],
            "after-refresh"
        );
        break;
    }
}

#[sqlx::test(migrations = false)]
async fn a_session_connection_refreshed_with_a_token_becomes_a_token_connection(pool: PgPool) {
    let db = Database::from_pg_pool(pool).await.unwrap();
    let app = spawn_app_on(db, |c| {
        c.auth.session.revalidate_every = "200ms".parse().unwrap();
        c.auth.jwt.leeway = "0s".parse().unwrap();
    })
    .await;
    let (mut client, _) = acme_member_following(&app, "sid-refreshed").await;

    // The token's claims, not the session's, decide from now on.
    let token = app.token_for("alice", Map::new(), Duration::from_secs(3));
    client.send(refresh(&token)).await;
    let (ended, _) = until_ended(&mut client, "feed").await;
    assert_eq!(ended["type"], "error", "{ended}");
    assert_eq!(
        ended["payload"][0]["extensions"]["code"], "FORBIDDEN",
        "{ended}"
    );

    // Logging out of the session no longer matters; the token's exp does.
    palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query("DELETE FROM session WHERE sid = 'sid-refreshed'")
            .execute(pool)
            .await
            .map(drop)
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    publish_event(&app, "user:alice", "still-open").await;
    loop {
        let message = client.recv().await;
        if message["id"] == "mine" {
            assert_eq!(message["payload"]["data"]["events"]["type"], "still-open");
            break;
        }
    }
    assert_eq!(client.closed().await, (4403, "Token expired".into()));
}

#[sqlx::test(migrations = false)]
async fn me_on_a_session_connection_shows_only_the_exposed_claims(pool: PgPool) {
    let db = Database::from_pg_pool(pool).await.unwrap();
    let app = spawn_app_on(db, |c| {
        c.auth.session.expose_claims = vec!["displayName".into()];
    })
    .await;
    let sess = json!({
        "cookie": { "originalMaxAge": 3_600_000, "httpOnly": true },
        "passport": { "user": "alice" },
        "csrfSecret": "do-not-show",
        "displayName": "Alice",
    });
    insert_session(&app.state.db, "sid-me", &sess, 60).await;
    let mut client = session_connection(&app, "sid-me").await;
    client
        .send(json!({ "id": "me", "type": "subscribe", "payload": { "query": "{ me { id claims } }" } }))
        .await;
    let me = client.recv().await;
    assert_eq!(
        me["payload"]["data"]["me"],
        json!({ "id": "alice", "claims": { "sub": "alice", "displayName": "Alice" } }),
        "{me}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_session_re_check_replaces_the_claims_and_ends_the_subscriptions_they_no_longer_grant(
    pool: PgPool,
) {
    let db = Database::from_pg_pool(pool).await.unwrap();
    let app = spawn_app_on(db, |c| {
        c.auth.session.revalidate_every = "200ms".parse().unwrap();
    })
    .await;
    let (mut client, mut sess) = acme_member_following(&app, "sid-removed").await;

    // The Express app removes alice from the workspace; the sliding session stays alive.
    sess["workspaces"] = json!([]);
    update_session(&app.state.db, "sid-removed", &sess).await;
    let (ended, others) = until_ended(&mut client, "feed").await;
    assert_eq!(ended["type"], "error", "{ended}");
    assert_eq!(
        ended["payload"][0]["extensions"]["code"], "FORBIDDEN",
        "{ended}"
    );
    assert!(others.is_empty(), "{others:?}");

    // New operations see the stored claims too.
    client
        .send(subscribe_events("again", "workspace:acme:other"))
        .await;
    let refused = client.recv().await;
    assert_eq!(
        (&refused["id"], &refused["type"]),
        (&json!("again"), &json!("error"))
    );
    assert_eq!(refused["payload"][0]["extensions"]["code"], "FORBIDDEN");

    publish_event(&app, "user:alice", "still-here").await;
    let event = client.recv().await;
    assert_eq!(event["id"], "mine", "{event}");
    assert_eq!(event["payload"]["data"]["events"]["type"], "still-here");
}

#[sqlx::test(migrations = false)]
async fn credentials_larger_than_max_claims_bytes_are_refused_at_authentication(pool: PgPool) {
    let db = Database::from_pg_pool(pool).await.unwrap();
    let app = spawn_app_on(db, |c| {
        c.auth.session.revalidate_every = "200ms".parse().unwrap();
    })
    .await;
    let too_large = (
        4400,
        "Credentials too large (limit 16384 bytes)".to_string(),
    );
    let blob = "x".repeat(17 * 1024);

    let big = json!({ "passport": { "user": "alice" }, "blob": blob });
    insert_session(&app.state.db, "sid-big", &big, 60).await;
    let mut client = session_init(&app, "sid-big").await;
    assert_eq!(client.closed().await, too_large);

    let token = app.token_with("alice", Map::from_iter([("blob".to_string(), json!(blob))]));
    let mut client = app.ws("graphql-transport-ws").await;
    init_with(&mut client, &token).await;
    assert_eq!(client.closed().await, too_large);
    app.assert_metrics(&["palisade_auth_failures_total{reason=\"claims_too_large\"} 2"])
        .await;

    // A session that grows past the bound while connected is closed at its next re-check.
    let small = json!({ "passport": { "user": "bob" } });
    insert_session(&app.state.db, "sid-grows", &small, 60).await;
    let mut client = session_connection(&app, "sid-grows").await;
    update_session(
        &app.state.db,
        "sid-grows",
        &json!({ "passport": { "user": "bob" }, "blob": blob }),
    )
    .await;
    assert_eq!(client.closed().await, too_large);
}

/// The value of an unlabelled gauge on `/metrics`.
async fn gauge(app: &TestApp, name: &str) -> i64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_connection_holds_one_copy_of_its_claims_however_many_operations_it_runs() {
    use base64::Engine;
    let app = spawn_app_with(|_| {}).await;
    let blob = "x".repeat(8 * 1024);
    let token = app.token_with("alice", Map::from_iter([("blob".to_string(), json!(blob))]));
    let payload = token.split('.').nth(1).unwrap();
    let claims_len = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap()
        .len() as i64;

    let mut client = app.ws_acked_with(&token).await;
    let topics: Vec<(String, String)> = (0..20)
        .map(|i| (format!("s{i}"), "user:alice".to_string()))
        .collect();
    for (id, topic) in &topics {
        client.send(subscribe_events(id, topic)).await;
    }
    let live: Vec<(&str, &str)> = topics
        .iter()
        .map(|(id, topic)| (id.as_str(), topic.as_str()))
        .collect();
    until_live(&app, &mut client, &live).await;
    assert_eq!(gauge(&app, "palisade_claims_bytes").await, claims_len);

    drop(client);
    for _ in 0..100 {
        if gauge(&app, "palisade_claims_bytes").await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the closed connection still counts its claims");
}

//! Credentials: token lifetimes, refreshAuth, session re-checks and what claims reach the page.
//! Spawns Palisade on port 0 with a fresh database and talks to it over real sockets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{WsClient, spawn_app_with};

/// The HMAC secret every test server of `helpers` verifies tokens with.
const TEST_SECRET: &[u8] = b"integration-test-secret";

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

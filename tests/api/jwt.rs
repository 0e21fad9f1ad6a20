//! Public keys, JWKS and the attacks on them, against real servers over real WebSockets.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestApp, WsClient, spawn_app_with};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(FIXTURES).join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read("rsa-private.pem")).unwrap()
}

fn attacker_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read("attacker-rsa-private.pem")).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read("ec-private.pem")).unwrap()
}

fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&read("ed-private.pem")).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Claims valid for ten minutes, with a custom claim to look for in resolvers.
fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 600, "team": "blue" })
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    header
}

fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

async fn with_public_key(file: &str, alg: &str) -> TestApp {
    let (path, alg) = (fixture(file), alg.to_string());
    spawn_app_with(move |c| {
        c.auth.jwt.public_key_file = Some(path);
        c.auth.jwt.algorithms = vec![alg];
    })
    .await
}

async fn with_jwks() -> TestApp {
    spawn_app_with(|c| {
        c.auth.jwt.jwks_file = Some(fixture("jwks.json"));
        c.auth.jwt.algorithms = vec!["RS256".into(), "ES256".into()];
    })
    .await
}

/// Opens a `graphql-transport-ws` connection and sends `connection_init` with `token`.
async fn init(app: &TestApp, token: &str) -> WsClient {
    let mut client = app.ws("graphql-transport-ws").await;
    client
        .send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } }))
        .await;
    client
}

/// Asserts the token is accepted and returns what `me` resolves to on that connection.
async fn accepted(app: &TestApp, token: &str) -> Value {
    let mut client = init(app, token).await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    client
        .send(json!({ "id": "me", "type": "subscribe", "payload": { "query": "{ me { id claims } }" } }))
        .await;
    let next = client.recv().await;
    assert_eq!(next["type"], "next", "{next}");
    next["payload"]["data"]["me"].clone()
}

/// Asserts the token is refused the way every refusal looks to a client.
async fn refused(app: &TestApp, token: &str) {
    let mut client = init(app, token).await;
    loop {
        match client.next_frame().await {
            Message::Close(Some(frame)) => {
                assert_eq!(
                    (u16::from(frame.code), frame.reason.as_str()),
                    (4403, "Forbidden")
                );
                return;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected the connection to be refused, got {other:?}"),
        }
    }
}

/// The audit trail as (action, metadata) rows, once every queued row is written.
async fn audit_rows(app: &TestApp) -> Vec<(String, String)> {
    app.state.audit.flush().await;
    palisade::on_pool!(&app.state.db, |pool| sqlx::query_as::<_, (String, String)>(
        "SELECT action, CAST(metadata AS TEXT) FROM audit_log ORDER BY id"
    )
    .fetch_all(pool)
    .await
    .unwrap())
}

/// Asserts that the latest authentication failure in the audit trail names `cause`, and that no row anywhere holds
/// any part of any of `tokens`.
async fn assert_audited(app: &TestApp, cause: &str, tokens: &[&str]) {
    let rows = audit_rows(app).await;
    let (_, metadata) = rows
        .iter()
        .rfind(|(action, _)| action == "socket.auth_failed")
        .expect("an auth failure row");
    assert!(metadata.contains(cause), "{metadata} should name {cause}");
    for (_, metadata) in &rows {
        for token in tokens {
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(
                    !metadata.contains(part),
                    "audit row {metadata} quotes the token"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_rs256_token_is_accepted_with_the_rsa_public_key() {
    let app = with_public_key("rsa-public.pem", "RS256").await;
    let token = sign(
        &header(Algorithm::RS256, None),
        &claims("alice"),
        &rsa_key(),
    );
    let me = accepted(&app, &token).await;
    assert_eq!(me["id"], "alice");
    assert_eq!(me["claims"]["team"], "blue");
}

#[tokio::test]
async fn an_es256_token_is_accepted_with_the_ec_public_key() {
    let app = with_public_key("ec-public.pem", "ES256").await;
    let token = sign(&header(Algorithm::ES256, None), &claims("bob"), &ec_key());
    let me = accepted(&app, &token).await;
    assert_eq!(me["id"], "bob");
    assert_eq!(me["claims"]["team"], "blue");
}

#[tokio::test]
async fn an_eddsa_token_is_accepted_with_the_ed25519_public_key() {
    let app = with_public_key("ed-public.pem", "EdDSA").await;
    let token = sign(&header(Algorithm::EdDSA, None), &claims("carol"), &ed_key());
    let me = accepted(&app, &token).await;
    assert_eq!(me["id"], "carol");
    assert_eq!(me["claims"]["team"], "blue");
}

#[tokio::test]
async fn each_jwks_kid_verifies_tokens_signed_with_its_key() {
    let app = with_jwks().await;
    let rsa = sign(
        &header(Algorithm::RS256, Some("rsa-1")),
        &claims("rsa-user"),
        &rsa_key(),
    );
    assert_eq!(accepted(&app, &rsa).await["id"], "rsa-user");
    let ec = sign(
        &header(Algorithm::ES256, Some("ec-1")),
        &claims("ec-user"),
        &ec_key(),
    );
    let me = accepted(&app, &ec).await;
    assert_eq!(me["id"], "ec-user");
    assert_eq!(me["claims"]["team"], "blue");
}

#[tokio::test]
async fn a_jwks_key_never_verifies_another_algorithm_than_its_own() {
    let app = with_jwks().await;
    // ES256 is allowed, but key rsa-1 is an RSA key declared for RS256.
    let token = sign(
        &header(Algorithm::ES256, Some("rsa-1")),
        &claims("mallory"),
        &ec_key(),
    );
    refused(&app, &token).await;
    assert_audited(&app, "algorithm_not_allowed", &[&token]).await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let app = with_public_key("rsa-public.pem", "RS256").await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims("mallory").to_string());
    let token = format!("{header}.{body}.");
    refused(&app, &token).await;
    assert_audited(&app, "algorithm_not_allowed", &[&token]).await;
    // The HMAC-configured server refuses it as well.
    let hmac = spawn_app_with(|_| {}).await;
    refused(&hmac, &token).await;
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_pem_is_refused() {
    let app = with_public_key("rsa-public.pem", "RS256").await;
    let confused = EncodingKey::from_secret(&read("rsa-public.pem"));
    let token = sign(
        &header(Algorithm::HS256, None),
        &claims("mallory"),
        &confused,
    );
    refused(&app, &token).await;
    assert_audited(&app, "algorithm_not_allowed", &[&token]).await;
}

#[tokio::test]
async fn an_expired_token_is_refused_and_audited_as_expired() {
    let app = with_public_key("rsa-public.pem", "RS256").await;
    // The default leeway is 30s; this expired well before that.
    let expired = json!({ "sub": "alice", "exp": now() - 120 });
    let token = sign(&header(Algorithm::RS256, None), &expired, &rsa_key());
    refused(&app, &token).await;
    assert_audited(&app, "expired", &[&token]).await;
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_still_accepted() {
    let app = with_public_key("rsa-public.pem", "RS256").await;
    let skewed = json!({ "sub": "alice", "exp": now() - 5 });
    let token = sign(&header(Algorithm::RS256, None), &skewed, &rsa_key());
    assert_eq!(accepted(&app, &token).await["id"], "alice");
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let app = with_public_key("ec-public.pem", "ES256").await;
    let future = json!({ "sub": "alice", "exp": now() + 7200, "nbf": now() + 3600 });
    let token = sign(&header(Algorithm::ES256, None), &future, &ec_key());
    refused(&app, &token).await;
    assert_audited(&app, "not_yet_valid", &[&token]).await;
}

#[tokio::test]
async fn wrong_or_missing_issuer_and_audience_are_refused() {
    let app = spawn_app_with(|c| {
        c.auth.jwt.public_key_file = Some(fixture("rsa-public.pem"));
        c.auth.jwt.algorithms = vec!["RS256".into()];
        c.auth.jwt.issuer = Some("https://issuer.example".into());
        c.auth.jwt.audience = Some("palisade".into());
    })
    .await;
    let token = |iss: Option<&str>, aud: Option<&str>| {
        let mut claims = claims("alice");
        if let Some(iss) = iss {
            claims["iss"] = iss.into();
        }
        if let Some(aud) = aud {
            claims["aud"] = aud.into();
        }
        sign(&header(Algorithm::RS256, None), &claims, &rsa_key())
    };
    let good = token(Some("https://issuer.example"), Some("palisade"));
    assert_eq!(accepted(&app, &good).await["id"], "alice");

    let wrong_issuer = token(Some("https://evil.example"), Some("palisade"));
    refused(&app, &wrong_issuer).await;
    assert_audited(&app, "wrong_issuer", &[&wrong_issuer]).await;
    let wrong_audience = token(Some("https://issuer.example"), Some("other-service"));
    refused(&app, &wrong_audience).await;
    assert_audited(&app, "wrong_audience", &[&wrong_audience]).await;
    for missing in [
        token(None, Some("palisade")),
        token(Some("https://issuer.example"), None),
    ] {
        refused(&app, &missing).await;
        assert_audited(&app, "missing_claim", &[&missing]).await;
    }
}

#[tokio::test]
async fn a_token_with_a_flipped_signature_byte_is_refused() {
    let app = with_public_key("rsa-public.pem", "RS256").await;
    let token = sign(
        &header(Algorithm::RS256, None),
        &claims("alice"),
        &rsa_key(),
    );
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    signature[17] ^= 0x01;
    let tampered = format!("{message}.{}", URL_SAFE_NO_PAD.encode(&signature));
    refused(&app, &tampered).await;
    assert_audited(&app, "bad_signature", &[&token, &tampered]).await;
    // The same claims signed by anyone else's key fare no better.
    let forged = sign(
        &header(Algorithm::RS256, None),
        &claims("alice"),
        &attacker_key(),
    );
    refused(&app, &forged).await;
    assert_audited(&app, "bad_signature", &[&forged]).await;
}

#[tokio::test]
async fn an_unknown_or_missing_kid_is_refused_with_jwks() {
    let app = with_jwks().await;
    // Signed with a configured key: only the kid is wrong.
    let unknown = sign(
        &header(Algorithm::RS256, Some("rsa-2")),
        &claims("alice"),
        &rsa_key(),
    );
    refused(&app, &unknown).await;
    assert_audited(&app, "unknown_kid", &[&unknown]).await;
    // Two keys: without a kid there is no key to pick.
    let missing = sign(
        &header(Algorithm::RS256, None),
        &claims("alice"),
        &rsa_key(),
    );
    refused(&app, &missing).await;
    assert_audited(&app, "unknown_kid", &[&missing]).await;
}

/// Binds a listener a `jku`/`x5u` could point at.
async fn trap() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    (listener, url)
}

async fn assert_never_contacted(listener: &TcpListener) {
    let attempt = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        attempt.is_err(),
        "the server fetched the URL from the token"
    );
}

#[tokio::test]
async fn a_jku_pointing_elsewhere_is_never_fetched_and_its_key_never_used() {
    let app = with_jwks().await;
    let (listener, url) = trap().await;
    let mut header = header(Algorithm::RS256, Some("rsa-1"));
    header.jku = Some(url.clone());
    header.x5u = Some(url);
    let token = sign(&header, &claims("mallory"), &attacker_key());
    refused(&app, &token).await;
    assert_never_contacted(&listener).await;
    assert_audited(&app, "bad_signature", &[&token]).await;
}

#[tokio::test]
async fn an_embedded_jwk_is_never_used_as_the_key() {
    let app = with_public_key("rsa-public.pem", "RS256").await;
    let mut header = header(Algorithm::RS256, None);
    header.jwk = Some(Jwk::from_encoding_key(&attacker_key(), Algorithm::RS256).unwrap());
    let token = sign(&header, &claims("mallory"), &attacker_key());
    refused(&app, &token).await;
    assert_audited(&app, "bad_signature", &[&token]).await;
}

#[tokio::test]
async fn a_jku_on_a_token_signed_with_a_configured_key_is_ignored() {
    let app = with_jwks().await;
    let (listener, url) = trap().await;
    let mut header = header(Algorithm::ES256, Some("ec-1"));
    header.jku = Some(url);
    let token = sign(&header, &claims("alice"), &ec_key());
    assert_eq!(accepted(&app, &token).await["id"], "alice");
    assert_never_contacted(&listener).await;
}

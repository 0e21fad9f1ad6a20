//! `POST /api/publish`: backends without a JWT publish events with an API key, read from the
//! environment variable named by `auth.publish_key_env` and sent as `Authorization: Bearer <key>`.
//!
//! The key acts as a caller whose roles claim holds `service`, so the topic rules still decide
//! which topics it may publish on, exactly as for the `publish` mutation with a service token.
//!
//! The endpoint shares the per-IP HTTP limit (`operations.http`) with GraphQL, and a refused key
//! writes its audit row through the failed-attempt rate, so guessing is slow and leaves a bounded
//! trail.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::audit::{Entry, Severity};
use crate::auth::{Identity, Method};
use crate::error::{Error, Result};
use crate::startup::AppState;
use crate::topics::{self, Action, Decision};

/// The identity the API key acts as, in the audit trail and under the topic rules.
const API_KEY_USER: &str = "api-key";

/// The configured key, kept only as its SHA-256 digest: comparing digests takes the same time
/// wherever a wrong key differs, so response timing tells an attacker nothing about the key.
pub struct PublishKey([u8; 32]);

impl PublishKey {
    /// The key from the environment variable `env`; `None` (endpoint off) when unset or empty.
    pub fn from_env(env: &str) -> Option<Arc<Self>> {
        std::env::var(env)
            .ok()
            .filter(|key| !key.is_empty())
            .map(|key| Self::new(&key))
    }

    pub fn new(key: &str) -> Arc<Self> {
        Arc::new(Self(Sha256::digest(key.as_bytes()).into()))
    }

    fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    topic: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
}

pub async fn publish(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Publish>,
) -> Result<Json<Value>> {
    let Some(key) = state.publish_key.as_ref() else {
        return Err(Error::Forbidden(format!(
            "publishing over HTTP is off: set {} to enable it",
            state.config.auth.publish_key_env
        )));
    };
    let ip = state.client_ip.resolve(peer.ip(), &headers).to_string();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| key.matches(p)) {
        let reason = if presented.is_some() {
            "bad_key"
        } else {
            "missing"
        };
        state
            .metrics
            .auth_failures
            .with_label_values(&[reason])
            .inc();
        state.audit.record_failure(Entry {
            action: "publish_key_refused",
            severity: Severity::Warn,
            user_id: None,
            connection_id: None,
            ip: Some(ip),
            metadata: json!({ "reason": reason }),
        });
        return Err(Error::Unauthenticated);
    }
    if body.topic.is_empty() || body.kind.is_empty() {
        return Err(Error::BadUserInput(
            "`topic` and `type` must not be empty".into(),
        ));
    }
    let config = state.live.load();
    crate::bus::check_topic(&body.topic, config.payload.max_topic_bytes).map_err(Error::Limit)?;
    let identity = api_key_identity(&config.topics.roles_claim);
    let decision = topics::check_raw_publish(
        &config.topics,
        &state.db,
        Some(&identity),
        &body.topic,
        &body.kind,
    )
    .await
    .map_err(Error::Internal)?;
    if let Decision::Denied(reason) = decision {
        state.audit.record(Entry::topic_denied(
            Some(API_KEY_USER.into()),
            None,
            Some(ip),
            &body.topic,
            Action::Publish,
            reason,
        ));
        return Err(Error::Forbidden(
            "not allowed to publish this event type on this topic".into(),
        ));
    }
    let event = state
        .bus
        .publish(body.topic, body.kind, body.payload)
        .await
        .map_err(|e| Error::BusUnavailable(e.into()))?;
    Ok(Json(json!({
        "id": event.id.to_string(),
        "topic": event.topic,
        "type": event.kind,
        "publishedAt": event.published_at,
    })))
}

fn api_key_identity(roles_claim: &str) -> Identity {
    let mut claims = Map::new();
    claims.insert("sub".into(), API_KEY_USER.into());
    claims.insert(roles_claim.into(), json!(["service"]));
    Identity {
        user_id: API_KEY_USER.into(),
        claims,
        method: Method::ApiKey,
        expires_at: None,
        session_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_matches() {
        let key = PublishKey::new("s3cret-key");
        assert!(key.matches("s3cret-key"));
        assert!(!key.matches("s3cret-kez"));
        assert!(!key.matches("s3cret-key "));
        assert!(!key.matches(""));
    }
}

//! `POST /admin/revoke`: closes every connection of a user or of a session, for logouts and
//! incident response. Callers present a JWT whose roles include `auth.admin_role`.
//!
//! The instance serving the request closes its own matching connections at once and publishes the
//! revocation on the bus, where every other instance closes its own. Instances do not report
//! back, so the answer is `{"closed": n, "notified": b}`: `closed` counts the connections closed
//! *on this instance* only, and `notified` says whether the revocation reached the bus; when it is
//! `false` the other instances were not told, and the call should be retried.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{Entry, Severity};
use crate::auth::Identity;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    user_id: Option<String>,
    session_id: Option<String>,
}

/// Whether `identity`'s roles claim (`topics.roles_claim`) holds `auth.admin_role`.
pub fn is_admin(config: &Config, identity: &Identity) -> bool {
    let roles = identity.claims.get(&config.topics.roles_claim);
    roles.and_then(Value::as_array).is_some_and(|r| {
        r.iter()
            .any(|v| v.as_str() == Some(&config.auth.admin_role))
    })
}

pub async fn revoke(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Revoke>,
) -> Result<Json<Value>> {
    let ip = state.client_ip.resolve(peer.ip(), &headers).to_string();
    // A refused credential is audited through the failed-attempt rate, so that guessing, already
    // slowed by the per-IP HTTP limit, cannot flood the audit table either.
    let refused = |reason: &str, user_id: Option<String>| {
        state.audit.record_failure(Entry {
            action: "admin.revoke_refused",
            severity: Severity::Warn,
            user_id,
            connection_id: None,
            ip: Some(ip.clone()),
            metadata: json!({ "reason": reason }),
        });
    };
    let admin = match state.auth.http(&headers) {
        Ok(Some(admin)) => admin,
        failed => {
            let cause = failed.err().map_or("missing", |failure| failure.cause());
            state
                .metrics
                .auth_failures
                .with_label_values(&[cause])
                .inc();
            refused(cause, None);
            return Err(Error::Unauthenticated);
        }
    };
    if !is_admin(&state.config, &admin) {
        refused("not_admin", Some(admin.user_id.clone()));
        return Err(Error::Forbidden(format!(
            "needs the `{}` role",
            state.config.auth.admin_role
        )));
    }
    if body.user_id.is_none() && body.session_id.is_none() {
        return Err(Error::BadUserInput(
            "name a user_id, a session_id, or both".into(),
        ));
    }
    let revocation = state
        .registry
        .revoke(body.user_id.as_deref(), body.session_id.as_deref())
        .await;
    state.audit.record(Entry {
        action: "socket.revoked",
        severity: Severity::Warn,
        user_id: body.user_id.clone(),
        connection_id: None,
        ip: Some(ip),
        // The session id is a credential: only whether one was named is recorded.
        metadata: json!({
            "by": admin.user_id,
            "by_session": body.session_id.is_some(),
            "connections": revocation.closed,
            "notified": revocation.notified,
        }),
    });
    Ok(Json(json!({
        "closed": revocation.closed,
        "notified": revocation.notified,
    })))
}

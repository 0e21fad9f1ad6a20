//! `connection_init`: authenticate, admit the user under the connection limits, then acknowledge.

use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::{Value, json};

use chrono::Utc;

use super::connection::{Connection, Upgrade};
use super::control::{Control, Notice, NoticeKind};
use super::lifetime::Lifetime;
use super::protocol::{self, Close, code};
use crate::audit::Severity;
use crate::auth::session::Status;
use crate::auth::{Identity, SessionError};
use crate::registry::Refusal;

impl Connection {
    pub(super) async fn init(&mut self, payload: Option<Value>) {
        if self.identity.is_some() {
            return self.outbox.close(Close::new(
                code::TOO_MANY_INIT,
                "Too many initialisation requests",
            ));
        }
        // The upgrade's headers serve this one authentication (and its audit row): an idle
        // connection should not keep a copy of them.
        let Upgrade {
            user_agent,
            headers,
            query_token,
        } = self.peer.upgrade.take().map(|u| *u).unwrap_or_default();
        let authenticated = self
            .state
            .auth
            .connection(payload.as_ref(), &headers, query_token.as_deref())
            .await;
        let identity = match authenticated {
            Ok(identity) => identity.map(Arc::new),
            Err(failure) => {
                tracing::warn!(parent: &self.span, cause = failure.cause(), "authentication failed");
                self.state
                    .metrics
                    .auth_failures
                    .with_label_values(&[failure.cause()])
                    .inc();
                self.audit(
                    "socket.auth_failed",
                    Severity::Warn,
                    None,
                    json!({
                        "cause": failure.cause(),
                        "detail": failure.to_string(),
                        "user_agent": user_agent,
                        "headers": sanitized(&headers),
                    }),
                );
                super::count(&self.state, "auth_failed");
                // The same reason whatever the cause, so an attacker learns nothing; except for
                // credentials too large, which only their holder made so and which retrying
                // cannot fix (graphql-ws clients do not retry 4400).
                let close = match failure.exceeded_limit() {
                    Some(limit) => too_large(limit),
                    None => Close::new(code::FORBIDDEN, "Forbidden"),
                };
                if self.protocol
                    == async_graphql::http::WebSocketProtocols::SubscriptionsTransportWS
                {
                    self.outbox.text(protocol::connection_error(&close.reason));
                }
                return self.outbox.close(close);
            }
        };
        if let Some(identity) = &identity {
            let admitted = self
                .state
                .registry
                .admit_user(
                    &identity.user_id,
                    self.handle.clone(),
                    identity.session_id.clone(),
                )
                .await;
            match admitted {
                Ok((slot, replaced)) => {
                    self.user_slot = Some(slot);
                    for old in replaced {
                        self.audit(
                            "socket.replaced",
                            Severity::Info,
                            Some(identity.user_id.clone()),
                            json!({ "replaced_connection": old }),
                        );
                    }
                }
                Err(refusal) => {
                    let close = match refusal {
                        Refusal::UserRate { retry_after } => Close::new(
                            code::TRY_AGAIN_LATER,
                            format!(
                                "Too many new connections for this user: retry in {}s",
                                retry_after.as_secs().max(1)
                            ),
                        ),
                        _ => Close::new(code::POLICY, "Too many connections for this user"),
                    };
                    tracing::warn!(parent: &self.span, user_id = %identity.user_id, reason = %close.reason, "connection limit reached");
                    self.audit(
                        "socket.limit_rejected",
                        Severity::Warn,
                        Some(identity.user_id.clone()),
                        json!({ "reason": close.reason }),
                    );
                    super::count(&self.state, "limit_rejected");
                    return self.outbox.close(close);
                }
            }
            self.span.record("user_id", identity.user_id.as_str());
            if let Some(row) = &mut self.log_row {
                row.user_id = Some(identity.user_id.clone());
            }
            self.lifetime = Lifetime::of(
                identity,
                &self.state.config,
                &self.state.metrics.claims_bytes,
            );
        }
        let method = identity.as_ref().map_or("anonymous", |i| i.method.as_str());
        self.audit(
            "socket.authenticated",
            Severity::Info,
            identity.as_ref().map(|i| i.user_id.clone()),
            json!({ "method": method }),
        );
        super::count(&self.state, "accepted");
        // Nothing runs before `connection_init`: no parked member to re-check.
        self.handle.set_identity(identity.clone());
        self.identity = Some(identity);
        if let Some(row) = self.log_row.take() {
            self.state.connection_log.opened(*row);
        }
        self.outbox.text(protocol::connection_ack());
    }

    /// `refreshAuth` with a valid token of the same user. The connection becomes a plain JWT
    /// connection whatever it was: it closes at the new token's `exp` (+ leeway), and a session
    /// connection stops being re-checked against its session row, since the token alone now
    /// vouches for it. The registry still knows the session it opened with, so revoking that
    /// session closes it all the same.
    pub(super) fn refresh(&mut self, identity: Arc<Identity>) {
        let from = self
            .identity
            .as_ref()
            .and_then(|i| i.as_ref())
            .map_or("anonymous", |i| i.method.as_str());
        self.audit(
            "socket.refreshed",
            Severity::Info,
            Some(identity.user_id.clone()),
            json!({ "from": from, "to": identity.method.as_str() }),
        );
        self.reauthenticate(identity);
    }

    /// Makes `identity` the connection's: its deadlines follow it, operations started from now on
    /// see it, and running subscriptions check their topic grants again (unshared ones through
    /// the handle's identity watch, parked members when the connection loop next turns), ending
    /// with FORBIDDEN where a grant is gone.
    fn reauthenticate(&mut self, identity: Arc<Identity>) {
        self.lifetime = Lifetime::of(
            &identity,
            &self.state.config,
            &self.state.metrics.claims_bytes,
        );
        self.handle.withdraw_standing();
        self.regrant_parked |= self.handle.set_identity(Some(identity.clone()));
        self.identity = Some(Some(identity));
    }

    /// Re-checks a session connection's session. A live one replaces the connection's claims with
    /// what `sess` holds now (running subscriptions whose grant is gone end with FORBIDDEN), and is
    /// extended by its original lifetime when close to its expiry, as the Express app does for an
    /// active user. A logged-out, expired, corrupt or oversized session, or one now of another
    /// user, closes the connection. A database error keeps it: the next check decides.
    pub(super) async fn recheck_session(&mut self) {
        let Some(Some(identity)) = &self.identity else {
            return;
        };
        let (Some(store), Some(sid)) = (self.state.auth.sessions(), identity.session_id.clone())
        else {
            return;
        };
        let user = identity.user_id.clone();
        let expired = || Close::new(code::FORBIDDEN, "Session expired");
        let (cause, close) = match store.recheck(&sid).await {
            Ok(Status::Active(mut session)) if session.user_id.as_ref() == Some(&user) => {
                let refresh_within = self.state.config.auth.session.refresh_within.get();
                let left = (session.expire - Utc::now()).to_std().unwrap_or_default();
                if left < refresh_within {
                    match store.extend(&sid, session.lifetime).await {
                        Ok(expire) => session.expire = expire,
                        Err(error) => {
                            tracing::warn!(parent: &self.span, cause = error.cause(), "could not extend the session")
                        }
                    }
                }
                if let Some(identity) = session.identity() {
                    self.reauthenticate(Arc::new(identity));
                }
                return;
            }
            Ok(Status::Active(_)) => ("user_changed", expired()),
            Ok(status) => (status.cause(), expired()),
            Err(SessionError::Database(_)) => {
                tracing::warn!(parent: &self.span, cause = "database", "could not re-check the session");
                return;
            }
            Err(SessionError::TooLarge { limit, .. }) => ("claims_too_large", too_large(limit)),
            Err(error) => (error.cause(), expired()),
        };
        tracing::info!(parent: &self.span, cause, "session ended; closing");
        self.audit(
            "socket.session_expired",
            Severity::Info,
            Some(user),
            json!({ "cause": cause }),
        );
        self.control(Control::Close {
            notice: Some(Notice::new(
                NoticeKind::SessionExpired,
                "The session ended (logged out or expired)",
            )),
            close,
        });
    }
}

/// The close for credentials over `auth.max_claims_bytes`.
fn too_large(limit: usize) -> Close {
    Close::new(
        code::BAD_REQUEST,
        format!("Credentials too large (limit {limit} bytes)"),
    )
}

/// Upgrade headers safe to keep in the audit trail: credentials and anything that looks like one
/// are replaced by `[redacted]`, so a row shows which headers came without what they carried.
fn sanitized(headers: &HeaderMap) -> serde_json::Map<String, Value> {
    const SECRET: [&str; 5] = ["authorization", "cookie", "token", "secret", "key"];
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str();
            let shown = if SECRET.iter().any(|s| name.contains(s)) {
                "[redacted]".to_string()
            } else {
                value
                    .to_str()
                    .unwrap_or("[binary]")
                    .chars()
                    .take(256)
                    .collect()
            };
            (name.to_string(), Value::String(shown))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_the_audit_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer secret-token".parse().unwrap());
        headers.insert("cookie", "connect.sid=s%3Aabc.def".parse().unwrap());
        headers.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        headers.insert("origin", "http://localhost:5173".parse().unwrap());
        let shown = Value::Object(sanitized(&headers)).to_string();
        assert!(
            !shown.contains("secret-token")
                && !shown.contains("abc.def")
                && !shown.contains("dGhl"),
            "{shown}"
        );
        assert!(shown.contains("http://localhost:5173"));
    }
}

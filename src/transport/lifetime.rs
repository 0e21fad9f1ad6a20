//! When a connection's credentials need attention: the `TOKEN_EXPIRING` notice before `exp`, the
//! close at `exp` + leeway, and the periodic re-check of a session. A lifetime also holds the
//! connection's share of `palisade_claims_bytes` while its credentials are the connection's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::IntGauge;
use tokio::time::{Instant, Interval};

use crate::auth::{Identity, Method};
use crate::config::Config;

pub struct Lifetime {
    /// When to send `TOKEN_EXPIRING`; taken once sent.
    pub warn_at: Option<Instant>,
    /// When the credentials are no longer valid (`exp` + leeway).
    pub expire_at: Option<Instant>,
    pub expires_at_utc: Option<DateTime<Utc>>,
    /// Session connections re-check their session on this interval.
    pub revalidate: Option<Interval>,
    _claims: Option<HeldClaims>,
}

/// The claims' bytes counted in `palisade_claims_bytes`, given back when the lifetime is dropped:
/// the connection ended, or new credentials replaced these.
struct HeldClaims {
    bytes: i64,
    gauge: IntGauge,
}

impl Drop for HeldClaims {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// Counts what is written, to measure JSON without building it.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lifetime {
    /// No deadlines: before `connection_init`, and for anonymous connections.
    pub fn none() -> Self {
        Self {
            warn_at: None,
            expire_at: None,
            expires_at_utc: None,
            revalidate: None,
            _claims: None,
        }
    }

    /// The deadlines of `identity`, whose claims count in `claims_bytes` while this lives.
    pub fn of(identity: &Identity, config: &Config, claims_bytes: &IntGauge) -> Self {
        let jwt = &config.auth.jwt;
        let (warn_at, expire_at) = match (identity.method, identity.expires_at) {
            (Method::Jwt, Some(exp)) => {
                let until_exp = (exp - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                let now = Instant::now();
                (
                    Some(now + until_exp.saturating_sub(jwt.expiry_warning.get())),
                    Some(now + until_exp + jwt.leeway.get()),
                )
            }
            _ => (None, None),
        };
        let revalidate = (identity.method == Method::Session).then(|| {
            let every = config.auth.session.revalidate_every.get();
            tokio::time::interval_at(Instant::now() + every, every)
        });
        let mut counted = Counted(0);
        // Writing a `Map` of JSON values into a counter cannot fail.
        let _ = serde_json::to_writer(&mut counted, &identity.claims);
        let bytes = i64::try_from(counted.0).unwrap_or(i64::MAX);
        claims_bytes.add(bytes);
        Self {
            warn_at,
            expire_at,
            expires_at_utc: identity.expires_at,
            revalidate,
            _claims: Some(HeldClaims {
                bytes,
                gauge: claims_bytes.clone(),
            }),
        }
    }

    /// Resolves on the next re-validation tick, or never for non-session connections.
    pub async fn revalidation(&mut self) {
        match &mut self.revalidate {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

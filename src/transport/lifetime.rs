//! When a connection's credentials need attention: the `TOKEN_EXPIRING` notice before `exp`, the
//! close at `exp` + leeway, and the periodic re-check of a session.

use std::time::Duration;

use chrono::{DateTime, Utc};
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
}

impl Lifetime {
    /// No deadlines: before `connection_init`, and for anonymous connections.
    pub fn none() -> Self {
        Self {
            warn_at: None,
            expire_at: None,
            expires_at_utc: None,
            revalidate: None,
        }
    }

    pub fn of(identity: &Identity, config: &Config) -> Self {
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
        Self {
            warn_at,
            expire_at,
            expires_at_utc: identity.expires_at,
            revalidate,
        }
    }

    /// Resolves at `at`, or never when there is no such deadline (for `select!` branches).
    pub async fn until(at: Option<Instant>) {
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
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

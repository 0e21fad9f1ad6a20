//! Budgets for single operations across all of a user's connections (`operations.per_operation`,
//! e.g. `sendMessage`: 30 per minute per user). Counted in Redis when `REDIS_URL` is set, so every
//! instance shares one budget per user; in-process otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use async_graphql::ServerError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::guard::refusal;
use super::keyed::KeyedLimiter;
use crate::config::{LimitScope, Operations};
use crate::graphql::Caller;

struct Limit {
    scope: LimitScope,
    limit: u32,
    window: Duration,
    limiter: KeyedLimiter,
}

pub struct OperationLimits {
    by_field: BTreeMap<String, Limit>,
}

impl OperationLimits {
    /// With `redis`, budgets live under `<key_prefix>:ratelimit:…` and are shared by instances.
    pub fn new(config: &Operations, redis: Option<(&redis::Client, &str)>) -> anyhow::Result<Self> {
        // Lazy: a Redis that is down at startup must not keep the server from starting; checks
        // then fail open (see `check`).
        let connection = redis
            .map(|(client, prefix)| {
                ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    ConnectionManagerConfig::new(),
                )
                .map(|c| (c, prefix.to_string()))
            })
            .transpose()?;
        let by_field = config
            .per_operation
            .iter()
            .map(|(field, l)| {
                let window = l.window.get();
                let limiter = match &connection {
                    Some((conn, prefix)) => {
                        KeyedLimiter::redis(conn.clone(), prefix.clone(), l.limit, window)
                    }
                    None => KeyedLimiter::in_process(l.limit, window),
                };
                (
                    field.clone(),
                    Limit {
                        scope: l.scope,
                        limit: l.limit,
                        window,
                        limiter,
                    },
                )
            })
            .collect();
        Ok(Self { by_field })
    }

    /// Counts one call of root field `field` for the caller; `Err` is the `RATE_LIMITED` refusal.
    /// If Redis cannot answer, the call is let through (and logged): the connection's own budget
    /// still bounds it, and an outage of the limiter must not become an outage of the chat.
    pub async fn check(&self, field: &str, caller: &Caller) -> Result<(), ServerError> {
        let Some(limit) = self.by_field.get(field) else {
            return Ok(());
        };
        let who = match limit.scope {
            LimitScope::User => caller
                .identity
                .as_ref()
                .map(|i| format!("user:{}", i.user_id)),
            LimitScope::Connection => caller
                .connection_id
                .as_ref()
                .map(|id| format!("connection:{id}")),
        };
        // Anonymous callers share a budget per address.
        let who = who
            .or_else(|| caller.ip.as_ref().map(|ip| format!("ip:{ip}")))
            .unwrap_or_default();
        match limit.limiter.check(&format!("{field}:{who}")).await {
            Ok(decision) if decision.allowed => Ok(()),
            Ok(decision) => {
                let window = limit.window.as_secs().max(1);
                let retry = decision.retry_after.as_secs_f64().ceil() as u64;
                tracing::warn!(field, who = %who, limit = limit.limit, "per-operation limit exceeded");
                Err(refusal(
                    format!(
                        "Too many {field} calls: the limit is {} per {window}s",
                        limit.limit
                    ),
                    "RATE_LIMITED",
                    &[
                        ("limit", u64::from(limit.limit)),
                        ("windowSeconds", window),
                        ("retryAfterSeconds", retry.max(1)),
                    ],
                ))
            }
            Err(error) => {
                tracing::warn!(
                    field,
                    error = format!("{error:#}"),
                    "per-operation limit unavailable; letting the call through"
                );
                Ok(())
            }
        }
    }

    pub fn retain_recent(&self) {
        self.by_field
            .values()
            .for_each(|l| l.limiter.retain_recent());
    }
}

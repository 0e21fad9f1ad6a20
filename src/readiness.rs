//! Readiness (`/readyz`): whether the database and Redis answer. One task checks them every
//! [`INTERVAL`] over long-lived connections and keeps the last report; requests only read it. A
//! probe that opened connections of its own would let anyone who can reach the port make the
//! server open Redis connections at the rate they send requests.
//!
//! The report names each dependency with the cause of its failure, which helps an operator and
//! helps an attacker too (driver messages such as "password authentication failed"). It is shown
//! on `server.admin_listen`, or to a caller with `auth.admin_role`; the public port answers with
//! the status alone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use prometheus::IntGauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::db::Database;

/// How often the dependencies are checked: how stale a `/readyz` answer may be.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// A dependency that has not answered in this long counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of one round of checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub ready: bool,
    /// Per dependency: `{"ok": …, "backend": …}`, and `"error"` with the cause when it failed.
    pub checks: Map<String, Value>,
}

pub struct Readiness {
    db: Database,
    /// One connection for every Redis check, re-established by the manager after a failure.
    redis: Option<ConnectionManager>,
    last: ArcSwap<Report>,
    /// `palisade_ready`.
    gauge: IntGauge,
}

impl Readiness {
    /// Connects lazily: a Redis that is down must make the server unready, not keep it from
    /// starting. Nothing is checked until [`Readiness::check`] first runs, and until then the
    /// server reports itself unready.
    pub fn new(
        db: Database,
        redis: Option<&redis::Client>,
        gauge: IntGauge,
    ) -> anyhow::Result<Arc<Self>> {
        let redis = redis
            .map(|client| {
                // The timer is the retry: a check reports a Redis that is down at once rather
                // than backing off through reconnects within one round.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(CHECK_TIMEOUT));
                ConnectionManager::new_lazy_with_config(client.clone(), config)
            })
            .transpose()
            .context("setting up the readiness check's Redis connection")?;
        let starting = Report {
            ready: false,
            checks: Map::new(),
        };
        Ok(Arc::new(Self {
            db,
            redis,
            last: ArcSwap::from_pointee(starting),
            gauge,
        }))
    }

    /// The last report.
    pub fn last(&self) -> Arc<Report> {
        self.last.load_full()
    }

    /// Checks every dependency once, at the same time, and keeps the report.
    pub async fn check(&self) {
        let redis = async {
            match &self.redis {
                Some(connection) => Some(ping_redis(connection.clone()).await),
                None => None,
            }
        };
        let (database, redis) = tokio::join!(self.db.ping(), redis);
        let mut checks = Map::new();
        checks.insert("database".into(), outcome(&database, self.db.backend()));
        let mut ready = database.is_ok();
        if let Some(redis) = redis {
            ready &= redis.is_ok();
            checks.insert("redis".into(), outcome(&redis, "redis"));
        }
        self.gauge.set(i64::from(ready));
        self.last.store(Arc::new(Report { ready, checks }));
    }

    /// Checks every [`INTERVAL`] until shutdown. A round that outlasts the interval delays the
    /// next instead of overlapping it, so at most one check per dependency is in flight.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(every.tick()).await.is_some() {
            self.check().await;
        }
    }
}

fn outcome(result: &anyhow::Result<()>, backend: &str) -> Value {
    match result {
        Ok(()) => json!({ "ok": true, "backend": backend }),
        Err(error) => json!({ "ok": false, "backend": backend, "error": format!("{error:#}") }),
    }
}

async fn ping_redis(mut connection: ConnectionManager) -> anyhow::Result<()> {
    let ping = redis::cmd("PING");
    tokio::time::timeout(CHECK_TIMEOUT, ping.query_async::<String>(&mut connection))
        .await
        .context("Redis did not answer in time")?
        .context("PING")?;
    Ok(())
}

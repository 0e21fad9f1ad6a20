//! The registry's shared half: every connection holds a lease in Redis, in the lease set of its
//! IP and (once authenticated) of its user, so limits count connections on every instance.
//!
//! # Redis key layout
//!
//! - `{key_prefix}:registry:ip:{<ip>}` (an IPv6 client's prefix, `2001:db8::/64`) and `{key_prefix}:registry:user:{<user id>}`: sorted sets
//!   of leases (see `lua.rs` for members and scores). The braces are a Redis Cluster hash tag, so
//!   each set is its own slot and each script touches one. A lease is removed when its connection
//!   closes, and ignored (then pruned) once its instance stopped renewing it for a lease time;
//!   every write sets the key's expiry to one lease time, and an emptied set is deleted by Redis,
//!   so idle keys vanish and nothing leaks over churn.
//! - `{key_prefix}:ratelimit:$connects:ip:<ip>` and `…:ratelimit:$reconnects:user:<user id>`:
//!   the connection rates, as [`KeyedLimiter`](crate::limits::keyed::KeyedLimiter) keeps them
//!   (expiring strings). `$` keeps them apart from per-operation budgets, named after GraphQL
//!   fields.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::timeout;

use super::local::LeaseKey;
use super::lua::{ADMIT, REFRESH, REFRESH_LUA};

/// Every Redis call of the registry gives up after this, whatever the connection's own timeouts:
/// admission sits in front of a client's handshake, and must not stall it while the
/// `ConnectionManager` retries a reconnect with backoff.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Lease sets renewed per pipeline: one round trip each, without building one huge reply when an
/// instance holds tens of thousands of connections.
const REFRESH_BATCH: usize = 500;

/// The leases of one set: which set, and the members this instance holds in it.
pub(super) type Leases = (LeaseKey, Vec<String>);

#[derive(Clone)]
pub(super) struct Cluster {
    connection: ConnectionManager,
    key_prefix: String,
    lease: Duration,
    /// `cluster_errors{part="registry"}`.
    errors: IntCounter,
}

pub(super) enum Admission {
    /// The set holds as many leases as allowed (`reject`).
    Full,
    /// `lease` is the new member; `evicted` the members removed to make room (`evict`).
    Admitted { lease: String, evicted: Vec<String> },
}

/// A lease this instance writes itself, when Redis could not admit (fail open): the same shape as
/// the script's, on this instance's clock, so renewals can restore it once Redis is back.
pub(super) fn local_lease(holder: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:016}:{holder}", now.as_micros())
}

/// The instance and connection id in a lease member.
pub(super) fn holder_of(lease: &str) -> Option<(&str, &str)> {
    let mut parts = lease.splitn(3, ':').skip(1);
    Some((parts.next()?, parts.next()?))
}

impl Cluster {
    /// Connects lazily: a Redis that is down at startup must not keep the server from starting.
    pub fn new(
        client: &redis::Client,
        key_prefix: &str,
        lease: Duration,
        errors: IntCounter,
    ) -> anyhow::Result<Self> {
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), ConnectionManagerConfig::new())
                .context("setting up the registry's Redis connection")?;
        Ok(Self {
            connection,
            key_prefix: key_prefix.to_string(),
            lease,
            errors,
        })
    }

    pub fn connection(&self) -> &ConnectionManager {
        &self.connection
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    fn key(&self, key: &LeaseKey) -> String {
        match key {
            LeaseKey::Ip(ip) => format!("{}:registry:ip:{{{ip}}}", self.key_prefix),
            LeaseKey::User(user) => format!("{}:registry:user:{{{user}}}", self.key_prefix),
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits `holder` (`<instance>:<id>`) into the lease set of `key`, holding at most `max`.
    #[tracing::instrument(skip(self))]
    pub async fn admit(
        &self,
        key: &LeaseKey,
        max: u32,
        evict: bool,
        holder: &str,
    ) -> anyhow::Result<Admission> {
        let mut invocation = ADMIT.prepare_invoke();
        invocation
            .key(self.key(key))
            .arg(self.lease_ms())
            .arg(max)
            .arg(if evict { "evict" } else { "reject" })
            .arg(holder);
        let mut connection = self.connection.clone();
        let reply: Vec<String> = timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut connection))
            .await
            .context("Redis did not answer the admission in time")?
            .context("running the admission script")?;
        let mut reply = reply.into_iter();
        match (reply.next().as_deref(), reply.next()) {
            (Some("admitted"), Some(lease)) => Ok(Admission::Admitted {
                lease,
                evicted: reply.collect(),
            }),
            (Some("full"), _) => Ok(Admission::Full),
            _ => anyhow::bail!("the admission script answered something unexpected"),
        }
    }

    /// Removes a closed connection's lease. Failures are counted and logged only: the lease then
    /// runs out by itself within one lease time.
    pub async fn release(&self, key: LeaseKey, lease: String) {
        let mut connection = self.connection.clone();
        let mut remove = redis::cmd("ZREM");
        remove.arg(self.key(&key)).arg(&lease);
        let released = timeout(REDIS_TIMEOUT, remove.query_async::<()>(&mut connection))
            .await
            .context("Redis did not answer the release in time")
            .and_then(|result| result.context("removing the lease"));
        if let Err(error) = released {
            self.failed("releasing a connection slot", &error);
        }
    }

    /// Extends the leases still in Redis by one lease time; returns those it no longer had.
    #[tracing::instrument(skip_all, fields(sets = sets.len()))]
    pub async fn renew(&self, sets: &[Leases]) -> anyhow::Result<Vec<Leases>> {
        let missing = self.refresh("renew", sets).await?;
        Ok(sets
            .iter()
            .zip(missing)
            .filter(|(_, missing)| !missing.is_empty())
            .map(|((key, _), missing)| (key.clone(), missing))
            .collect())
    }

    /// Writes leases back that Redis lost, for connections that are still open.
    #[tracing::instrument(skip_all, fields(sets = sets.len()))]
    pub async fn restore(&self, sets: &[Leases]) -> anyhow::Result<()> {
        self.refresh("restore", sets).await.map(drop)
    }

    /// Runs the refresh script once per set, pipelined in batches; one reply per set.
    async fn refresh(&self, mode: &str, sets: &[Leases]) -> anyhow::Result<Vec<Vec<String>>> {
        let mut replies = Vec::with_capacity(sets.len());
        for batch in sets.chunks(REFRESH_BATCH) {
            let mut pipe = redis::pipe();
            // Commands of a pipeline run in order, so the EVALSHAs after this find the script
            // even on a Redis that restarted since the last round.
            pipe.cmd("SCRIPT").arg("LOAD").arg(REFRESH_LUA).ignore();
            for (key, leases) in batch {
                pipe.cmd("EVALSHA")
                    .arg(REFRESH.get_hash())
                    .arg(1)
                    .arg(self.key(key))
                    .arg(self.lease_ms())
                    .arg(mode)
                    .arg(leases);
            }
            let mut connection = self.connection.clone();
            let batch: Vec<Vec<String>> = timeout(REDIS_TIMEOUT, pipe.query_async(&mut connection))
                .await
                .context("Redis did not answer the lease renewal in time")?
                .context("renewing leases")?;
            replies.extend(batch);
        }
        Ok(replies)
    }

    /// Counts and logs a failed Redis call, with its cause chain.
    pub fn failed(&self, action: &str, error: &anyhow::Error) {
        self.errors.inc();
        tracing::warn!(error = format!("{error:#}"), "{action} failed (Redis)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_names_its_instance_and_connection() {
        let lease = local_lease("0123456789ab:018f-connection:with-colons");
        assert_eq!(
            holder_of(&lease),
            Some(("0123456789ab", "018f-connection:with-colons"))
        );
        assert_eq!(lease.find(':'), Some(16), "{lease}");
        assert_eq!(holder_of("garbage"), None);
    }
}

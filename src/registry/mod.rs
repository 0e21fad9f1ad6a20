//! Who is connected, by client IP and by user: the connection limits of `connections` are
//! enforced here, and revocation finds its targets here.
//!
//! Without `REDIS_URL` everything is counted in this process. With it, limits hold across
//! instances: each connection holds a lease in Redis (see `cluster.rs` for the key layout) that its
//! instance renews every third of `streams.presence_ttl`, so the slots of a crashed instance are
//! forgotten within that time. Closing a connection held by another instance (`close_oldest`) and
//! revocation travel as orders on the bus topic `$control` (`remote.rs`).
//!
//! # When Redis fails
//!
//! Admission fails open: a Redis outage must not lock every user out. Each failed call (bounded by
//! a two-second timeout) is counted in `cluster_errors_total{part="registry"}` and logged, and the
//! limits are then enforced per instance, on this instance's own connections and rates, as a
//! floor. Leases of connections admitted meanwhile are written back by the next renewal once
//! Redis answers again.

mod cluster;
mod leases;
mod local;
mod lua;
mod rate;
mod remote;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::BoxStream;
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::leases::{IpSlot, UserSlot};

use self::cluster::{Admission, Cluster, holder_of, local_lease};
use self::local::{LeaseKey, Local, Member, session_digest};
use self::rate::Rate;
use self::remote::Order;
use crate::bus::{Bus, Delivery};
use crate::client_ip::IpBucket;
use crate::config::{Config, Connections, OnUserLimit};
use crate::metrics::Metrics;
use crate::transport::control::ConnectionHandle;

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `connects_per_minute_per_ip` exceeded.
    IpRate { retry_after: Duration },
    /// `max_per_ip` connections already open from this IP.
    IpFull,
    /// `reconnects_per_minute` exceeded for this user.
    UserRate { retry_after: Duration },
    /// `max_per_user` reached with `on_user_limit: reject_new`.
    UserFull,
}

/// What a revocation did.
#[derive(Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Connections closed on this instance.
    pub closed: usize,
    /// Whether the order reached the bus, for every other instance to close its own.
    pub notified: bool,
}

pub struct Registry {
    local: Mutex<Local>,
    limits: Connections,
    connects_per_ip: Rate,
    reconnects_per_user: Rate,
    /// Leases in Redis, when `REDIS_URL` is set.
    cluster: Option<Cluster>,
    /// Carries orders between instances (`$control`).
    bus: Arc<dyn Bus>,
    /// The subscription to `$control` made at startup, until the listener takes it over.
    orders: Mutex<Option<BoxStream<'static, Delivery>>>,
    instance: String,
    /// Releases run after their connection ended; tracked so that shutdown waits for them.
    tracker: TaskTracker,
    /// `cluster_errors{part="registry"}`.
    errors: IntCounter,
}

impl Registry {
    pub fn new(
        config: &Config,
        redis: Option<&redis::Client>,
        bus: Arc<dyn Bus>,
        instance: &str,
        metrics: &Metrics,
        tracker: TaskTracker,
    ) -> anyhow::Result<Arc<Self>> {
        let errors = metrics.cluster_errors.with_label_values(&["registry"]);
        let cluster = redis
            .map(|client| {
                let streams = &config.streams;
                let lease = streams.presence_ttl.get();
                Cluster::new(client, &streams.key_prefix, lease, errors.clone())
            })
            .transpose()?;
        let limits = &config.connections;
        Ok(Arc::new(Self {
            local: Mutex::default(),
            limits: limits.clone(),
            connects_per_ip: Rate::per_minute(limits.connects_per_minute_per_ip, cluster.as_ref()),
            reconnects_per_user: Rate::per_minute(limits.reconnects_per_minute, cluster.as_ref()),
            cluster,
            bus,
            orders: Mutex::default(),
            instance: instance.to_string(),
            tracker,
            errors,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().expect("registry lock poisoned")
    }

    /// Admits an upgrade from `ip` (an IPv6 client's whole prefix), before the handshake.
    pub async fn admit_ip(self: &Arc<Self>, ip: IpBucket) -> Result<IpSlot, Refusal> {
        self.rate(&self.connects_per_ip, &format!("$connects:ip:{ip}"))
            .await
            .map_err(|retry_after| Refusal::IpRate { retry_after })?;
        let key = LeaseKey::Ip(ip);
        let max = self.limits.max_per_ip;
        if self.lock().held(&key) >= max as usize {
            return Err(Refusal::IpFull);
        }
        let holder = format!("{}:{}", self.instance, uuid::Uuid::new_v4().simple());
        let verdict = self.claim(&key, max, false, &holder).await;
        let mut local = self.lock();
        let lease = match verdict {
            Some(Admission::Admitted { lease, .. }) => lease,
            Some(Admission::Full) => return Err(Refusal::IpFull),
            // This instance decides alone: checked again under the lock, as admissions run
            // concurrently.
            None if local.held(&key) >= max as usize => return Err(Refusal::IpFull),
            None => local_lease(&holder),
        };
        local.insert_ip(ip, lease.clone());
        Ok(IpSlot {
            registry: self.clone(),
            ip,
            lease,
        })
    }

    /// Admits an authenticated connection of `user`. With `close_oldest`, the user's oldest
    /// connections (on whichever instance) are told they were replaced and closed, with a code
    /// clients do not retry, so two tabs cannot evict each other forever; their ids are returned.
    pub async fn admit_user(
        self: &Arc<Self>,
        user: &str,
        handle: ConnectionHandle,
        session_id: Option<String>,
    ) -> Result<(UserSlot, Vec<String>), Refusal> {
        self.rate(
            &self.reconnects_per_user,
            &format!("$reconnects:user:{user}"),
        )
        .await
        .map_err(|retry_after| Refusal::UserRate { retry_after })?;
        let key = LeaseKey::User(user.to_string());
        let max = self.limits.max_per_user;
        let evict = self.limits.on_user_limit == OnUserLimit::CloseOldest;
        if !evict && self.lock().held(&key) >= max as usize {
            return Err(Refusal::UserFull);
        }
        let holder = format!("{}:{}", self.instance, handle.id);
        let verdict = self.claim(&key, max, evict, &holder).await;
        let connection_id = handle.id.clone();
        // Scoped: the guard must be gone before publishing awaits.
        let (lease, replaced, orders) = {
            let mut local = self.lock();
            let mut orders = Vec::new();
            let (lease, replaced) = match verdict {
                Some(Admission::Full) => return Err(Refusal::UserFull),
                Some(Admission::Admitted { lease, evicted }) => {
                    let mut replaced = Vec::new();
                    for (instance, connection) in evicted.iter().filter_map(|l| holder_of(l)) {
                        replaced.push(connection.to_string());
                        if instance == self.instance {
                            local.replace(user, connection);
                        } else {
                            orders.push(Order::Replace {
                                from: self.instance.clone(),
                                instance: instance.to_string(),
                                user: user.to_string(),
                                connection: connection.to_string(),
                            });
                        }
                    }
                    (lease, replaced)
                }
                // This instance decides alone, as without a cluster.
                None => {
                    if !evict && local.held(&key) >= max as usize {
                        return Err(Refusal::UserFull);
                    }
                    (
                        local_lease(&holder),
                        local.replace_oldest(user, max as usize),
                    )
                }
            };
            let member = Member {
                handle,
                session: session_id.as_deref().map(session_digest),
                lease: lease.clone(),
            };
            local.insert_user(user, member);
            (lease, replaced, orders)
        };
        for order in &orders {
            self.publish(order).await;
        }
        let slot = UserSlot {
            registry: self.clone(),
            user: user.to_string(),
            connection_id,
            lease,
        };
        Ok((slot, replaced))
    }

    /// Closes every connection of `user`, or of `session_id` when given: here right away, and on
    /// the other instances through the bus.
    pub async fn revoke(&self, user: Option<&str>, session_id: Option<&str>) -> Revocation {
        let session = session_id.map(session_digest);
        let closed = self.lock().revoke(user, session.as_deref());
        let order = Order::Revoke {
            from: self.instance.clone(),
            user: user.map(str::to_string),
            session,
        };
        let notified = self.publish(&order).await;
        Revocation { closed, notified }
    }

    /// Forgets rate-limiter state of keys idle for a full window, and replace orders that found
    /// no connection, bounding memory over churn.
    pub fn retain_recent(&self) {
        self.connects_per_ip.retain_recent();
        self.reconnects_per_user.retain_recent();
        self.lock().forget_stale();
    }

    /// The registry's background work until shutdown: following `$control`, and renewing this
    /// instance's leases when there is a cluster.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let renewals = self.clone().renew_leases(shutdown.clone());
        tokio::join!(remote::listen(self, shutdown), renewals);
    }

    /// Checks a connection rate, counting a Redis failure.
    async fn rate(&self, rate: &Rate, key: &str) -> Result<(), Duration> {
        rate.check(key, |error| {
            self.failed("checking a connection rate", error)
        })
        .await
    }

    /// The cluster's verdict on a new lease; `None` when there is no cluster or Redis failed, and
    /// this instance decides alone.
    async fn claim(
        &self,
        key: &LeaseKey,
        max: u32,
        evict: bool,
        holder: &str,
    ) -> Option<Admission> {
        let cluster = self.cluster.as_ref()?;
        cluster
            .admit(key, max, evict, holder)
            .await
            .inspect_err(|error| self.failed("admitting a connection", error))
            .ok()
    }

    fn failed(&self, action: &str, error: &anyhow::Error) {
        self.errors.inc();
        tracing::warn!(
            error = format!("{error:#}"),
            "{action} failed (Redis); deciding on this instance's counts"
        );
    }
}

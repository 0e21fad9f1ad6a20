//! The life of this instance's leases in Redis: renewed every third of a lease time while their
//! connections are open, released when they end.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Registry;
use super::local::LeaseKey;
use crate::client_ip::IpBucket;

/// Held by a connection for its life; dropping it frees the IP's slot.
pub struct IpSlot {
    pub(super) registry: Arc<Registry>,
    pub(super) ip: IpBucket,
    pub(super) lease: String,
}

/// Held by an authenticated connection for its life; dropping it frees the user's slot.
pub struct UserSlot {
    pub(super) registry: Arc<Registry>,
    pub(super) user: String,
    pub(super) connection_id: String,
    pub(super) lease: String,
}

impl Registry {
    /// Every third of a lease time, extends the leases of the connections this instance holds,
    /// pipelined, and writes back those Redis lost. Missing a round is harmless: two more follow
    /// before a lease runs out.
    pub(super) async fn renew_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let period = cluster.lease() / 3;
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(every.tick()).await.is_some() {
            let leases = self.lock().leases();
            let missing = match cluster.renew(&leases).await {
                Ok(missing) => missing,
                Err(error) => {
                    cluster.failed("renewing connection slots", &error);
                    continue;
                }
            };
            // Leases of connections that closed meanwhile are not restored.
            let lost: Vec<_> = {
                let local = self.lock();
                missing
                    .into_iter()
                    .map(|(key, leases)| {
                        let held = local.still_held(&key, leases);
                        (key, held)
                    })
                    .filter(|(_, held)| !held.is_empty())
                    .collect()
            };
            if !lost.is_empty()
                && let Err(error) = cluster.restore(&lost).await
            {
                cluster.failed("restoring connection slots", &error);
            }
        }
    }

    /// Removes a lease from Redis after its connection ended: `Drop` cannot wait, so this runs as
    /// a task of its own.
    fn release(&self, key: LeaseKey, lease: String) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        // Outside a runtime (only while one shuts down) the lease simply runs out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.tracker
                .spawn_on(async move { cluster.release(key, lease).await }, &runtime);
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.registry.lock().remove_ip(self.ip, &self.lease);
        let lease = std::mem::take(&mut self.lease);
        self.registry.release(LeaseKey::Ip(self.ip), lease);
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.registry
            .lock()
            .remove_user(&self.user, &self.connection_id);
        let key = LeaseKey::User(std::mem::take(&mut self.user));
        self.registry.release(key, std::mem::take(&mut self.lease));
    }
}

//! Connection rates (`connects_per_minute_per_ip`, `reconnects_per_minute`): counted in Redis when
//! there is a cluster, so a client cannot multiply its budget by the number of instances; in this
//! process otherwise, and whenever Redis cannot answer.

use std::time::Duration;

use crate::limits::keyed::KeyedLimiter;

use super::cluster::Cluster;

const MINUTE: Duration = Duration::from_secs(60);

pub(super) struct Rate {
    /// The floor: this instance's own count, used when there is no cluster or Redis fails. It
    /// only sees the calls it decided, so it is cold when an outage starts and never stricter
    /// than the shared count.
    local: KeyedLimiter,
    shared: Option<KeyedLimiter>,
}

impl Rate {
    pub fn per_minute(limit: u32, cluster: Option<&Cluster>) -> Self {
        Self {
            local: KeyedLimiter::in_process(limit, MINUTE),
            shared: cluster.map(|c| {
                KeyedLimiter::redis(
                    c.connection().clone(),
                    c.key_prefix().to_string(),
                    limit,
                    MINUTE,
                )
            }),
        }
    }

    /// Counts one connection for `key`; `Err(retry_after)` when over the rate. A Redis failure
    /// is reported to `failed` and the local count decides.
    pub async fn check(
        &self,
        key: &str,
        failed: impl FnOnce(&anyhow::Error),
    ) -> Result<(), Duration> {
        let shared = match &self.shared {
            Some(limiter) => limiter.check(key).await.inspect_err(failed).ok(),
            None => None,
        };
        let decision = match shared {
            Some(decision) => decision,
            None => self
                .local
                .check(key)
                .await
                .expect("the in-process limiter cannot fail"),
        };
        if decision.allowed {
            Ok(())
        } else {
            Err(decision.retry_after)
        }
    }

    pub fn retain_recent(&self) {
        self.local.retain_recent();
    }
}

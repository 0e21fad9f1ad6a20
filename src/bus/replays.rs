//! How many replays (resumes with `after`) run at once: at most `streams.max_replays` on the
//! instance and `streams.max_replays_per_connection` on one connection. A replay reads up to
//! `streams.replay_bytes` back from Redis and holds it until it goes out, so these bounds are what
//! a resume storm, or one connection resuming many subscriptions, can make the instance hold and
//! ask of Redis.
//!
//! A resume past a bound waits its turn (semaphores are first come, first served) rather than
//! failing: a client reconnecting after a deploy resumes every subscription it had, and each
//! must get its missed events. The wait holds nothing but the operation's task, already bounded
//! by `connections.max_operations`; the connection's own bound is taken first, so a connection
//! waiting for itself never holds a slot of the instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Streams;
use crate::metrics::Metrics;

pub struct Replays {
    instance: Arc<Semaphore>,
    per_connection: usize,
    /// Connections with a replay running or waiting; an entry goes with its last ticket.
    connections: Mutex<HashMap<String, Arc<Semaphore>>>,
    active: IntGauge,
}

/// The right to run one replay, until dropped.
pub struct Ticket {
    replays: Arc<Replays>,
    connection: Option<(String, Arc<Semaphore>)>,
    permits: Vec<OwnedSemaphorePermit>,
    counted: bool,
}

impl Replays {
    pub fn new(streams: &Streams, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            instance: Arc::new(Semaphore::new(streams.max_replays.max(1) as usize)),
            per_connection: streams.max_replays_per_connection.max(1) as usize,
            connections: Mutex::default(),
            active: metrics.replays_active.clone(),
        })
    }

    /// Waits until a replay of `connection` (`None`: not on a connection) may run.
    pub async fn admit(self: &Arc<Self>, connection: Option<&str>) -> Ticket {
        // Made before waiting, so a resume given up while it waits still cleans up its entry.
        let mut ticket = Ticket {
            replays: self.clone(),
            connection: None,
            permits: Vec::with_capacity(2),
            counted: false,
        };
        if let Some(id) = connection {
            let semaphore = self
                .lock()
                .entry(id.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_connection)))
                .clone();
            ticket.connection = Some((id.to_string(), semaphore.clone()));
            ticket.permits.push(acquire(semaphore).await);
        }
        ticket.permits.push(acquire(self.instance.clone()).await);
        self.active.inc();
        ticket.counted = true;
        ticket
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        crate::sync::lock(&self.connections)
    }
}

async fn acquire(semaphore: Arc<Semaphore>) -> OwnedSemaphorePermit {
    semaphore
        .acquire_owned()
        .await
        .expect("replay semaphores are never closed")
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.counted {
            self.replays.active.dec();
        }
        self.permits.clear();
        if let Some((id, semaphore)) = self.connection.take() {
            let mut connections = self.replays.lock();
            drop(semaphore);
            // Under the lock that hands out clones, so no other ticket holds it when it goes.
            if connections
                .get(&id)
                .is_some_and(|s| Arc::strong_count(s) == 1)
            {
                connections.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replays_wait_for_their_connections_bound_then_for_the_instances() {
        let metrics = Metrics::new("test");
        let streams = Streams {
            max_replays: 3,
            max_replays_per_connection: 2,
            ..Streams::default()
        };
        let replays = Replays::new(&streams, &metrics);
        let a1 = replays.admit(Some("a")).await;
        let a2 = replays.admit(Some("a")).await;
        let mut a3 = Box::pin(replays.admit(Some("a")));
        assert!(futures_util::poll!(&mut a3).is_pending(), "a's bound");
        let b1 = replays.admit(Some("b")).await;
        let mut b2 = Box::pin(replays.admit(Some("b")));
        assert!(
            futures_util::poll!(&mut b2).is_pending(),
            "the instance's bound"
        );
        assert_eq!(metrics.replays_active.get(), 3);
        drop(a1);
        // a3 got a's slot but now waits for the instance, behind b2.
        let b2 = b2.await;
        assert!(futures_util::poll!(&mut a3).is_pending());
        drop(b1);
        let a3 = a3.await;
        assert_eq!(metrics.replays_active.get(), 3);
        // A resume given up while waiting leaves nothing behind.
        let mut c = Box::pin(replays.admit(Some("c")));
        assert!(futures_util::poll!(&mut c).is_pending());
        drop(c);
        drop((a2, a3, b2));
        assert_eq!(metrics.replays_active.get(), 0);
        assert!(replays.lock().is_empty());
    }
}

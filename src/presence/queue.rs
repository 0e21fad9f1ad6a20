//! The presence worker's queue, bounded where it can be without ever losing a leave.
//!
//! A join may be dropped: the subscription then runs without being shown as present, which is
//! the fail-open presence already has when Redis is down. A leave may not: a lost one would keep
//! a connection online forever. So joins are admitted only while fewer than `streams.presence_queue`
//! commands wait, and leaves always are. A leave follows an admitted join, so the queue holds at
//! most the bound plus one leave per subscription shown as present: churn, which ends as many
//! subscriptions as it starts, cannot grow it, and a join never waits behind a backlog (it is
//! dropped instead).
//!
//! The channel itself is unbounded because a `Guard` sends its leave from `Drop`, which cannot
//! wait; the count kept here is what bounds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::mpsc;

use super::worker::Command;
use crate::metrics::Metrics;

struct Shared {
    /// Commands sent and not yet taken by the worker.
    len: AtomicUsize,
    bound: usize,
    length: IntGauge,
    dropped: IntCounter,
}

impl Shared {
    fn taken(&self) {
        let len = self.len.fetch_sub(1, Ordering::AcqRel) - 1;
        self.length.set(len as i64);
    }
}

#[derive(Clone)]
pub struct Sender {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

pub struct Receiver {
    rx: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
}

/// A queue admitting joins while fewer than `bound` commands wait.
pub fn channel(bound: usize, metrics: &Metrics) -> (Sender, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        len: AtomicUsize::new(0),
        bound: bound.max(1),
        length: metrics.presence_queue.clone(),
        dropped: metrics.presence_queue_dropped.clone(),
    });
    let sender = Sender {
        tx,
        shared: shared.clone(),
    };
    (sender, Receiver { rx, shared })
}

impl Sender {
    /// Queues a join unless the queue is full, which is counted; false when it was not queued.
    pub fn offer(&self, command: Command) -> bool {
        let shared = &self.shared;
        let admitted = shared
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                (len < shared.bound).then_some(len + 1)
            });
        match admitted {
            Ok(len) => self.send(command, len + 1),
            Err(_) => {
                shared.dropped.inc();
                false
            }
        }
    }

    /// Queues a leave or a stop, whatever the queue holds; false once the worker is gone.
    pub fn push(&self, command: Command) -> bool {
        let len = self.shared.len.fetch_add(1, Ordering::AcqRel) + 1;
        self.send(command, len)
    }

    fn send(&self, command: Command, len: usize) -> bool {
        self.shared.length.set(len as i64);
        if self.tx.send(command).is_ok() {
            return true;
        }
        self.shared.taken();
        false
    }
}

impl Receiver {
    pub async fn recv(&mut self) -> Option<Command> {
        let command = self.rx.recv().await?;
        self.shared.taken();
        Some(command)
    }

    pub fn try_recv(&mut self) -> Option<Command> {
        let command = self.rx.try_recv().ok()?;
        self.shared.taken();
        Some(command)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::presence::Entry;

    fn join() -> Command {
        let entry = Entry {
            topic: "t".into(),
            connection: "c".into(),
            user: "u".into(),
        };
        Command::Enter(entry, oneshot::channel().0)
    }

    fn leave() -> Command {
        let entry = Entry {
            topic: "t".into(),
            connection: "c".into(),
            user: "u".into(),
        };
        Command::Exit(entry)
    }

    #[tokio::test]
    async fn joins_past_the_bound_are_dropped_and_counted_while_leaves_always_go_in() {
        let metrics = Metrics::new("test");
        let (tx, mut rx) = channel(2, &metrics);
        assert!(tx.offer(join()));
        assert!(tx.offer(join()));
        assert!(!tx.offer(join()), "full");
        assert!(tx.push(leave()));
        assert!(tx.push(leave()));
        assert_eq!(metrics.presence_queue_dropped.get(), 1);
        assert_eq!(metrics.presence_queue.get(), 4);
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        assert!(tx.offer(join()), "room again");
        while rx.try_recv().is_some() {}
        assert_eq!(metrics.presence_queue.get(), 0);
    }
}

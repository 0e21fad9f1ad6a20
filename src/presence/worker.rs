//! The presence worker: the one task of an instance that turns subscriptions starting and ending
//! into joins and leaves, and keeps the instance's entries leased.
//!
//! One task, so that the joins and leaves of a connection reach the store in the order they
//! happened without any lock; commands that queue up while a round trip is in flight are applied
//! together as one batch (one pipelined round trip to Redis).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

use super::local::Local;
use super::log::{LogRow, Status};
use super::queue::Receiver;
use super::{Change, Entry, Op, Outcome, Store, Transition, bus_topic, timestamp};
use crate::bus::Bus;
use crate::writer::Writer;

/// Most commands applied as one batch.
const BATCH: usize = 512;

pub enum Command {
    /// A subscription started; answered once its join is recorded (or failed).
    Enter(Entry, oneshot::Sender<()>),
    /// A subscription ended.
    Exit(Entry),
    /// Shutdown: leave whatever is still present, write the log, answer, and stop.
    Stop(oneshot::Sender<()>),
}

/// Publishes transitions and writes log rows; shared by the worker and the sweeper.
pub struct Reporter {
    pub bus: Arc<dyn Bus>,
    pub log: Writer<LogRow>,
    /// This instance.
    pub instance: String,
}

impl Reporter {
    /// Logs what `outcome` did to the connection, and publishes the user's transition if any.
    /// `instance` served the connection.
    pub async fn report(&self, outcome: &Outcome, instance: &str) {
        if outcome.applied {
            self.log.record(LogRow {
                entry: outcome.entry.clone(),
                instance: instance.to_string(),
                status: match outcome.op {
                    Op::Join => Status::Online,
                    Op::Leave => Status::Offline,
                },
                at: timestamp(outcome.at),
            });
        }
        if !outcome.changed {
            return;
        }
        let transition = Transition {
            change: match outcome.op {
                Op::Join => Change::Join,
                Op::Leave => Change::Leave,
            },
            user: outcome.entry.user.clone(),
            topic: outcome.entry.topic.clone(),
            at: outcome.at,
        };
        let published = self
            .bus
            .publish(
                bus_topic(&transition.topic),
                transition.kind().into(),
                transition.payload(),
            )
            .await;
        if let Err(error) = published {
            // Subscribers catch up at their next resync; the state itself is right.
            tracing::warn!(error = format!("{:#}", anyhow::Error::from(error)), topic = %transition.topic, "a presence transition was not published");
        }
    }

    /// Applies `ops` and reports each outcome. On failure the state heals itself: a lost join
    /// is redone by the next refresh, a lost leave expires and is swept.
    async fn apply(&self, store: &Store, ops: Vec<(Op, Entry)>) {
        if ops.is_empty() {
            return;
        }
        match store.apply(ops).await {
            Ok(outcomes) => {
                for outcome in &outcomes {
                    self.report(outcome, &self.instance).await;
                }
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "presence joins and leaves failed"
                );
            }
        }
    }
}

/// Runs until [`Command::Stop`], or until every handle is gone.
pub async fn run(
    mut rx: Receiver,
    store: Arc<Store>,
    reporter: Arc<Reporter>,
    refresh_every: Duration,
    linger: Duration,
) {
    let mut local = Local::new(linger);
    let mut refresh = tokio::time::interval(refresh_every);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Subscriptions starting and ending, taken in batches of whatever has queued.
            command = rx.recv() => {
                let Some(command) = command else { return };
                let mut batch = vec![command];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Some(command) => batch.push(command),
                        None => break,
                    }
                }
                if step(&mut local, batch, &store, &reporter).await {
                    return;
                }
            }
            // Connections that lingered long enough after their last subscription leave.
            _ = tokio::time::sleep_until(local.next_due().unwrap_or_else(Instant::now)),
                if local.next_due().is_some() => {
                let leaves = local.due(Instant::now());
                reporter.apply(&store, leaves).await;
            }
            // Re-leases this instance's entries well before they expire (every third of the
            // lease), so that only an instance that stopped refreshing loses them. In process
            // nothing expires.
            _ = refresh.tick(), if store.leased() => {
                if local.is_empty() {
                    continue;
                }
                match store.refresh(local.entries()).await {
                    // Joins here are entries Redis lost (swept during an outage): back online.
                    Ok(outcomes) => {
                        for outcome in &outcomes {
                            reporter.report(outcome, &reporter.instance).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "presence refresh failed");
                    }
                }
            }
        }
    }
}

/// Applies one batch of commands; true when it held a `Stop`.
async fn step(local: &mut Local, batch: Vec<Command>, store: &Store, reporter: &Reporter) -> bool {
    let mut ops = Vec::new();
    let mut waiting = Vec::new();
    let mut stop = None;
    for command in batch {
        match command {
            Command::Enter(entry, done) => {
                ops.extend(local.enter(entry));
                waiting.push(done);
            }
            Command::Exit(entry) => ops.extend(local.exit(entry, Instant::now())),
            Command::Stop(done) => stop = Some(done),
        }
    }
    if stop.is_some() {
        ops.extend(local.drain());
    }
    reporter.apply(store, ops).await;
    for done in waiting {
        let _ = done.send(());
    }
    match stop {
        Some(done) => {
            reporter.log.flush().await;
            let _ = done.send(());
            true
        }
        None => false,
    }
}

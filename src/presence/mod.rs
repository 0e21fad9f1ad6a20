//! Presence: who is online on a topic.
//!
//! An authenticated WebSocket connection is *present* on a topic while it holds at least one
//! subscription to it (`events(topic)`, `messages` on `conversation:<id>`, `presence(topic)`); a
//! user is *online* while at least one of their connections is present, on any instance. A
//! connection stays present for `streams.presence_linger` after its last subscription ends
//! ([`local`]), so churn is not news. A user going from no present connection to one is a JOIN,
//! back to none a LEAVE. Transitions travel over the bus on the internal topic
//! `$presence:<topic>` and are written to `presence_log` per connection (`online`/`offline`).
//!
//! The state lives in Redis when `REDIS_URL` is set (shared by every instance, see [`redis`] for
//! the key layout and [`sweep`] for how a dead instance's entries are forgotten), in this process
//! otherwise ([`memory`]); the API is the same.
//!
//! Presence is best-effort, never a reason to fail a subscription: when Redis fails or is slow,
//! the subscription goes ahead without waiting longer than [`ENTER_WAIT`], the failure is logged
//! and counted in `cluster_errors{part="presence"}`, and the state heals itself (fail-open). The
//! refresh re-joins this instance's connections that Redis lost, and the sweeper removes entries
//! this instance could not remove, once their lease runs out.

mod local;
mod log;
mod memory;
mod queue;
mod redis;
mod sweep;
mod view;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use self::view::View;
use self::worker::{Command, Reporter};
use crate::bus::{Bus, Event};
use crate::config::Streams;
use crate::db::Database;
use crate::metrics::Metrics;
use crate::writer::Writer;

/// The longest a new subscription waits for its join to be recorded: long enough that a healthy
/// Redis makes it visible before the subscription starts (no racy query right after), short
/// enough that a failing one does not hold the client up.
const ENTER_WAIT: Duration = Duration::from_secs(2);

/// The bus topic carrying JOIN and LEAVE of `topic`.
pub fn bus_topic(topic: &str) -> String {
    format!("{}presence:{topic}", crate::topics::INTERNAL_PREFIX)
}

/// One connection present on one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub topic: String,
    pub connection: String,
    pub user: String,
}

/// A user online on a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Online {
    pub user: String,
    /// The user's connections present on the topic, over every instance.
    pub connections: u32,
    /// When the user came online, in microseconds since the epoch.
    pub since: i64,
}

/// Who is online on a topic, and when that was read (microseconds since the epoch, on the clock
/// that stamps transitions, so transitions can be told apart as older or newer).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub at: i64,
    pub users: Vec<Online>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Join,
    Leave,
}

/// A user's JOIN or LEAVE on a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub change: Change,
    pub user: String,
    pub topic: String,
    /// Microseconds since the epoch.
    pub at: i64,
}

impl Transition {
    /// Reads a transition published on `$presence:<topic>`; `None` for anything else.
    pub fn from_event(topic: &str, event: &Event) -> Option<Self> {
        let change = match event.kind.as_str() {
            "join" => Change::Join,
            "leave" => Change::Leave,
            _ => return None,
        };
        Some(Self {
            change,
            user: event.payload.get("userId")?.as_str()?.to_string(),
            topic: topic.to_string(),
            at: event.payload.get("at")?.as_i64()?,
        })
    }

    fn kind(&self) -> &'static str {
        match self.change {
            Change::Join => "join",
            Change::Leave => "leave",
        }
    }

    fn payload(&self) -> serde_json::Value {
        // Sized for its two fields: the bus keeps it for replay, and a map grown by inserts has
        // room for four.
        let mut payload = serde_json::Map::with_capacity(2);
        payload.insert("userId".into(), self.user.clone().into());
        payload.insert("at".into(), self.at.into());
        serde_json::Value::Object(payload)
    }
}

/// Microseconds since the epoch as a timestamp (the epoch itself if out of range).
pub fn timestamp(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Join,
    Leave,
}

/// What one join or leave did.
#[derive(Debug)]
struct Outcome {
    op: Op,
    entry: Entry,
    /// The connection's entry was added (join) or removed (leave); false when it already was
    /// (a refresh, or a leave after the sweeper removed it).
    applied: bool,
    /// The user went online (join) or offline (leave): a transition to publish.
    changed: bool,
    /// When it happened, in microseconds since the epoch.
    at: i64,
}

/// Where presence state lives.
enum Store {
    Memory(memory::MemoryStore),
    Redis(redis::RedisStore),
}

impl Store {
    /// Applies joins and leaves in order.
    async fn apply(&self, ops: Vec<(Op, Entry)>) -> anyhow::Result<Vec<Outcome>> {
        match self {
            Store::Memory(memory) => Ok(memory.apply(ops)),
            Store::Redis(redis) => redis.apply(ops).await,
        }
    }

    /// Whether entries hold leases that must be refreshed (in process they never expire).
    fn leased(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// Extends the leases of `entries`, re-joining any that Redis lost.
    async fn refresh(&self, entries: Vec<Entry>) -> anyhow::Result<Vec<Outcome>> {
        match self {
            Store::Memory(_) => Ok(Vec::new()),
            Store::Redis(redis) => {
                let ops = entries.into_iter().map(|e| (Op::Join, e)).collect();
                redis.apply(ops).await
            }
        }
    }
}

/// What [`Presence::start`] needs.
pub struct Setup<'a> {
    /// `None`: in-process state (single instance).
    pub redis: Option<&'a ::redis::Client>,
    pub streams: &'a Streams,
    pub instance: String,
    pub bus: Arc<dyn Bus>,
    pub db: Database,
    pub metrics: Arc<Metrics>,
    /// Ends the sweeper; the worker ends with [`Presence::stop`].
    pub shutdown: CancellationToken,
}

/// The handle resolvers use.
pub struct Presence {
    tx: queue::Sender,
    store: Arc<Store>,
}

impl Presence {
    /// Starts the worker that applies joins and leaves in order and re-leases this instance's
    /// entries every third of `presence_ttl`, and, with Redis, the sweeper of expired entries.
    pub fn start(setup: Setup<'_>) -> anyhow::Result<Arc<Self>> {
        let ttl = setup.streams.presence_ttl.get();
        let store = Arc::new(match setup.redis {
            Some(client) => Store::Redis(redis::RedisStore::new(
                client,
                &setup.streams.key_prefix,
                &setup.instance,
                ttl,
                setup.metrics.clone(),
            )?),
            None => Store::Memory(memory::MemoryStore::default()),
        });
        let reporter = Arc::new(Reporter {
            bus: setup.bus,
            log: Writer::start(
                setup.db,
                log::QUEUE,
                setup.metrics.presence_log_dropped.clone(),
            ),
            instance: setup.instance,
        });
        // Any live instance sweeps: the entries of one that died are nobody else's to remove.
        if let Store::Redis(redis) = &*store {
            tokio::spawn(sweep::run(
                redis.clone(),
                reporter.clone(),
                ttl / 3,
                setup.shutdown,
            ));
        }
        let (tx, rx) = queue::channel(setup.streams.presence_queue as usize, &setup.metrics);
        let linger = setup.streams.presence_linger.get();
        tokio::spawn(worker::run(rx, store.clone(), reporter, ttl / 3, linger));
        Ok(Arc::new(Self { tx, store }))
    }

    /// Marks `connection` of `user` present on `topic` until the guard is dropped. Waits (at most
    /// [`ENTER_WAIT`]) until the join is recorded; not at all when the presence queue is full,
    /// and the connection is then not shown as present.
    pub async fn enter(&self, topic: &str, user: &str, connection: &str) -> Guard {
        let entry = Entry {
            topic: topic.to_string(),
            connection: connection.to_string(),
            user: user.to_string(),
        };
        let (done, recorded) = oneshot::channel();
        let sent = self.tx.offer(Command::Enter(entry.clone(), done));
        // Made before waiting: if the subscription is dropped while it waits, the guard still
        // sends the exit that balances the enter.
        let guard = Guard {
            tx: self.tx.clone(),
            entry: sent.then_some(entry),
        };
        if sent {
            let _ = tokio::time::timeout(ENTER_WAIT, recorded).await;
        }
        guard
    }

    /// Who is online on `topic` now.
    pub async fn online(&self, topic: &str) -> anyhow::Result<Snapshot> {
        match &*self.store {
            Store::Memory(memory) => Ok(memory.online(topic)),
            Store::Redis(redis) => redis.online(topic).await,
        }
    }

    /// At shutdown, once connections are closed: leaves whatever is still present, then waits
    /// for the presence log to be written.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.tx.push(Command::Stop(done)) {
            let _ = stopped.await;
        }
    }
}

/// Keeps a connection present on a topic; dropping it leaves.
pub struct Guard {
    tx: queue::Sender,
    entry: Option<Entry>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            // Fails only once the worker stopped at shutdown, when leaving no longer matters.
            self.tx.push(Command::Exit(entry));
        }
    }
}

//! The event bus: backends publish events into topics; subscribers get every event of a topic in
//! order, and may resume after a known event id. The in-process bus serves a single instance;
//! the Redis Streams bus ([`redis`]) serves a cluster of instances sharing one Redis.

mod fanout;
mod memory;
mod metered;
pub mod redis;
mod replays;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::limits::document::Violation;
use crate::metrics::Metrics;

pub use memory::MemoryBus;
pub use metered::Metered;
pub use redis::RedisBus;
pub use replays::Replays;

/// The bus of this instance: Redis Streams when `REDIS_URL` is set (its readers run until
/// `shutdown` is cancelled), the in-process bus otherwise.
pub fn build(
    config: &Config,
    redis: Option<&::redis::Client>,
    instance_id: &str,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<dyn Bus>> {
    Ok(match redis {
        Some(client) => {
            let bus = RedisBus::start(
                client.clone(),
                config,
                instance_id,
                metrics.clone(),
                shutdown,
            )?;
            Arc::new(Metered::new(bus, metrics.clone()))
        }
        None => {
            let memory = MemoryBus::with_metrics(
                &config.streams,
                config.connections.send_queue as usize,
                metrics.clone(),
            );
            Arc::new(Metered::new(memory, metrics.clone()))
        }
    })
}

/// Refuses a topic name longer than `payload.max_topic_bytes` (`max_bytes`), wherever it comes
/// in, before any other work is spent on it: a topic is hashed, matched against every rule,
/// stored with each event and kept as a key while followed.
pub fn check_topic(topic: &str, max_bytes: u32) -> Result<(), Violation> {
    let measured = topic.len() as u64;
    if measured <= u64::from(max_bytes) {
        return Ok(());
    }
    Err(Violation {
        code: "MAX_TOPIC_BYTES_LIMIT",
        limit: max_bytes.into(),
        measured,
        message: format!("the topic is {measured} bytes long; the limit is {max_bytes}"),
    })
}

/// A position in a topic's stream, written `<milliseconds>-<sequence>` like a Redis Stream id, so
/// ids stay comparable whichever bus produced them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = || {
            let (ms, seq) = s.split_once('-')?;
            Some(EventId {
                ms: ms.parse().ok()?,
                seq: seq.parse().ok()?,
            })
        };
        parse()
            .ok_or_else(|| format!("`{s}` is not an event id (expected <milliseconds>-<sequence>)"))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub topic: String,
    pub kind: String,
    pub payload: Value,
    pub published_at: DateTime<Utc>,
}

/// What a subscription yields.
#[derive(Clone, Debug)]
pub enum Delivery {
    Event(Arc<Event>),
    /// Events were lost between `after` and the next delivery (replay window exceeded, or the
    /// subscriber fell behind); the client should refetch state.
    Gap {
        after: Option<EventId>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
}

pub trait Bus: Send + Sync + 'static {
    /// Publishes an event; on success it is stored and ordered, and its id is returned.
    fn publish(
        &self,
        topic: String,
        kind: String,
        payload: Value,
    ) -> BoxFuture<'_, Result<Arc<Event>, BusError>>;

    /// Every event of `topic` after `after` (replayed, at most the replay limit, then a `Gap`),
    /// then live ones, with no duplicate or hole at the seam.
    fn subscribe(
        &self,
        topic: String,
        after: Option<EventId>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Delivery>, BusError>>;
}

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
        // Digits only: `u64::from_str` also takes a sign, so `+1-0` would name `1-0`.
        let number = |digits: &str| {
            let digits = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then_some(digits)?;
            digits.parse().ok()
        };
        let parse = || {
            let (ms, seq) = s.split_once('-')?;
            Some(EventId {
                ms: number(ms)?,
                seq: number(seq)?,
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
    /// A resume `after` an id newer than the topic's stream has, and newer than the bus's clock:
    /// no event has it, nor can one have it yet, so it names nothing the subscriber was sent.
    #[error("`{0}` is newer than any event; resume after an event id the server sent")]
    UnknownAfter(EventId),
}

impl EventId {
    /// Whether no event of a stream whose newest id is `last` has or can yet have this id, with
    /// the bus's clock at `now_ms`. An id at most the clock is not unknown even past `last`:
    /// it is what a client resuming across a Redis restart (which lost the stream) holds, and it
    /// gets a `GAP`.
    pub fn unknown(self, last: EventId, now_ms: u64) -> bool {
        self > last && self.ms > now_ms
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_two_plain_numbers_and_an_id_past_the_stream_and_the_clock_is_unknown() {
        assert_eq!("12-3".parse(), Ok(EventId { ms: 12, seq: 3 }));
        for bad in [
            "+1-0",
            "1-+0",
            "1-2-3",
            "-",
            "1-",
            " 1-0",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
        let last = EventId { ms: 100, seq: 0 };
        assert!(!EventId { ms: 100, seq: 0 }.unknown(last, 50));
        assert!(EventId { ms: 101, seq: 0 }.unknown(last, 100));
        // Past the stream but not the clock: a stream Redis lost.
        assert!(!EventId { ms: 101, seq: 0 }.unknown(last, 200));
    }
}

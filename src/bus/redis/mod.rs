//! The Redis Streams bus: every instance publishes into and reads from the same streams, so a
//! subscriber on one instance gets what is published on any other.
//!
//! # Wire format (for publishers in other languages)
//!
//! Events live in `streams.shards` streams (default 16). A topic's stream is
//! `{key_prefix}:events:{<n>}` (the braces are literal: `palisade:events:{7}`; they make `<n>` a
//! Redis Cluster hash tag), where `<n>` is the FNV-1a 32-bit hash of the topic's UTF-8 bytes
//! modulo `streams.shards`:
//!
//! ```text
//! hash = 0x811C9DC5                                  // offset basis
//! for each byte b of the topic:
//!     hash = (hash XOR b) * 0x01000193 mod 2^32      // FNV prime
//! n = hash mod shards
//! ```
//!
//! (`"" → 0x811C9DC5`, `"a" → 0xE40C292C`, `"foobar" → 0xBF9CF968`; see [`shard_of`].)
//! The server's own topics (`$`-prefixed: presence transitions) are not hashed: they go to one
//! stream of their own, `{key_prefix}:events:{internal}`, trimmed to `streams.maxlen` as well, so
//! a reconnect storm's transitions (a leave and a join per client) cannot trim away the events
//! clients resume from. Other publishers never write there.
//! An event is one entry with exactly these fields, added with an auto id:
//!
//! ```text
//! XADD <stream> MAXLEN ~ <streams.maxlen> * topic <topic> type <type> payload <JSON text>
//! ```
//!
//! The entry id is the event id clients see and resume from (`after`), and its milliseconds are
//! the event's `publishedAt`. An entry without a UTF-8 `topic` is skipped with a warning by every
//! instance; one without a `type`, or whose `payload` is not JSON, by the instances that have
//! subscribers of its topic (the others never parse it). Publishers must trim with `MAXLEN ~` and
//! no lower than `streams.maxlen`: harder trimming can drop entries an instance has not read yet,
//! which it then reports as a `GAP`.
//!
//! # Reading
//!
//! Each instance runs one reader per stream (`reader.rs`), each blocking on its own connection,
//! and hands entries to the subscribers it has for their topic (`bus/fanout.rs`, a bounded queue
//! per subscriber: one that falls `connections.send_queue` events behind gets a `GAP`). A
//! subscriber resuming with `after` gets the missed events read back from its topic's stream
//! (`replay.rs`); `after` must be an id of that topic (or `0-0`: whatever is still kept),
//! otherwise the resume starts with a `GAP`. A replay holds at most `streams.replay_limit` events
//! and `streams.replay_bytes` bytes, and replays go over a Redis connection of their own, so a
//! resume storm (every client of an instance coming back after a deploy) never delays a publish;
//! how many run at once is bounded by [`crate::bus::Replays`].
//!
//! # Redis failures
//!
//! Publishing fails closed: without an answer within [`REDIS_TIMEOUT`] it is `Unavailable`, never
//! a success that was not stored (an answer lost after the write means an error for an event
//! that subscribers still get). Readers reconnect with capped backoff and continue from the last
//! entry they handed over, so an outage delays events but loses none, unless Redis lost its data:
//! the epoch key `{key_prefix}:bus:epoch` (set once, never expiring) changes, or a stream's last
//! id goes back, and subscribers of the affected stream get a `GAP`. A subscriber that cannot be
//! positioned in the streams (the instance never reached Redis, or its replay failed) is refused
//! with `Unavailable` rather than silently missing events. Redis must not evict these keys
//! (`maxmemory-policy` `noeviction` or `volatile-*`): an evicted epoch reads as a reset.
//!
//! Keys: the shard streams and the internal stream (each bounded by `MAXLEN ~`) and the epoch
//! key; nothing per topic.

mod entry;
mod info;
mod reader;
mod replay;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fanout::Fanout;
use super::{Bus, BusError, Delivery, Event, EventId};
use crate::config::Config;
use crate::metrics::Metrics;

/// How long a publish or a subscriber's first positioning may wait for Redis before the bus
/// reports itself unavailable.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for a replay, which may scan a whole stream (`streams.maxlen` entries) in pages.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);

/// The FNV-1a 32-bit hash of `topic` modulo `shards`: the stream a topic's events go to.
pub fn shard_of(topic: &str, shards: u32) -> u32 {
    fnv1a_32(topic.as_bytes()) % shards.max(1)
}

fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The key of stream `shard`.
pub fn stream_key(key_prefix: &str, shard: u32) -> String {
    format!("{key_prefix}:events:{{{shard}}}")
}

/// The key of the internal topics' stream.
pub fn internal_stream_key(key_prefix: &str) -> String {
    format!("{key_prefix}:events:{{internal}}")
}

/// The streams an instance reads, by the index [`stream_of`] gives: the shards, then the
/// internal topics' stream.
fn stream_keys(key_prefix: &str, shards: u32) -> Vec<String> {
    let shards = (0..shards).map(|shard| stream_key(key_prefix, shard));
    shards.chain([internal_stream_key(key_prefix)]).collect()
}

/// Which of [`stream_keys`] `topic`'s events go to.
fn stream_of(topic: &str, shards: u32) -> usize {
    if crate::topics::is_internal(topic) {
        shards as usize
    } else {
        shard_of(topic, shards) as usize
    }
}

/// The key whose value changes when Redis lost its data.
pub fn epoch_key(key_prefix: &str) -> String {
    format!("{key_prefix}:bus:epoch")
}

pub struct RedisBus {
    /// Shared, multiplexed, for publishes only: a command queues behind every command sent on
    /// the connection before it, so nothing slow (a replay's pages) may share it.
    conn: ConnectionManager,
    /// Shared, multiplexed, for replays: a resume storm queues here, never in front of publishes.
    replays: ConnectionManager,
    fanout: Arc<Fanout>,
    /// Per stream: true once its reader knows its place in it; before, a new subscriber could
    /// miss what is published while the reader connects.
    positioned: Vec<watch::Receiver<bool>>,
    metrics: Arc<Metrics>,
    /// By [`stream_of`]'s index.
    keys: Vec<String>,
    shards: u32,
    maxlen: u32,
    replay: replay::Bounds,
}

impl RedisBus {
    /// Builds the bus and spawns one reader per stream; the readers stop when `shutdown` is
    /// cancelled. Redis need not be reachable yet.
    pub fn start(
        client: redis::Client,
        config: &Config,
        instance_id: &str,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let streams = &config.streams;
        // Commands wait for a reconnection in progress: one retry (not the default six, over
        // seconds) lets a publish during an outage fail fast; the next command tries again.
        let connection = |response_timeout| {
            ConnectionManager::new_lazy_with_config(
                client.clone(),
                ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(response_timeout)),
            )
            .context("setting up the bus's Redis connection")
        };
        let conn = connection(REDIS_TIMEOUT)?;
        let replays = connection(REPLAY_TIMEOUT)?;
        let keys = stream_keys(&streams.key_prefix, streams.shards);
        let fanout = Fanout::new(
            keys.len(),
            config.connections.send_queue as usize,
            Some(metrics.clone()),
        );
        let mut positioned = Vec::with_capacity(keys.len());
        for (shard, key) in keys.iter().enumerate() {
            let (reader, placed) = reader::Reader::new(
                client.clone(),
                reader::Stream {
                    key: key.clone(),
                    key_prefix: &streams.key_prefix,
                    index: shard as u32,
                },
                instance_id,
                streams.maxlen as usize,
                fanout.clone(),
                metrics.clone(),
            );
            // A task per stream: each blocks in `XREAD` on a connection of its own, which one
            // task could not do for several streams without reading them in lockstep.
            tokio::spawn(reader.run(shutdown.clone()));
            positioned.push(placed);
        }
        Ok(Self {
            conn,
            replays,
            fanout,
            positioned,
            metrics,
            keys,
            shards: streams.shards,
            maxlen: streams.maxlen,
            replay: replay::Bounds {
                events: streams.replay_limit.max(1) as usize,
                bytes: streams.replay_bytes.bytes(),
            },
        })
    }

    #[tracing::instrument(skip(self, payload), err(Display))]
    async fn add(
        &self,
        key: &str,
        topic: &str,
        kind: &str,
        payload: &str,
    ) -> anyhow::Result<String> {
        let mut conn = self.conn.clone();
        let mut add = redis::cmd("XADD");
        add.arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg("topic")
            .arg(topic)
            .arg("type")
            .arg(kind)
            .arg("payload")
            .arg(payload);
        tokio::time::timeout(REDIS_TIMEOUT, add.query_async::<String>(&mut conn))
            .await
            .context("Redis did not answer in time")?
            .with_context(|| format!("XADD to {key}"))
    }
}

impl Bus for RedisBus {
    fn publish(
        &self,
        topic: String,
        kind: String,
        payload: Value,
    ) -> BoxFuture<'_, Result<Arc<Event>, BusError>> {
        Box::pin(async move {
            let key = &self.keys[stream_of(&topic, self.shards)];
            let id = self
                .add(key, &topic, &kind, &payload.to_string())
                .await
                .and_then(|id| id.parse::<EventId>().map_err(anyhow::Error::msg))
                .map_err(BusError::Unavailable)?;
            Ok(Arc::new(Event {
                id,
                topic,
                kind,
                payload,
                published_at: entry::added_at(id),
            }))
        })
    }

    fn subscribe(
        &self,
        topic: String,
        after: Option<EventId>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Delivery>, BusError>> {
        Box::pin(async move {
            let shard = stream_of(&topic, self.shards);
            // Until this stream's reader has found its place in it, events published now
            // might be neither replayed nor read live.
            let mut positioned = self.positioned[shard].clone();
            // An error means the reader stopped (shutdown) before it ever reached Redis.
            let placed = tokio::time::timeout(REDIS_TIMEOUT, positioned.wait_for(|p| *p))
                .await
                .is_ok_and(|waited| waited.is_ok());
            if !placed {
                let why = anyhow::anyhow!("the bus has not reached Redis yet");
                return Err(BusError::Unavailable(why));
            }
            // Joined before the replay is read, so whatever is published meanwhile arrives live;
            // the live side then drops what the replay already covered.
            let member = self.fanout.join(shard, &topic);
            let Some(after) = after else {
                return Ok(member.live(None, None).boxed());
            };
            let key = &self.keys[shard];
            let mut conn = self.replays.clone();
            let replay = replay::read(&mut conn, key, &topic, after, self.replay);
            let replay = tokio::time::timeout(REPLAY_TIMEOUT, replay)
                .await
                .context("Redis did not answer in time")
                .and_then(|r| r)
                .map_err(BusError::Unavailable)?
                .map_err(BusError::UnknownAfter)?;
            let (first, seam) = replay.into_deliveries(after, &self.metrics);
            let live = member.live(Some(seam), Some(seam));
            Ok(stream::iter(first).chain(live).boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_hash_with_fnv_1a_32() {
        // Reference vectors of FNV-1a 32 (Fowler, Noll, Vo).
        for (topic, hash) in [
            ("", 0x811C_9DC5),
            ("a", 0xE40C_292C),
            ("foobar", 0xBF9C_F968),
        ] {
            assert_eq!(fnv1a_32(topic.as_bytes()), hash, "{topic:?}");
        }
        // What other publishers must compute with the default 16 shards.
        assert_eq!(shard_of("", 16), 5);
        assert_eq!(shard_of("foobar", 16), 8);
        assert_eq!(shard_of("conversation:42", 16), 6);
        assert_eq!(shard_of("user:alice", 16), 0);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn keys_use_the_shard_as_a_cluster_hash_tag() {
        assert_eq!(stream_key("palisade", 7), "palisade:events:{7}");
        let keys = stream_keys("palisade", 2);
        assert_eq!(
            keys[stream_of("$presence:room", 2)],
            "palisade:events:{internal}"
        );
        assert_eq!(keys[stream_of("foobar", 2)], stream_key("palisade", 0));
        assert_eq!(epoch_key("palisade"), "palisade:bus:epoch");
    }
}

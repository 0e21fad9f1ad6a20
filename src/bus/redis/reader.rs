//! One reader per stream (each shard, and the internal topics' one): a blocking `XREAD` loop on a
//! connection of its own, handing entries to the local fan-out in stream order, reconnecting after
//! any failure and continuing from the last entry it handed over.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use rand::Rng;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{entry, epoch_key, info};
use crate::bus::EventId;
use crate::bus::fanout::{Fanout, GapCause};
use crate::metrics::Metrics;

/// How long one `XREAD` waits for entries. An empty wait ends with a check that Redis did not
/// lose the stream meanwhile, so this also bounds how long a reset can go unnoticed on an idle
/// stream whose connection survived (a failover to an empty replica).
const BLOCK: Duration = Duration::from_secs(5);
/// The reader's response timeout, comfortably above `BLOCK` rather than none: a connection whose
/// peer vanished without a reset (a half-open TCP connection) would otherwise block forever and
/// silently stop the shard; with it, the reader reconnects within `BLOCK + 5s`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most entries one `XREAD` returns (never more than `streams.maxlen`, see `Reader::new`).
const BATCH: usize = 256;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Reader {
    client: redis::Client,
    shard: u32,
    key: String,
    epoch_key: String,
    /// `CLIENT SETNAME` of the connection, so operators (and tests) can find and kill it.
    name: String,
    count: usize,
    fanout: Arc<Fanout>,
    /// Set once the first connection found the stream's end: from then on every entry reaches
    /// the subscribers who joined, so they may be let in.
    positioned: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// The last entry handed over; `None` until the first connection found the stream's end.
    last: Option<EventId>,
    /// The epoch seen by the previous check; a different one means Redis lost its data.
    epoch: Option<String>,
}

/// The stream a reader follows.
pub struct Stream<'a> {
    pub key: String,
    pub key_prefix: &'a str,
    /// Its index among the instance's streams: the fan-out's shard, and its reader's name.
    pub index: u32,
}

impl Reader {
    /// The reader of `stream`, and what turns true once it is positioned.
    pub fn new(
        client: redis::Client,
        stream: Stream<'_>,
        instance_id: &str,
        maxlen: usize,
        fanout: Arc<Fanout>,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<bool>) {
        let Stream {
            key,
            key_prefix,
            index: shard,
        } = stream;
        // Client names cannot contain spaces.
        let name = format!("{key_prefix}:reader:{instance_id}:{shard}").replace(' ', "_");
        let (positioned, placed) = watch::channel(false);
        let reader = Self {
            client,
            shard,
            key,
            epoch_key: epoch_key(key_prefix),
            name,
            // `MAXLEN ~ n` keeps at least n entries, so a batch smaller than n held everything
            // after `last`: only a full batch can follow entries trimmed before being read.
            count: BATCH.min(maxlen.max(1)),
            fanout,
            positioned,
            metrics,
            last: None,
            epoch: None,
        };
        (reader, placed)
    }

    /// Reads until `shutdown` is cancelled, reconnecting with capped, jittered backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        loop {
            // Shutdown drops the session wherever it waits (mid-`XREAD` too), and its connection
            // with it.
            let Some(Err(error)) = shutdown
                .run_until_cancelled(self.session(&mut backoff, &mut failing))
                .await
            else {
                return;
            };
            self.metrics
                .cluster_errors
                .with_label_values(&["bus"])
                .inc();
            // One warning per outage; the retries of the same outage are debug noise.
            if failing {
                tracing::debug!(
                    shard = self.shard,
                    error = format!("{error:#}"),
                    "bus reader still failing"
                );
            } else {
                tracing::warn!(
                    shard = self.shard,
                    error = format!("{error:#}"),
                    "bus reader lost Redis; reconnecting"
                );
                failing = true;
            }
            let jitter = rand::rng().random_range(0.5..1.0);
            let pause = backoff.mul_f64(jitter);
            if shutdown
                .run_until_cancelled(tokio::time::sleep(pause))
                .await
                .is_none()
            {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life; it only ends with an error.
    async fn session(
        &mut self,
        backoff: &mut Duration,
        failing: &mut bool,
    ) -> anyhow::Result<Infallible> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting")?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.name)
            .query_async::<()>(&mut conn)
            .await
            .context("naming the connection")?;
        self.check(&mut conn).await?;
        if std::mem::take(failing) {
            tracing::info!(shard = self.shard, "bus reader reconnected");
        }
        *backoff = MIN_BACKOFF;
        loop {
            let from = self.last.unwrap_or_default();
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("COUNT")
                .arg(self.count)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(from.to_string())
                .query_async(&mut conn)
                .await
                .context("XREAD")?;
            let entries: Vec<StreamId> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            if entries.is_empty() {
                self.check(&mut conn).await?;
                continue;
            }
            // Checked before handing the batch over, so a gap precedes the events after it.
            if entries.len() >= self.count {
                let info = info::fetch(&mut conn, &self.key).await?;
                if info::trimmed_past(info.as_ref(), from) {
                    tracing::warn!(shard = self.shard, after = %from, "bus reader fell behind trimming; subscribers get a GAP");
                    self.fanout.gap(self.shard as usize, GapCause::Lagged);
                }
            }
            for item in entries {
                self.hand_over(&item);
            }
        }
    }

    /// Places the reader on first contact, and otherwise finds out whether Redis lost the
    /// stream (epoch changed, last id went back) or trimmed what the reader had not read yet.
    async fn check(&mut self, conn: &mut MultiplexedConnection) -> anyhow::Result<()> {
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        // Redis 7: NX with GET sets the key only if missing and returns what was there.
        let previous: Option<String> = redis::cmd("SET")
            .arg(&self.epoch_key)
            .arg(&candidate)
            .arg("NX")
            .arg("GET")
            .query_async(conn)
            .await
            .context("reading the bus epoch")?;
        let epoch = previous.unwrap_or(candidate);
        let new_epoch = self.epoch.as_ref().is_some_and(|seen| *seen != epoch);
        self.epoch = Some(epoch);
        let info = info::fetch(conn, &self.key).await?;
        let shard = self.shard as usize;
        match self.last {
            None => {
                self.last = Some(info.map(|i| i.last_generated).unwrap_or_default());
                self.positioned.send_replace(true);
            }
            Some(last) if new_epoch || info::went_back(info.as_ref(), last) => {
                tracing::warn!(
                    shard = self.shard,
                    "Redis lost the bus stream (restarted empty?); subscribers get a GAP"
                );
                self.fanout.gap(shard, GapCause::RedisReset);
                self.last = Some(EventId::default());
            }
            Some(last) if info::trimmed_past(info.as_ref(), last) => {
                tracing::warn!(shard = self.shard, after = %last, "entries were trimmed before this reader read them; subscribers get a GAP");
                self.fanout.gap(shard, GapCause::Lagged);
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Hands one entry to this instance's subscribers of its topic, if any.
    fn hand_over(&mut self, item: &StreamId) {
        let id = match entry::id(item) {
            Ok(id) => id,
            Err(malformed) => {
                tracing::warn!(key = self.key, id = item.id, %malformed, "skipping a bus entry");
                return;
            }
        };
        self.last = Some(id);
        let lag_ms = (Utc::now().timestamp_millis() as u64).saturating_sub(id.ms);
        self.metrics.bus_read_lag.observe(lag_ms as f64 / 1000.0);
        let shard = self.shard as usize;
        let followed = match entry::topic(item) {
            Ok(topic) => self.fanout.follows(shard, topic),
            Err(malformed) => {
                tracing::warn!(key = self.key, id = item.id, %malformed, "skipping a malformed bus entry");
                return;
            }
        };
        // Nobody here follows the topic: its payload is not even parsed.
        if !followed {
            return;
        }
        match entry::event(item) {
            // Parsed outside the shard's lock; whoever follows the topic by now gets it.
            Ok(event) => self.fanout.deliver(shard, &Arc::new(event)),
            Err(malformed) => {
                tracing::warn!(key = self.key, id = item.id, %malformed, "skipping a malformed bus entry");
            }
        }
    }
}

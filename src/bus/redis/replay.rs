//! Reading back what a resuming subscriber missed from its topic's stream, which holds the
//! events of every topic of the shard.

use std::sync::Arc;

use anyhow::Context;
use redis::aio::ConnectionLike;
use redis::streams::StreamRangeReply;

use super::{entry, info};
use crate::bus::fanout::GapCause;
use crate::bus::{Delivery, Event, EventId};
use crate::metrics::Metrics;

/// Most entries fetched per round trip while scanning back.
const PAGE: usize = 512;
/// Fewest: a page of big entries costs memory, a page of one entry a round trip per entry.
const MIN_PAGE: usize = 16;

pub struct Replay {
    /// Events may have been missed before `events`: more than the bounds, or trimmed.
    pub gap: bool,
    /// The topic's newest events after `after` (within the bounds), oldest first.
    pub events: Vec<Arc<Event>>,
}

impl Replay {
    /// What a subscriber resuming after `after` gets first, and the newest id that covers.
    pub fn into_deliveries(self, after: EventId, metrics: &Metrics) -> (Vec<Delivery>, EventId) {
        let seam = self.events.last().map_or(after, |e| e.id);
        let mut first = Vec::with_capacity(self.events.len() + 1);
        if self.gap {
            let cause = GapCause::ReplayWindow.label();
            metrics.bus_gaps.with_label_values(&[cause]).inc();
            first.push(Delivery::Gap { after: Some(after) });
        }
        first.extend(self.events.into_iter().map(Delivery::Event));
        (first, seam)
    }
}

/// What one replay may hold: `streams.replay_limit` events and `streams.replay_bytes` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub events: usize,
    pub bytes: usize,
}

/// The newest events of `topic` after `after` in stream `key`, within `bounds`, or `Err(after)`
/// when `after` is [unknown](EventId::unknown) to the stream. The scan goes from the newest entry
/// back, so it stops as soon as it has one event more than it can replay, and it is bounded by
/// the stream's length (`streams.maxlen`) otherwise. Pages are sized by the entries seen so far
/// to hold about `bounds.bytes` (other topics' entries included), and never more than
/// [`MIN_PAGE`] entries when those are bigger than that.
#[tracing::instrument(skip(conn))]
pub async fn read(
    conn: &mut impl ConnectionLike,
    key: &str,
    topic: &str,
    after: EventId,
    bounds: Bounds,
) -> anyhow::Result<Result<Replay, EventId>> {
    // Before the scan: an exclusive range from past the largest id is an error in Redis.
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .context("reading the Redis clock")?;
    let now_ms = secs * 1000 + micros / 1000;
    if after.ms > now_ms {
        let last = info::fetch(conn, key)
            .await?
            .unwrap_or_default()
            .last_generated;
        if after.unknown(last, now_ms) {
            return Ok(Err(after));
        }
    }
    let mut newest_first = Vec::new();
    let mut held = 0;
    let mut too_many = false;
    let mut upper = "+".to_string();
    let mut count = MIN_PAGE;
    'scan: loop {
        let page: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(key)
            .arg(&upper)
            .arg(format!("({after}"))
            .arg("COUNT")
            .arg(count)
            .query_async(conn)
            .await
            .with_context(|| format!("XREVRANGE of {key}"))?;
        let exhausted = page.ids.len() < count;
        let page_bytes: usize = page.ids.iter().map(entry::size).sum();
        let per_entry = (page_bytes / page.ids.len().max(1)).max(1);
        count = (bounds.bytes / per_entry).clamp(MIN_PAGE, PAGE);
        for item in page.ids {
            upper = format!("({}", item.id);
            if entry::topic(&item).ok() != Some(topic) {
                continue;
            }
            let size = entry::size(&item);
            match entry::event(&item) {
                Ok(event) if newest_first.len() < bounds.events && held + size <= bounds.bytes => {
                    held += size;
                    newest_first.push(Arc::new(event));
                }
                Ok(_) => {
                    too_many = true;
                    break 'scan;
                }
                Err(malformed) => {
                    tracing::warn!(key, id = item.id, %malformed, "skipping a malformed bus entry");
                }
            }
        }
        if exhausted {
            break;
        }
    }
    // Read after the scan: trimming during the scan removes the oldest entries, which it reads
    // last, so only metadata from after it can vouch for them.
    let info = info::fetch(conn, key).await?;
    newest_first.reverse();
    Ok(Ok(Replay {
        gap: too_many || info::resume_misses(info.as_ref(), after),
        events: newest_first,
    }))
}

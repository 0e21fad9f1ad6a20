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

/// Entries fetched per round trip while scanning back.
const PAGE: usize = 512;

pub struct Replay {
    /// Events may have been missed before `events`: more than the limit, or trimmed.
    pub gap: bool,
    /// The topic's newest events after `after` (at most the limit), oldest first.
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

/// The newest `limit` events of `topic` after `after` in stream `key`. The scan goes from the
/// newest entry back, so it stops as soon as it has one event more than it can replay, and it is
/// bounded by the stream's length (`streams.maxlen`) otherwise.
#[tracing::instrument(skip(conn))]
pub async fn read(
    conn: &mut impl ConnectionLike,
    key: &str,
    topic: &str,
    after: EventId,
    limit: usize,
) -> anyhow::Result<Replay> {
    let mut newest_first = Vec::new();
    let mut too_many = false;
    let mut upper = "+".to_string();
    'scan: loop {
        let page: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(key)
            .arg(&upper)
            .arg(format!("({after}"))
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await
            .with_context(|| format!("XREVRANGE of {key}"))?;
        let exhausted = page.ids.len() < PAGE;
        for item in page.ids {
            upper = format!("({}", item.id);
            if entry::topic(&item).ok() != Some(topic) {
                continue;
            }
            match entry::event(&item) {
                Ok(event) if newest_first.len() < limit => newest_first.push(Arc::new(event)),
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
    Ok(Replay {
        gap: too_many || info::resume_misses(info.as_ref(), after),
        events: newest_first,
    })
}

//! The in-process bus: one replay ring per topic, and the same per-subscriber fan-out as the
//! Redis bus (one shard), so following a topic costs the same here.
//!
//! Publishing appends to the ring and delivers while holding the lock a subscriber takes to read
//! the ring and join the fan-out, so a subscriber sees each event exactly once: either in its
//! replay or live, never both and never neither.
//!
//! What is kept for resuming subscribers is bounded over all topics, as a Redis stream bounds it
//! over the topics of a shard: each ring holds at most `streams.replay_limit` events, and all of
//! them together at most `streams.maxlen`, the oldest going first. A topic whose last event went
//! has no entry left, whoever followed it once, so a client cycling through distinct topics
//! leaves behind at most `streams.maxlen` events and never a topic per name it tried.
//!
//! Internal topics (`$presence:…`, [`crate::topics::is_internal`]) are kept within a `streams.maxlen` of their own: a reconnect
//! storm publishes a LEAVE and a JOIN per client, and in one shared budget those pushed out the
//! events the same clients were about to resume from (seen as `replay_window` gaps in a 10k
//! storm).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use serde_json::Value;

use super::fanout::{Fanout, GapCause};
use super::{Bus, BusError, Delivery, Event, EventId};
use crate::config::Streams;
use crate::metrics::Metrics;

pub struct MemoryBus {
    inner: Mutex<Inner>,
    fanout: Arc<Fanout>,
    replay_limit: usize,
    /// Events kept over all topics.
    maxlen: usize,
    metrics: Option<Arc<Metrics>>,
}

struct Inner {
    last_id: EventId,
    /// Topics with events kept; a subscriber alone does not make an entry.
    topics: HashMap<String, Topic>,
    /// What client topics keep, then what internal topics keep ([`class`]).
    kept: [Kept; 2],
}

#[derive(Default)]
struct Kept {
    /// Every kept event of the class, oldest first: the order they are forgotten in. It may also
    /// hold events a ring already pushed out (they go when their turn comes), so its length
    /// bounds what the rings hold.
    events: VecDeque<Arc<Event>>,
    /// The newest event forgotten with the last one of its topic: a subscriber resuming before it
    /// on a topic of the class with no entry may have missed events.
    forgotten: Option<EventId>,
}

/// Which budget a topic's events are kept in: 0 for client topics, 1 for internal ones.
fn class(topic: &str) -> usize {
    usize::from(crate::topics::is_internal(topic))
}

struct Topic {
    ring: VecDeque<Arc<Event>>,
    /// The newest event pushed out of the ring: a subscriber resuming before it has a gap.
    evicted: Option<EventId>,
}

impl MemoryBus {
    /// A bus whose subscribers may each fall `send_queue` events behind before they are told
    /// they missed some, keeping the default `streams.maxlen` events over all topics. It counts
    /// no gaps; see [`MemoryBus::with_metrics`].
    pub fn new(replay_limit: usize, send_queue: usize) -> Self {
        let maxlen = Streams::default().maxlen as usize;
        Self::build(replay_limit, maxlen, send_queue, None)
    }

    /// The bus of `streams`, counting gaps in `bus_gaps` and what it keeps in
    /// `bus_retained_events` and `topics_active`.
    pub fn with_metrics(streams: &Streams, send_queue: usize, metrics: Arc<Metrics>) -> Self {
        let (replay_limit, maxlen) = (streams.replay_limit as usize, streams.maxlen as usize);
        Self::build(replay_limit, maxlen, send_queue, Some(metrics))
    }

    fn build(
        replay_limit: usize,
        maxlen: usize,
        send_queue: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                last_id: EventId { ms: 0, seq: 0 },
                topics: HashMap::new(),
                kept: Default::default(),
            }),
            fanout: Fanout::new(1, send_queue, metrics.clone()),
            replay_limit: replay_limit.max(1),
            maxlen: maxlen.max(1),
            metrics,
        }
    }
}

impl Inner {
    /// Keeps `event` for resuming subscribers, forgetting the oldest events past the bounds.
    fn keep(&mut self, event: &Arc<Event>, replay_limit: usize, maxlen: usize) {
        let kept = &mut self.kept[class(&event.topic)];
        // A topic that comes back after being forgotten cannot vouch for what it had before.
        let forgotten = kept.forgotten;
        let state = self
            .topics
            .entry(event.topic.clone())
            .or_insert_with(|| Topic {
                ring: VecDeque::new(),
                evicted: forgotten,
            });
        state.ring.push_back(event.clone());
        if state.ring.len() > replay_limit {
            state.evicted = state.ring.pop_front().map(|e| e.id);
        }
        kept.events.push_back(event.clone());
        while kept.events.len() > maxlen {
            let Some(oldest) = kept.events.pop_front() else {
                break;
            };
            let Some(state) = self.topics.get_mut(&oldest.topic) else {
                continue;
            };
            // Ids grow across topics, so the oldest kept event is its ring's front, unless the
            // ring pushed it out already.
            if state.ring.front().is_some_and(|e| e.id == oldest.id) {
                state.ring.pop_front();
                state.evicted = Some(oldest.id);
                if state.ring.is_empty() {
                    self.topics.remove(&oldest.topic);
                    kept.forgotten = kept.forgotten.max(Some(oldest.id));
                }
            }
        }
        // Give memory back after a burst of topics, not on every publish.
        let (len, capacity) = (self.topics.len(), self.topics.capacity());
        if capacity > 64 && len * 4 < capacity {
            self.topics.shrink_to(len * 2);
        }
    }
}

impl Bus for MemoryBus {
    fn publish(
        &self,
        topic: String,
        kind: String,
        payload: Value,
    ) -> BoxFuture<'_, Result<Arc<Event>, BusError>> {
        let mut inner = self.inner.lock().expect("bus lock poisoned");
        let now = Utc::now();
        let ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        // Ids only grow, even if the wall clock steps back.
        let id = if ms > inner.last_id.ms {
            EventId { ms, seq: 0 }
        } else {
            EventId {
                ms: inner.last_id.ms,
                seq: inner.last_id.seq + 1,
            }
        };
        inner.last_id = id;
        let event = Arc::new(Event {
            id,
            topic,
            kind,
            payload,
            published_at: now,
        });
        inner.keep(&event, self.replay_limit, self.maxlen);
        if let Some(metrics) = &self.metrics {
            let retained: usize = inner.kept.iter().map(|k| k.events.len()).sum();
            metrics.bus_retained_events.set(retained as i64);
        }
        // Still under the lock, so no subscriber joins between the ring and the delivery.
        self.fanout.deliver(0, &event);
        drop(inner);
        Box::pin(async move { Ok(event) })
    }

    fn subscribe(
        &self,
        topic: String,
        after: Option<EventId>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Delivery>, BusError>> {
        let inner = self.inner.lock().expect("bus lock poisoned");
        if let Some(after) = after {
            let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
            if after.unknown(inner.last_id, now_ms) {
                return Box::pin(async move { Err(BusError::UnknownAfter(after)) });
            }
        }
        let member = self.fanout.join(0, &topic);
        let mut replay = Vec::new();
        let mut last = after;
        if let Some(after) = after {
            let state = inner.topics.get(&topic);
            let forgotten = inner.kept[class(&topic)].forgotten;
            let evicted = state.map_or(forgotten, |state| state.evicted);
            if evicted.is_some_and(|evicted| evicted > after) {
                if let Some(metrics) = &self.metrics {
                    let cause = GapCause::ReplayWindow.label();
                    metrics.bus_gaps.with_label_values(&[cause]).inc();
                }
                replay.push(Delivery::Gap { after: Some(after) });
            }
            let ring = state.map(|state| state.ring.iter()).into_iter().flatten();
            for event in ring.filter(|e| e.id > after) {
                last = Some(event.id);
                replay.push(Delivery::Event(event.clone()));
            }
        }
        drop(inner);
        // Joined under the lock that orders publishes, so live events all follow the replay.
        let live = member.live(None, last);
        Box::pin(async move { Ok(stream::iter(replay).chain(live).boxed()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(items: &[Delivery]) -> Vec<String> {
        items
            .iter()
            .map(|d| match d {
                Delivery::Event(e) => e.payload.to_string(),
                Delivery::Gap { .. } => "GAP".into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_resuming_subscriber_gets_missed_events_then_live_ones_exactly_once() {
        let bus = MemoryBus::new(10, 16);
        let mut seen = Vec::new();
        for i in 0..3 {
            seen.push(bus.publish("t".into(), "k".into(), i.into()).await.unwrap());
        }
        let mut sub = bus.subscribe("t".into(), Some(seen[0].id)).await.unwrap();
        bus.publish("t".into(), "k".into(), 3.into()).await.unwrap();
        let got: Vec<Delivery> = sub.by_ref().take(3).collect().await;
        assert_eq!(ids(&got), ["1", "2", "3"]);
    }

    #[tokio::test]
    async fn resuming_from_before_the_replay_window_reports_a_gap() {
        let bus = MemoryBus::new(2, 16);
        let first = bus.publish("t".into(), "k".into(), 0.into()).await.unwrap();
        for i in 1..5 {
            bus.publish("t".into(), "k".into(), i.into()).await.unwrap();
        }
        let sub = bus.subscribe("t".into(), Some(first.id)).await.unwrap();
        let got: Vec<Delivery> = sub.take(3).collect().await;
        assert_eq!(ids(&got), ["GAP", "3", "4"]);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_one_gap_and_others_get_everything() {
        let metrics = Arc::new(Metrics::new("test"));
        let bus = MemoryBus::build(10, 10_000, 2, Some(metrics.clone()));
        let mut slow = bus.subscribe("t".into(), None).await.unwrap();
        let mut fast = bus.subscribe("t".into(), None).await.unwrap();
        for i in 0..4 {
            bus.publish("t".into(), "k".into(), i.into()).await.unwrap();
            let got: Vec<Delivery> = fast.by_ref().take(1).collect().await;
            assert_eq!(ids(&got), [i.to_string()]);
        }
        let got: Vec<Delivery> = slow.by_ref().take(3).collect().await;
        assert_eq!(ids(&got), ["0", "1", "GAP"]);
        bus.publish("t".into(), "k".into(), 4.into()).await.unwrap();
        let got: Vec<Delivery> = slow.by_ref().take(1).collect().await;
        assert_eq!(ids(&got), ["4"]);
        assert_eq!(metrics.bus_gaps.with_label_values(&["lagged"]).get(), 1);
    }

    #[tokio::test]
    async fn following_a_quiet_topic_leaves_nothing_behind_once_the_subscriber_goes() {
        let bus = MemoryBus::new(10, 16);
        let sub = bus
            .subscribe("quiet".into(), Some(EventId::default()))
            .await;
        assert!(bus.fanout.follows(0, "quiet"));
        drop(sub);
        assert!(!bus.fanout.follows(0, "quiet"));
        assert!(bus.inner.lock().unwrap().topics.is_empty());
    }

    #[tokio::test]
    async fn presence_transitions_cannot_push_client_events_out_of_the_replay() {
        let metrics = Arc::new(Metrics::new("test"));
        let bus = MemoryBus::build(10, 3, 16, Some(metrics.clone()));
        let first = bus.publish("a".into(), "k".into(), 0.into()).await.unwrap();
        bus.publish("a".into(), "k".into(), 1.into()).await.unwrap();
        // A reconnect storm's LEAVEs and JOINs, far past `maxlen`.
        for n in 0..100 {
            bus.publish(format!("$presence:t{n}"), "join".into(), n.into())
                .await
                .unwrap();
        }
        assert_eq!(metrics.bus_retained_events.get(), 2 + 3);
        let sub = bus.subscribe("a".into(), Some(first.id)).await.unwrap();
        let got: Vec<Delivery> = sub.take(1).collect().await;
        assert_eq!(ids(&got), ["1"]);
        assert_eq!(
            metrics.bus_gaps.with_label_values(&["replay_window"]).get(),
            0
        );
    }

    #[tokio::test]
    async fn what_is_kept_is_bounded_over_all_topics_and_a_forgotten_topic_resumes_with_a_gap() {
        let metrics = Arc::new(Metrics::new("test"));
        let bus = MemoryBus::build(10, 3, 16, Some(metrics.clone()));
        let first = bus.publish("a".into(), "k".into(), 0.into()).await.unwrap();
        for n in 0..100 {
            bus.publish(format!("t{n}"), "k".into(), n.into())
                .await
                .unwrap();
        }
        assert_eq!(metrics.bus_retained_events.get(), 3);
        assert_eq!(bus.inner.lock().unwrap().topics.len(), 3);
        let sub = bus.subscribe("a".into(), Some(first.id)).await.unwrap();
        bus.publish("a".into(), "k".into(), "live".into())
            .await
            .unwrap();
        let got: Vec<Delivery> = sub.take(2).collect().await;
        assert_eq!(ids(&got), ["GAP", "\"live\""]);
        // Events of a kept topic still replay after others were forgotten.
        let sub = bus.subscribe("t98".into(), Some(first.id)).await.unwrap();
        let got: Vec<Delivery> = sub.take(2).collect().await;
        assert_eq!(ids(&got), ["GAP", "98"]);
    }
}

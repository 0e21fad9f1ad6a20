//! The in-process bus: one broadcast channel and one replay ring per topic.
//!
//! Publishing appends to the ring and broadcasts under the same lock a subscriber takes to read the
//! ring and join the channel, so a subscriber sees each event exactly once: either in its replay or
//! live, never both and never neither.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use serde_json::Value;
use tokio::sync::broadcast;

use super::{Bus, BusError, Delivery, Event, EventId};

pub struct MemoryBus {
    inner: Mutex<Inner>,
    replay_limit: usize,
    /// Events a live subscriber may fall behind by before it is told it missed some.
    channel_capacity: usize,
}

struct Inner {
    last_id: EventId,
    topics: HashMap<String, Topic>,
}

struct Topic {
    ring: VecDeque<Arc<Event>>,
    /// The newest event pushed out of the ring: a subscriber resuming before it has a gap.
    evicted: Option<EventId>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl MemoryBus {
    pub fn new(replay_limit: usize, channel_capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                last_id: EventId { ms: 0, seq: 0 },
                topics: HashMap::new(),
            }),
            replay_limit: replay_limit.max(1),
            channel_capacity: channel_capacity.max(1),
        }
    }

    fn topic<'a>(&self, inner: &'a mut Inner, name: &str) -> &'a mut Topic {
        inner
            .topics
            .entry(name.to_string())
            .or_insert_with(|| Topic {
                ring: VecDeque::new(),
                evicted: None,
                tx: broadcast::channel(self.channel_capacity).0,
            })
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
            topic: topic.clone(),
            kind,
            payload,
            published_at: now,
        });
        let replay_limit = self.replay_limit;
        let state = self.topic(&mut inner, &topic);
        state.ring.push_back(event.clone());
        if state.ring.len() > replay_limit {
            state.evicted = state.ring.pop_front().map(|e| e.id);
        }
        // No receiver is fine: the event still waits in the ring for resuming subscribers.
        let _ = state.tx.send(event.clone());
        Box::pin(async move { Ok(event) })
    }

    fn subscribe(
        &self,
        topic: String,
        after: Option<EventId>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Delivery>, BusError>> {
        let mut inner = self.inner.lock().expect("bus lock poisoned");
        let state = self.topic(&mut inner, &topic);
        let rx = state.tx.subscribe();
        let mut replay = Vec::new();
        if let Some(after) = after {
            if state.evicted.is_some_and(|evicted| evicted > after) {
                replay.push(Delivery::Gap { after: Some(after) });
            }
            replay.extend(
                state
                    .ring
                    .iter()
                    .filter(|e| e.id > after)
                    .map(|e| Delivery::Event(e.clone())),
            );
        }
        drop(inner);
        let live = stream::unfold((rx, after), |(mut rx, last)| async move {
            match rx.recv().await {
                Ok(event) => {
                    let last = Some(event.id);
                    Some((Delivery::Event(event), (rx, last)))
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    Some((Delivery::Gap { after: last }, (rx, last)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
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
}

//! Local fan-out: this instance's subscribers by topic, one map per shard, so a reader touches
//! only its own shard's lock. A topic has an entry only while someone here follows it.
//!
//! Readers hand entries over with `broadcast::Sender::send`, which never waits: a subscriber that
//! falls more than `connections.send_queue` events behind gets a `GAP` instead of slowing the
//! reader (and everyone else on the shard).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::Stream;
use futures_util::stream;
use tokio::sync::{broadcast, watch};

use crate::bus::{Delivery, Event, EventId};
use crate::metrics::Metrics;

/// What a reader sends a topic's subscribers.
#[derive(Clone, Debug)]
pub enum Live {
    Event(Arc<Event>),
    Gap(GapCause),
}

/// Why events were missed; the `cause` label of `bus_gaps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GapCause {
    /// A resume from further back than the replay covers.
    ReplayWindow,
    /// A subscriber, or a reader, fell behind and events were dropped or trimmed.
    Lagged,
    /// Redis lost the stream.
    RedisReset,
}

impl GapCause {
    pub fn label(self) -> &'static str {
        match self {
            GapCause::ReplayWindow => "replay_window",
            GapCause::Lagged => "lagged",
            GapCause::RedisReset => "redis_reset",
        }
    }
}

struct Shard {
    followers: Mutex<HashMap<String, broadcast::Sender<Live>>>,
    /// True once the shard's reader knows its place in the stream; before, a new subscriber
    /// could miss what is published while the reader connects.
    positioned: watch::Sender<bool>,
}

pub struct Fanout {
    shards: Vec<Shard>,
    capacity: usize,
}

impl Fanout {
    pub fn new(shards: usize, capacity: usize) -> Arc<Self> {
        let shards = (0..shards.max(1))
            .map(|_| Shard {
                followers: Mutex::default(),
                positioned: watch::Sender::new(false),
            })
            .collect();
        Arc::new(Self {
            shards,
            capacity: capacity.max(1),
        })
    }

    fn followers(&self, shard: usize) -> MutexGuard<'_, HashMap<String, broadcast::Sender<Live>>> {
        // Nothing panics while holding the lock; recovering keeps a Drop from ever panicking.
        self.shards[shard]
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn mark_positioned(&self, shard: usize) {
        self.shards[shard].positioned.send_replace(true);
    }

    pub async fn positioned(&self, shard: usize) {
        let mut positioned = self.shards[shard].positioned.subscribe();
        // The sender lives as long as `self`, so this only ends once positioned.
        let _ = positioned.wait_for(|p| *p).await;
    }

    /// Follows `topic` until the returned member is dropped.
    pub fn join(self: &Arc<Self>, shard: usize, topic: &str) -> Member {
        let rx = self
            .followers(shard)
            .entry(topic.to_string())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe();
        Member {
            fanout: self.clone(),
            shard,
            topic: topic.to_string(),
            rx: Some(rx),
        }
    }

    /// Where to send `topic`'s events, if anyone here follows it.
    pub fn follower(&self, shard: usize, topic: &str) -> Option<broadcast::Sender<Live>> {
        self.followers(shard).get(topic).cloned()
    }

    /// Tells every subscriber of the shard's topics that events were missed.
    pub fn gap(&self, shard: usize, cause: GapCause) {
        for tx in self.followers(shard).values() {
            let _ = tx.send(Live::Gap(cause));
        }
    }
}

/// One subscriber's place in the fan-out; dropping it leaves, and removes the topic's entry
/// when it was the last one.
pub struct Member {
    fanout: Arc<Fanout>,
    shard: usize,
    topic: String,
    rx: Option<broadcast::Receiver<Live>>,
}

impl Drop for Member {
    fn drop(&mut self) {
        // The receiver goes first so the count below no longer includes it; joins happen under
        // the same lock, so a topic someone just joined is never removed.
        drop(self.rx.take());
        let mut followers = self.fanout.followers(self.shard);
        if followers
            .get(&self.topic)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            followers.remove(&self.topic);
            // Give memory back after a burst of topics, not on every leave.
            let len = followers.len();
            if followers.capacity() > 64 && len * 4 < followers.capacity() {
                followers.shrink_to(len * 2);
            }
        }
    }
}

impl Member {
    /// Live deliveries. Events up to `seam` were replayed already and are dropped; `last` is the
    /// newest event the subscriber has, which a `Gap` reports as its `after`.
    pub fn live(
        self,
        seam: Option<EventId>,
        last: Option<EventId>,
        metrics: Arc<Metrics>,
    ) -> impl Stream<Item = Delivery> + Send + 'static {
        stream::unfold(
            (self, seam, last, metrics),
            |(mut member, mut seam, mut last, metrics)| async move {
                loop {
                    let cause = match member.rx.as_mut()?.recv().await {
                        Ok(Live::Event(event)) => {
                            if seam.is_some_and(|seam| event.id <= seam) {
                                continue;
                            }
                            // Later events of the shard all come after this one.
                            seam = None;
                            last = Some(event.id);
                            return Some((Delivery::Event(event), (member, seam, last, metrics)));
                        }
                        Ok(Live::Gap(cause)) => {
                            if cause == GapCause::RedisReset {
                                // The new stream's ids need not be above the old ones.
                                seam = None;
                            }
                            cause
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => GapCause::Lagged,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    metrics.bus_gaps.with_label_values(&[cause.label()]).inc();
                    return Some((Delivery::Gap { after: last }, (member, seam, last, metrics)));
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use futures_util::StreamExt;
    use serde_json::Value;

    fn event(ms: u64) -> Live {
        Live::Event(Arc::new(Event {
            id: EventId { ms, seq: 0 },
            topic: "t".into(),
            kind: "k".into(),
            payload: Value::Null,
            published_at: Utc::now(),
        }))
    }

    fn shown(delivery: Delivery) -> String {
        match delivery {
            Delivery::Event(e) => e.id.ms.to_string(),
            Delivery::Gap { after } => format!("GAP after {after:?}"),
        }
    }

    #[test]
    fn a_topic_is_forgotten_when_its_last_subscriber_leaves() {
        let fanout = Fanout::new(2, 4);
        let first = fanout.join(1, "t");
        let second = fanout.join(1, "t");
        drop(first);
        assert!(fanout.follower(1, "t").is_some());
        drop(second);
        assert!(fanout.follower(1, "t").is_none());
        let many: Vec<Member> = (0..1000).map(|n| fanout.join(0, &n.to_string())).collect();
        drop(many);
        assert!(fanout.followers(0).is_empty());
        assert!(fanout.followers(0).capacity() <= 64 * 2);
    }

    #[tokio::test]
    async fn replayed_events_are_dropped_at_the_seam_and_gaps_reach_every_topic_of_the_shard() {
        let fanout = Fanout::new(1, 8);
        let metrics = Arc::new(Metrics::new("test"));
        let mut live = Box::pin(fanout.join(0, "t").live(
            Some(EventId { ms: 2, seq: 0 }),
            Some(EventId { ms: 2, seq: 0 }),
            metrics.clone(),
        ));
        let _other = fanout.join(0, "u");
        let tx = fanout.follower(0, "t").unwrap();
        for ms in [1, 2, 3] {
            tx.send(event(ms)).unwrap();
        }
        fanout.gap(0, GapCause::RedisReset);
        tx.send(event(1)).unwrap();
        let got: Vec<String> = live.by_ref().take(3).map(shown).collect().await;
        assert_eq!(got, ["3", "GAP after Some(EventId { ms: 3, seq: 0 })", "1"]);
        assert_eq!(
            fanout.follower(0, "u").unwrap().len(),
            1,
            "u got the gap too"
        );
        let counted = metrics.bus_gaps.with_label_values(&["redis_reset"]).get();
        assert_eq!(counted, 1);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_a_gap_not_a_stalled_reader() {
        let fanout = Fanout::new(1, 2);
        let live = fanout
            .join(0, "t")
            .live(None, None, Arc::new(Metrics::new("test")));
        let tx = fanout.follower(0, "t").unwrap();
        for ms in 1..=5 {
            tx.send(event(ms)).unwrap();
        }
        let got: Vec<String> = live.take(3).map(shown).collect().await;
        assert_eq!(got, ["GAP after None", "4", "5"]);
    }
}

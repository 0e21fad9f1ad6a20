//! Local fan-out, shared by both buses: this instance's subscribers by topic, one map per shard,
//! so a reader touches only its own shard's lock. A topic has an entry only while someone here
//! follows it.
//!
//! Every subscriber has a queue of its own, bounded by `connections.send_queue`. tokio's mpsc
//! allocates slots in blocks of 32 as items wait, so an idle subscription costs about 1.3 KiB
//! whatever the bound, where a broadcast channel per topic allocated all its slots up front
//! (32 KiB per topic at the default 1024: 3 GiB for 100k followed topics; `cargo bench --bench
//! fanout`). The price is paid by the writer: a delivery is one `try_send` per follower (about
//! 40 ns) instead of one per topic.
//!
//! Delivery never waits and nothing awaits under a shard's lock: a subscriber whose queue is full
//! loses events instead of slowing the reader (and everyone else on the shard), and gets one
//! `GAP` right after the last event it got (see [`Follower`]). The lock is taken by the shard's one writer (a Redis reader,
//! or the in-process bus's publish) and by subscribers joining and leaving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::bus::Event;
use crate::metrics::Metrics;
use crate::sync::lock;

mod live;

/// What a subscriber's queue carries.
#[derive(Clone, Debug)]
pub enum Live {
    Event(Arc<Event>),
    Gap(GapCause),
}

/// Why events were missed; the `cause` label of `bus_gaps`. Ordered by weight: when two gaps
/// merge into one, the heavier cause wins, and a reset must survive because it also tells the
/// subscriber that ids start over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

/// One subscriber's queue, as the shard's writer sees it; only touched under the shard's lock.
///
/// The queue holds one item more than `connections.send_queue`, and events never take that last
/// slot: when an event finds no other room, the gap reporting its loss takes it instead, right
/// after the last event the subscriber will get, so the subscriber learns of the loss as soon as
/// it has read that far. Later events are dropped until there is room again; the queued gap
/// covers them. The queue has exactly one sender (this entry), so room seen here can only grow
/// before the send.
struct Follower {
    id: u64,
    tx: mpsc::Sender<Live>,
    /// The newest queued item is a gap, so an event dropped now is already reported.
    gap_last: bool,
    /// A gap that found the queue full. Only a gap takes the last slot, so this one is owed right
    /// behind another: it goes out before anything else, and the subscriber takes the two as one.
    owed: Option<GapCause>,
}

impl Follower {
    /// Queues `item` (or the gap standing for it) without waiting.
    fn offer(&mut self, item: Live) {
        let item = match (self.owed.take(), item) {
            (Some(owed), Live::Gap(cause)) => Live::Gap(owed.max(cause)),
            (Some(owed), event) => {
                if self.tx.capacity() == 0 {
                    // Still full: the gap queued last covers this event too.
                    self.owed = Some(owed);
                    return;
                }
                self.send(Live::Gap(owed));
                event
            }
            (None, item) => item,
        };
        match item {
            Live::Gap(cause) if self.tx.capacity() == 0 => self.owed = Some(cause),
            Live::Gap(_) => self.send(item),
            Live::Event(_) if self.tx.capacity() >= 2 => self.send(item),
            // Lost, and already reported by the gap queued last.
            Live::Event(_) if self.gap_last => {}
            // Lost: the slot kept for it takes the gap.
            Live::Event(_) => self.send(Live::Gap(GapCause::Lagged)),
        }
    }

    /// Sends into room checked by the caller.
    fn send(&mut self, item: Live) {
        self.gap_last = matches!(item, Live::Gap(_));
        // Only fails once the subscriber is gone, and its member then removes this entry.
        let _ = self.tx.try_send(item);
    }
}

#[derive(Default)]
struct Shard {
    topics: HashMap<String, Vec<Follower>>,
    /// Names followers, so a leaving member finds its own entry.
    next_id: u64,
}

pub struct Fanout {
    shards: Vec<Mutex<Shard>>,
    /// Items one subscriber's queue holds: `connections.send_queue` events and a gap.
    capacity: usize,
    /// Where gaps are counted; `None` for a bus built without metrics.
    metrics: Option<Arc<Metrics>>,
}

impl Fanout {
    pub fn new(shards: usize, capacity: usize, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            // The slot kept for a gap comes on top.
            capacity: capacity.max(1) + 1,
            metrics,
        })
    }

    fn shard(&self, shard: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard])
    }

    /// Follows `topic` until the returned member is dropped.
    pub fn join(self: &Arc<Self>, shard: usize, topic: &str) -> Member {
        let (tx, rx) = mpsc::channel(self.capacity);
        let mut state = self.shard(shard);
        let id = state.next_id;
        state.next_id += 1;
        let followers = state.topics.entry(topic.to_string()).or_insert_with(|| {
            if let Some(metrics) = &self.metrics {
                metrics.topics_active.inc();
            }
            // Most topics have a single follower here.
            Vec::with_capacity(1)
        });
        followers.push(Follower {
            id,
            tx,
            gap_last: false,
            owed: None,
        });
        Member {
            fanout: self.clone(),
            shard,
            topic: topic.to_string(),
            id,
            rx,
        }
    }

    /// Whether anyone here follows `topic`; a reader skips parsing events nobody wants.
    pub fn follows(&self, shard: usize, topic: &str) -> bool {
        self.shard(shard).topics.contains_key(topic)
    }

    /// Queues `event` for every follower of its topic.
    pub fn deliver(&self, shard: usize, event: &Arc<Event>) {
        if let Some(followers) = self.shard(shard).topics.get_mut(&event.topic) {
            for follower in followers {
                follower.offer(Live::Event(event.clone()));
            }
        }
    }

    /// Tells every follower of the shard's topics that events were missed.
    pub fn gap(&self, shard: usize, cause: GapCause) {
        for follower in self.shard(shard).topics.values_mut().flatten() {
            follower.offer(Live::Gap(cause));
        }
    }
}

/// One subscriber's place in the fan-out; dropping it leaves, and removes the topic's entry
/// when it was the last one.
pub struct Member {
    fanout: Arc<Fanout>,
    shard: usize,
    topic: String,
    id: u64,
    rx: mpsc::Receiver<Live>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = self.fanout.shard(self.shard);
        let Some(followers) = state.topics.get_mut(&self.topic) else {
            return;
        };
        followers.retain(|f| f.id != self.id);
        if followers.is_empty() {
            state.topics.remove(&self.topic);
            if let Some(metrics) = &self.fanout.metrics {
                metrics.topics_active.dec();
            }
            // Give memory back after a burst of topics, not on every leave.
            let (len, capacity) = (state.topics.len(), state.topics.capacity());
            if capacity > 64 && len * 4 < capacity {
                state.topics.shrink_to(len * 2);
            }
        } else if followers.capacity() > 8 && followers.len() * 4 < followers.capacity() {
            // The same for a crowd leaving a busy topic.
            followers.shrink_to(followers.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_forgotten_when_its_last_subscriber_leaves() {
        let fanout = Fanout::new(2, 4, None);
        let first = fanout.join(1, "t");
        let second = fanout.join(1, "t");
        drop(first);
        assert!(fanout.follows(1, "t"));
        assert_eq!(fanout.shard(1).topics["t"].len(), 1);
        drop(second);
        assert!(!fanout.follows(1, "t"));
        let many: Vec<Member> = (0..1000).map(|n| fanout.join(0, &n.to_string())).collect();
        drop(many);
        assert!(fanout.shard(0).topics.is_empty());
        assert!(fanout.shard(0).topics.capacity() <= 64 * 2);
        let crowd: Vec<Member> = (0..1000).map(|_| fanout.join(0, "busy")).collect();
        let stays = fanout.join(0, "busy");
        drop(crowd);
        assert!(fanout.shard(0).topics["busy"].capacity() <= 8 * 2);
        drop(stays);
    }
}

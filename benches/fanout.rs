//! Cost of following topics through the bus's local fan-out, before and after per-subscriber
//! queues: memory held by idle followed topics (counted by this binary's global allocator) and
//! the rate at which one topic's events reach 1,000 subscribers. The baseline is the previous
//! in-process bus (a broadcast channel per topic, kept below as it was), measured in the same
//! run. Run with `cargo bench --bench fanout`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use palisade::bus::{Bus, BusError, Delivery, Event, EventId, MemoryBus};
use serde_json::Value;
use tokio::sync::broadcast;

/// Bytes currently allocated by the whole process.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `connections.send_queue` and `streams.replay_limit` at their defaults.
const SEND_QUEUE: usize = 1024;
const REPLAY_LIMIT: usize = 1000;
const TOPICS: usize = 100_000;
/// The baseline would need ~4 GiB for all of them; it is measured on a tenth and scaled.
const BASELINE_TOPICS: usize = 10_000;
const FOLLOWERS: usize = 1_000;
/// Published between drains, well below the queue so nobody lags.
const BATCH: usize = 64;
const EVENTS: usize = 2_048;
const ROUNDS: usize = 5;

/// The in-process bus before this change: one broadcast channel (all slots allocated up front)
/// and one replay ring per topic.
struct BroadcastBus {
    inner: Mutex<(EventId, HashMap<String, BroadcastTopic>)>,
    capacity: usize,
}

struct BroadcastTopic {
    ring: VecDeque<Arc<Event>>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl BroadcastBus {
    fn topic<'a>(
        &self,
        topics: &'a mut HashMap<String, BroadcastTopic>,
        name: &str,
    ) -> &'a mut BroadcastTopic {
        topics
            .entry(name.to_string())
            .or_insert_with(|| BroadcastTopic {
                ring: VecDeque::new(),
                tx: broadcast::channel(self.capacity).0,
            })
    }
}

impl Bus for BroadcastBus {
    fn publish(
        &self,
        topic: String,
        kind: String,
        payload: Value,
    ) -> BoxFuture<'_, Result<Arc<Event>, BusError>> {
        let mut inner = self.inner.lock().unwrap();
        let (last, topics) = &mut *inner;
        *last = EventId {
            ms: last.ms,
            seq: last.seq + 1,
        };
        let event = Arc::new(Event {
            id: *last,
            topic: topic.clone(),
            kind,
            payload,
            published_at: Utc::now(),
        });
        let state = self.topic(topics, &topic);
        state.ring.push_back(event.clone());
        if state.ring.len() > REPLAY_LIMIT {
            state.ring.pop_front();
        }
        let _ = state.tx.send(event.clone());
        Box::pin(async move { Ok(event) })
    }

    fn subscribe(
        &self,
        topic: String,
        after: Option<EventId>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Delivery>, BusError>> {
        let mut inner = self.inner.lock().unwrap();
        let rx = self.topic(&mut inner.1, &topic).tx.subscribe();
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
        Box::pin(async move { Ok(live.boxed()) })
    }
}

fn baseline() -> BroadcastBus {
    BroadcastBus {
        inner: Mutex::default(),
        capacity: SEND_QUEUE,
    }
}

fn current() -> MemoryBus {
    MemoryBus::new(REPLAY_LIMIT, SEND_QUEUE)
}

/// Bytes per followed topic while `topics` topics each have one idle subscriber.
async fn bytes_per_topic(bus: impl Bus, topics: usize) -> f64 {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut subscriptions = Vec::with_capacity(topics);
    for n in 0..topics {
        subscriptions.push(bus.subscribe(format!("topic:{n}"), None).await.unwrap());
    }
    let held = LIVE_BYTES.load(Ordering::Relaxed) - before;
    drop(subscriptions);
    drop(bus);
    held as f64 / topics as f64
}

/// Events a second reaching each of `FOLLOWERS` subscribers of one topic, and the publishing
/// side's share of the time (a shard's reader does that part), best of `ROUNDS`.
async fn deliveries_per_second(bus: impl Bus) -> (f64, f64) {
    let (mut best, mut publishing) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let mut followers = Vec::with_capacity(FOLLOWERS);
        for _ in 0..FOLLOWERS {
            followers.push(bus.subscribe("busy".into(), None).await.unwrap());
        }
        let mut published = Duration::ZERO;
        let started = Instant::now();
        for _ in 0..EVENTS / BATCH {
            let publishing = Instant::now();
            for n in 0..BATCH {
                bus.publish("busy".into(), "k".into(), n.into())
                    .await
                    .unwrap();
            }
            published += publishing.elapsed();
            for follower in &mut followers {
                for _ in 0..BATCH {
                    let delivery = follower.next().await;
                    assert!(matches!(delivery, Some(Delivery::Event(_))));
                }
            }
        }
        best = best.min(started.elapsed());
        publishing = publishing.min(published);
    }
    let deliveries = (EVENTS * FOLLOWERS) as f64;
    (
        deliveries / best.as_secs_f64(),
        publishing.as_secs_f64() * 1e9 / deliveries,
    )
}

/// The same with every subscriber drained by a task of its own, as connections are: the wake-ups
/// both designs need are part of the figure.
async fn deliveries_per_second_in_tasks(bus: impl Bus) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let received = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..FOLLOWERS {
            let follower = bus.subscribe("busy".into(), None).await.unwrap();
            let received = received.clone();
            // Each task ends after the last event; a gap would mean it fell behind the queue.
            tasks.spawn(follower.take(EVENTS).for_each(move |delivery| {
                assert!(matches!(delivery, Delivery::Event(_)));
                received.fetch_add(1, Ordering::Relaxed);
                std::future::ready(())
            }));
        }
        let started = Instant::now();
        for batch in 1..=EVENTS / BATCH {
            for n in 0..BATCH {
                bus.publish("busy".into(), "k".into(), n.into())
                    .await
                    .unwrap();
            }
            // One thread: the subscriber tasks drain the batch while this one yields.
            while received.load(Ordering::Relaxed) < batch * BATCH * FOLLOWERS {
                tokio::task::yield_now().await;
            }
        }
        best = best.min(started.elapsed());
        tasks.join_all().await;
    }
    (EVENTS * FOLLOWERS) as f64 / best.as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!("send_queue {SEND_QUEUE}, replay_limit {REPLAY_LIMIT}");

    let old = bytes_per_topic(baseline(), BASELINE_TOPICS).await;
    let new = bytes_per_topic(current(), TOPICS).await;
    let mib = |per_topic: f64| per_topic * TOPICS as f64 / (1024.0 * 1024.0);
    println!("\nmemory of {TOPICS} followed topics, one idle subscriber each:");
    println!(
        "  broadcast per topic (measured on {BASELINE_TOPICS}): {old:>9.0} B/topic  {:>8.1} MiB",
        mib(old)
    );
    println!(
        "  queue per subscriber:                    {new:>9.0} B/topic  {:>8.1} MiB",
        mib(new)
    );
    println!(
        "  ratio (before / after):                  {:>9.1}x",
        old / new
    );

    println!("\none topic, {FOLLOWERS} subscribers, {EVENTS} events (best of {ROUNDS}):");
    let (old, old_publishing) = deliveries_per_second(baseline()).await;
    let (new, new_publishing) = deliveries_per_second(current()).await;
    println!("  drained in one loop (the fan-out alone):");
    println!(
        "    broadcast per topic:    {:>8.2} M deliveries/s, publishing {old_publishing:>6.1} ns/delivery",
        old / 1e6
    );
    println!(
        "    queue per subscriber:   {:>8.2} M deliveries/s, publishing {new_publishing:>6.1} ns/delivery",
        new / 1e6
    );
    println!("    ratio (after / before): {:>8.2}x", new / old);
    let old = deliveries_per_second_in_tasks(baseline()).await;
    let new = deliveries_per_second_in_tasks(current()).await;
    println!("  one task per subscriber (with wake-ups, as in the server):");
    println!(
        "    broadcast per topic:    {:>8.2} M deliveries/s",
        old / 1e6
    );
    println!(
        "    queue per subscriber:   {:>8.2} M deliveries/s",
        new / 1e6
    );
    println!("    ratio (after / before): {:>8.2}x", new / old);
}

//! Fan-out workloads: one hot topic (`fanout`), many topics at mixed rates (`topics`), and two
//! instances through Redis (`cluster`). Each counts deliveries against what was expected, so lost
//! events show, and records publish→deliver latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Publishing, histogram, populate, publish};
use crate::client::Tally;
use crate::target::{Kind, Redis, Server};

/// How long deliveries may stop arriving before the rest count as lost. Measured from the last
/// one, not from the last publish: a server that answers publishes faster than the load
/// generator reads has its backlog in flight, not lost.
const DRAIN: Duration = Duration::from_secs(5);

/// The longest wait for deliveries after the last publish was answered, however slowly they come.
const DRAIN_CAP: Duration = Duration::from_secs(120);

/// Subscriptions are set up on the server after `subscribe` is sent: time for the last ones.
const SUBSCRIBED: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct Delivery {
    pub scenario: String,
    pub kind: String,
    pub instances: usize,
    pub subscribers: usize,
    pub events: usize,
    /// Publish rate asked for; `None` is as fast as the server answers.
    pub rate: Option<u32>,
    pub deliveries: u64,
    pub lost: u64,
    pub deliveries_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub closed: u64,
    pub server_cpu_seconds: f64,
    pub rss: u64,
}

/// Where subscribers and events go.
pub struct Shape<'a> {
    pub name: &'a str,
    pub subscribers: usize,
    pub subscriber_topic: &'a (dyn Fn(usize) -> String + Sync),
    pub publishing: Publishing<'a>,
}

/// Runs `shape` against `servers` (subscribers spread round-robin, publishing on the first).
pub async fn run(kind: Kind, servers: &[Server], shape: &Shape<'_>) -> anyhow::Result<Delivery> {
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut receivers = tokio::task::JoinSet::new();
    let mut per_topic: HashMap<String, u64> = HashMap::new();
    for n in 0..shape.subscribers {
        *per_topic.entry((shape.subscriber_topic)(n)).or_default() += 1;
    }
    let failed = populate(
        servers,
        0..shape.subscribers,
        shape.subscriber_topic,
        &tally,
        &stop,
        &mut receivers,
    )
    .await;
    let expected: u64 = (0..shape.publishing.events)
        .map(|n| {
            per_topic
                .get(&(shape.publishing.topic)(n))
                .copied()
                .unwrap_or(0)
        })
        .sum::<u64>()
        .saturating_sub(failed as u64 * shape.publishing.events as u64);
    tokio::time::sleep(SUBSCRIBED).await;
    let cpu: Duration = servers.iter().map(Server::cpu).sum();
    let started = Instant::now();
    publish(&servers[0], &shape.publishing).await?;
    let last_change = super::drain(&tally.deliveries, expected, DRAIN, DRAIN_CAP).await;
    let deliveries = tally.deliveries.load(Ordering::Relaxed);
    let elapsed = last_change.duration_since(started);
    let server_cpu_seconds =
        (servers.iter().map(Server::cpu).sum::<Duration>() - cpu).as_secs_f64();
    let rss = servers.iter().map(Server::rss).sum();
    stop.cancel();
    let mut latency = histogram();
    while let Some(done) = receivers.join_next().await {
        if let Ok(Some(h)) = done {
            latency.add(h).context("merging histograms")?;
        }
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(Delivery {
        scenario: shape.name.to_string(),
        kind: format!("{kind:?}"),
        instances: servers.len(),
        subscribers: shape.subscribers - failed,
        events: shape.publishing.events,
        rate: shape.publishing.rate,
        deliveries,
        lost: expected.saturating_sub(deliveries),
        deliveries_per_second: deliveries as f64 / elapsed.as_secs_f64().max(1e-6),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: latency.max() as f64 / 1000.0,
        errors: tally.errors.load(Ordering::Relaxed),
        closed: tally.closed.load(Ordering::Relaxed),
        server_cpu_seconds,
        rss,
    })
}

fn hot(_: usize) -> String {
    "bench:fanout".into()
}

/// Every subscriber on one topic, and every event published there.
fn hot_topic(name: &str, subscribers: usize, events: usize, rate: Option<u32>) -> Shape<'_> {
    Shape {
        name,
        subscribers,
        subscriber_topic: &hot,
        publishing: Publishing {
            events,
            rate,
            topic: &hot,
        },
    }
}

/// Every subscriber on one topic.
pub async fn fanout(
    kind: Kind,
    subscribers: usize,
    events: usize,
    rate: Option<u32>,
) -> anyhow::Result<Delivery> {
    let server = Server::start(kind, None).await?;
    let shape = hot_topic("fanout", subscribers, events, rate);
    run(kind, std::slice::from_ref(&server), &shape).await
}

/// Subscribers spread evenly over `topics` topics; half the events go to the ten hottest, the
/// rest spread over all of them, so rates are mixed.
pub async fn topics(
    kind: Kind,
    subscribers: usize,
    topics: usize,
    events: usize,
    rate: Option<u32>,
) -> anyhow::Result<Delivery> {
    let server = Server::start(kind, None).await?;
    let subscriber_topic = move |n: usize| format!("bench:t{}", n % topics);
    let event_topic = move |k: usize| {
        let index = if k.is_multiple_of(2) {
            (k / 2) % 10.min(topics)
        } else {
            (k / 2).wrapping_mul(7919) % topics
        };
        format!("bench:t{index}")
    };
    let shape = Shape {
        name: "topics",
        subscribers,
        subscriber_topic: &subscriber_topic,
        publishing: Publishing {
            events,
            rate,
            topic: &event_topic,
        },
    };
    run(kind, std::slice::from_ref(&server), &shape).await
}

/// The same hot topic on one Palisade instance with the Redis bus, then on two instances sharing
/// it (subscribers alternating, publishing on the first): what the second hop costs.
pub async fn cluster(
    redis_url: &str,
    subscribers: usize,
    events: usize,
    rate: Option<u32>,
) -> anyhow::Result<[Delivery; 2]> {
    let shape = |name| hot_topic(name, subscribers, events, rate);
    let redis = |n: u32| Redis {
        url: redis_url.to_string(),
        prefix: format!("palisade-bench-{}-{n}", std::process::id()),
    };
    let one = {
        let redis = redis(1);
        let server = Server::start(Kind::Palisade, Some(&redis)).await?;
        run(
            Kind::Palisade,
            std::slice::from_ref(&server),
            &shape("cluster-1"),
        )
        .await?
    };
    let redis = redis(2);
    let servers = [
        Server::start(Kind::Palisade, Some(&redis)).await?,
        Server::start(Kind::Palisade, Some(&redis)).await?,
    ];
    let two = run(Kind::Palisade, &servers, &shape("cluster-2")).await?;
    Ok([one, two])
}

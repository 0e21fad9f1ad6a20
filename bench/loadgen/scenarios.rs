//! The measured workloads. Each starts its own fresh server, is bounded in connections, events and
//! time, and returns figures rather than judging them: ratios against the peers are the point.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Tally, now_micros, source_address};
use crate::target::{Kind, SECRET, Server};

/// Connections opened at once while building up a population.
const CONNECT_CONCURRENCY: usize = 128;

/// Publishes in flight at once when publishing as fast as the server answers.
const PUBLISH_WINDOW: usize = 16;

/// One connection in this many records latency: enough samples, a bounded cost.
const LATENCY_SAMPLE: usize = 10;

/// How long deliveries may keep arriving after the last publish was answered.
const DRAIN: Duration = Duration::from_secs(5);

/// A token for `user`, valid for an hour; `service` adds the publishing role.
pub fn token(user: &str, service: bool) -> String {
    let exp = (now_micros() / 1_000_000) + 3600;
    let mut claims = serde_json::json!({ "sub": user, "exp": exp });
    if service {
        claims["roles"] = serde_json::json!(["service"]);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// Opens connections `from..to`, each subscribed to `topic(n)`, and hands each to a receiver task.
/// Returns how many failed to connect.
async fn populate(
    server: &Server,
    range: std::ops::Range<usize>,
    topic: impl Fn(usize) -> String,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
    receivers: &mut tokio::task::JoinSet<Option<Histogram<u64>>>,
) -> usize {
    let url = server.url.clone();
    let mut opened = stream::iter(range)
        .map(|n| {
            let url = url.clone();
            let topic = topic(n);
            async move {
                let mut ws =
                    client::connect(&url, &token(&format!("u{n}"), false), source_address(n))
                        .await?;
                client::subscribe(&mut ws, "1", &topic).await?;
                anyhow::Ok((n, ws))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut failed = 0;
    while let Some(result) = opened.next().await {
        match result {
            Ok((n, ws)) => {
                let latency = (n % LATENCY_SAMPLE == 0)
                    .then(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"));
                receivers.spawn(client::receive(ws, tally.clone(), latency, stop.clone()));
            }
            Err(error) => {
                if failed == 0 {
                    eprintln!("palisade-bench: a connection failed: {error:#}");
                }
                failed += 1;
            }
        }
    }
    failed
}

#[derive(Debug, Serialize)]
pub struct Idle {
    pub kind: String,
    pub low: usize,
    pub high: usize,
    pub rss_low: u64,
    pub rss_high: u64,
    /// (rss_high − rss_low) / (high − low), in bytes.
    pub marginal_bytes: u64,
    pub failed: usize,
}

/// Marginal memory of an authenticated, subscribed, idle connection between `low` and `high`.
pub async fn idle(kind: Kind, low: usize, high: usize) -> anyhow::Result<Idle> {
    let server = Server::start(kind).await?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut receivers = tokio::task::JoinSet::new();
    let topic = |n: usize| format!("bench:idle{}", n % 1000);
    let mut failed = populate(&server, 0..low, topic, &tally, &stop, &mut receivers).await;
    // Allocator and runtime settle after a burst; measure the plateau, not the wave.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_low = server.rss();
    failed += populate(&server, low..high, topic, &tally, &stop, &mut receivers).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_high = server.rss();
    stop.cancel();
    let span = (high - low).max(1) as u64;
    Ok(Idle {
        kind: format!("{kind:?}"),
        low,
        high,
        rss_low,
        rss_high,
        marginal_bytes: rss_high.saturating_sub(rss_low) / span,
        failed,
    })
}

#[derive(Debug, Serialize)]
pub struct Connect {
    pub kind: String,
    pub connections: usize,
    pub seconds: f64,
    /// Upgrades per second, each with connection_init + token check + ack + subscribe.
    pub per_second: f64,
    pub failed: usize,
    pub server_cpu_seconds: f64,
}

pub async fn connect(kind: Kind, connections: usize) -> anyhow::Result<Connect> {
    let server = Server::start(kind).await?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut receivers = tokio::task::JoinSet::new();
    let cpu = server.cpu();
    let started = Instant::now();
    let failed = populate(
        &server,
        0..connections,
        |_| "bench:connect".into(),
        &tally,
        &stop,
        &mut receivers,
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu_seconds = (server.cpu() - cpu).as_secs_f64();
    stop.cancel();
    Ok(Connect {
        kind: format!("{kind:?}"),
        connections,
        seconds,
        per_second: (connections - failed) as f64 / seconds,
        failed,
        server_cpu_seconds,
    })
}

#[derive(Debug, Serialize)]
pub struct Fanout {
    pub kind: String,
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

/// `subscribers` connections on one topic; `events` published over one service connection.
pub async fn fanout(
    kind: Kind,
    subscribers: usize,
    events: usize,
    rate: Option<u32>,
) -> anyhow::Result<Fanout> {
    let server = Server::start(kind).await?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut receivers = tokio::task::JoinSet::new();
    let failed = populate(
        &server,
        0..subscribers,
        |_| "bench:fanout".into(),
        &tally,
        &stop,
        &mut receivers,
    )
    .await;
    let subscribed = subscribers - failed;
    // Subscriptions are set up asynchronously on the server after `subscribe` is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = server.cpu();
    let started = Instant::now();
    publish(&server, events, rate).await?;
    let expected = (events * subscribed) as u64;
    let drain_until = Instant::now() + DRAIN;
    let mut last_count = 0;
    let mut last_change = Instant::now();
    while Instant::now() < drain_until {
        let now = tally.deliveries.load(Ordering::Relaxed);
        if now >= expected {
            break;
        }
        if now != last_count {
            (last_count, last_change) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliveries = tally.deliveries.load(Ordering::Relaxed);
    let elapsed = if deliveries >= expected {
        started.elapsed()
    } else {
        last_change.duration_since(started)
    };
    let server_cpu_seconds = (server.cpu() - cpu).as_secs_f64();
    let rss = server.rss();
    stop.cancel();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    while let Some(done) = receivers.join_next().await {
        if let Ok(Some(h)) = done {
            latency.add(h).context("merging histograms")?;
        }
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(Fanout {
        kind: format!("{kind:?}"),
        subscribers: subscribed,
        events,
        rate,
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

/// Publishes `events` stamped events on `bench:fanout` through one service connection: paced at
/// `rate` per second, or as fast as the server answers with `PUBLISH_WINDOW` in flight.
async fn publish(server: &Server, events: usize, rate: Option<u32>) -> anyhow::Result<()> {
    let ws = client::connect(
        &server.url,
        &token("publisher", true),
        source_address(usize::MAX / 2),
    )
    .await?;
    let (mut tx, mut rx) = ws.split();
    let window = Arc::new(tokio::sync::Semaphore::new(PUBLISH_WINDOW));
    // Answers free window slots; `complete` ends each publish.
    let answers = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut answered = 0;
            while answered < events {
                match rx.next().await {
                    Some(Ok(Message::Text(text))) if text.contains("\"complete\"") => {
                        answered += 1;
                        window.add_permits(1);
                    }
                    Some(Ok(Message::Text(text))) if text.contains("\"error\"") => {
                        anyhow::bail!("publish refused: {text}");
                    }
                    Some(Ok(_)) => {}
                    _ => anyhow::bail!("publisher connection closed after {answered} answers"),
                }
            }
            anyhow::Ok(())
        })
    };
    let mut pace = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r))));
    for n in 0..events {
        match &mut pace {
            Some(interval) => {
                interval.tick().await;
            }
            None => window.acquire().await?.forget(),
        }
        let frame = serde_json::json!({
            "id": format!("p{n}"),
            "type": "subscribe",
            "payload": {
                "query": "mutation($p: JSON) { publish(topic: \"bench:fanout\", type: \"tick\", payload: $p) { id } }",
                "variables": {"p": {"t": now_micros(), "n": n}},
            },
        });
        tx.send(Message::text(frame.to_string())).await?;
    }
    answers.await??;
    Ok(())
}

//! The measured workloads. Each starts its own fresh servers, is bounded in connections, events and
//! time, and returns figures rather than judging them: ratios against the peers are the point.

pub mod churn;
pub mod deliver;
pub mod idle;
pub mod overhead;
pub mod storm;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Tally, now_micros, source_address};
use crate::target::{SECRET, Server};

/// Connections opened at once while building up a population.
pub const CONNECT_CONCURRENCY: usize = 128;

/// Publishes in flight at once when publishing as fast as the server answers.
const PUBLISH_WINDOW: usize = 16;

/// Publishes in flight at most when paced: a saturated server answers late, and a publisher that
/// kept its pace regardless would pass `connections.max_operations` (100) and be refused. Past
/// this the pace slips, and the run reports the rate it achieved.
const PACED_WINDOW: usize = 64;

/// One connection in this many records latency: enough samples, a bounded cost.
const LATENCY_SAMPLE: usize = 10;

/// Waits until `count` reaches `expected`, has not moved for `quiet`, or `cap` has passed, and
/// returns when it last moved (or reached `expected`): what arrives after publishing ended is a
/// backlog in flight, not lost, for as long as it keeps arriving.
pub async fn drain(count: &AtomicU64, expected: u64, quiet: Duration, cap: Duration) -> Instant {
    let cap = Instant::now() + cap;
    let (mut last_count, mut last_change) = (0, Instant::now());
    while Instant::now() < cap && last_change.elapsed() < quiet {
        let now = count.load(Ordering::Relaxed);
        if now >= expected {
            return Instant::now();
        }
        if now != last_count {
            (last_count, last_change) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    last_change
}

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

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Opens connections `range`, connection `n` on `servers[n % len]` subscribed to `topic(n)`, and
/// hands each to a receiver task. Returns how many failed to connect.
pub async fn populate(
    servers: &[Server],
    range: std::ops::Range<usize>,
    topic: impl Fn(usize) -> String,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
    receivers: &mut tokio::task::JoinSet<Option<Histogram<u64>>>,
) -> usize {
    let mut opened = stream::iter(range)
        .map(|n| {
            let url = servers[n % servers.len()].url.clone();
            let topic = topic(n);
            async move {
                let mut ws =
                    client::connect(&url, &token(&format!("u{n}"), false), source_address(n))
                        .await?;
                client::subscribe(&mut ws, "1", &topic, None).await?;
                anyhow::Ok((n, ws))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut failed = 0;
    while let Some(result) = opened.next().await {
        match result {
            Ok((n, ws)) => {
                let latency = n.is_multiple_of(LATENCY_SAMPLE).then(histogram);
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

/// How events are published: how many, how fast, and where event `n` goes.
pub struct Publishing<'a> {
    pub events: usize,
    /// Events per second; `None` is as fast as the server answers, `PUBLISH_WINDOW` in flight.
    pub rate: Option<u32>,
    pub topic: &'a (dyn Fn(usize) -> String + Sync),
}

/// Publishes stamped events (`{"t": <µs>, "n": <seq>}`) through one service connection to
/// `server`, and returns once every publish was answered.
pub async fn publish(server: &Server, publishing: &Publishing<'_>) -> anyhow::Result<()> {
    let events = publishing.events;
    let ws = client::connect(
        &server.url,
        &token("publisher", true),
        source_address(usize::MAX / 2),
    )
    .await?;
    let (mut tx, mut rx) = ws.split();
    let window = Arc::new(tokio::sync::Semaphore::new(match publishing.rate {
        Some(_) => PACED_WINDOW,
        None => PUBLISH_WINDOW,
    }));
    // Reads the answers, freeing a window slot per `complete`; a refusal ends the run.
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
    let mut pace = publishing
        .rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r.max(1)))));
    for n in 0..events {
        if let Some(interval) = &mut pace {
            interval.tick().await;
        }
        window.acquire().await?.forget();
        let frame = serde_json::json!({
            "id": format!("p{n}"),
            "type": "subscribe",
            "payload": {
                "query": "mutation($topic: String!, $p: JSON) { publish(topic: $topic, type: \"tick\", payload: $p) { id } }",
                "variables": {"topic": (publishing.topic)(n), "p": {"t": now_micros(), "n": n}},
            },
        });
        tx.send(Message::text(frame.to_string())).await?;
    }
    answers.await??;
    Ok(())
}

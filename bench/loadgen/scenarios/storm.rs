//! Reconnect storm: every client is cut off at the same moment while events keep flowing, then
//! all reconnect and resubscribe with `after: <last id seen>`. Each must end up with every event
//! exactly once; the figure is how long until all are subscribed again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

use super::{CONNECT_CONCURRENCY, Publishing, publish, token};
use crate::client::{self, event_id, number, source_address};
use crate::target::{Kind, Server};

const TOPIC: &str = "bench:storm";

/// How long deliveries may stop arriving, after the last publish, before the rest count as lost.
/// Measured from the last new event any client saw: resumes replay after publishing has ended.
const DRAIN: Duration = Duration::from_secs(5);

/// The longest wait for deliveries after the last publish, however slowly they come.
const DRAIN_CAP: Duration = Duration::from_secs(120);

/// Reconnect attempts per client after the cut. A real client retries (graphql-ws: after 1 s,
/// 2 s, 4 s… plus 0.3–3 s of jitter); one that gave up after this many counts as failed.
const ATTEMPTS: u32 = 5;

#[derive(Debug, Serialize)]
pub struct Storm {
    pub kind: String,
    pub clients: usize,
    pub events: usize,
    /// From the cut until the last client had resubscribed.
    pub resubscribed_seconds: f64,
    pub lost: u64,
    pub duplicated: u64,
    /// Reconnects that failed and were retried, over all clients.
    pub retries: u64,
    pub failed: usize,
}

/// What one client saw: the last event id, and how often each sequence number arrived.
struct Seen {
    last_id: Option<String>,
    counts: Vec<u8>,
    /// Events seen for the first time, over all clients: the drain waits for it to stop moving.
    fresh: Arc<AtomicU64>,
}

impl Seen {
    fn record(&mut self, text: &str) {
        if let Some(id) = event_id(text) {
            self.last_id = Some(id.to_string());
        }
        if let Some(n) = number(text, "\"n\":").and_then(|n| self.counts.get_mut(n as usize)) {
            if *n == 0 {
                self.fresh.fetch_add(1, Ordering::Relaxed);
            }
            *n = n.saturating_add(1);
        }
    }
}

/// Reads deliveries into `seen` until `until` fires or the socket ends.
async fn read(ws: &mut client::Socket, seen: &mut Seen, until: &CancellationToken) {
    loop {
        tokio::select! {
            _ = until.cancelled() => return,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) if text.contains("\"next\"") => seen.record(&text),
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// Reconnects and resubscribes after the last event seen, retrying as a graphql-ws client does.
async fn resume(
    server: &Server,
    token: &str,
    n: usize,
    after: Option<&str>,
    retries: &AtomicU64,
) -> anyhow::Result<client::Socket> {
    let mut attempt = 0;
    loop {
        let result = async {
            let mut ws = client::connect(&server.url, token, source_address(n)).await?;
            client::subscribe(&mut ws, "1", TOPIC, after).await?;
            anyhow::Ok(ws)
        }
        .await;
        attempt += 1;
        match result {
            Ok(ws) => return Ok(ws),
            Err(error) if attempt == ATTEMPTS => return Err(error),
            Err(_) => {
                retries.fetch_add(1, Ordering::Relaxed);
                let jitter = rand::rng().random_range(300..3000);
                let wait = Duration::from_secs(1 << (attempt - 1)) + Duration::from_millis(jitter);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

pub async fn storm(kind: Kind, clients: usize, events: usize, rate: u32) -> anyhow::Result<Storm> {
    let server = Arc::new(Server::start(kind, None).await?);
    let cut = CancellationToken::new();
    let done = CancellationToken::new();
    // Every client is subscribed before publishing starts.
    let ready = Arc::new(Barrier::new(clients + 1));
    // Limits how many connect at once in the first wave; the storm itself is unthrottled.
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let fresh = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..clients {
        let (server, cut, done, ready, gate, fresh, retries) = (
            server.clone(),
            cut.clone(),
            done.clone(),
            ready.clone(),
            gate.clone(),
            fresh.clone(),
            retries.clone(),
        );
        // One task per client: connect, read until the cut, drop the socket, reconnect with
        // `after`, read until the run is over.
        tasks.spawn(async move {
            let mut seen = Seen {
                last_id: None,
                counts: vec![0; events],
                fresh,
            };
            let token = token(&format!("s{n}"), false);
            let first = async {
                let _permit = gate.acquire().await?;
                let mut ws = client::connect(&server.url, &token, source_address(n)).await?;
                client::subscribe(&mut ws, "1", TOPIC, None).await?;
                anyhow::Ok(ws)
            }
            .await;
            ready.wait().await;
            let mut ws = first?;
            read(&mut ws, &mut seen, &cut).await;
            drop(ws);
            let mut ws = resume(&server, &token, n, seen.last_id.as_deref(), &retries).await?;
            let resubscribed = Instant::now();
            read(&mut ws, &mut seen, &done).await;
            anyhow::Ok((resubscribed, seen.counts))
        });
    }
    ready.wait().await;
    // Subscriptions are set up on the server after `subscribe` is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let publishing = {
        let server = server.clone();
        tokio::spawn(async move {
            let topic = |_| TOPIC.to_string();
            publish(
                &server,
                &Publishing {
                    events,
                    rate: Some(rate),
                    topic: &topic,
                },
            )
            .await
        })
    };
    // Cut everyone off a third of the way through the events.
    tokio::time::sleep(Duration::from_secs_f64(
        events as f64 / f64::from(rate) / 3.0,
    ))
    .await;
    let cut_at = Instant::now();
    cut.cancel();
    publishing.await??;
    super::drain(&fresh, (clients * events) as u64, DRAIN, DRAIN_CAP).await;
    done.cancel();
    let (mut last, mut lost, mut duplicated, mut failed) = (cut_at, 0u64, 0u64, 0);
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok((resubscribed, counts))) => {
                last = last.max(resubscribed);
                lost += counts.iter().filter(|&&c| c == 0).count() as u64;
                duplicated += counts
                    .iter()
                    .map(|&c| u64::from(c.saturating_sub(1)))
                    .sum::<u64>();
            }
            _ => failed += 1,
        }
    }
    Ok(Storm {
        kind: format!("{kind:?}"),
        clients,
        events,
        resubscribed_seconds: last.duration_since(cut_at).as_secs_f64(),
        lost,
        duplicated,
        retries: retries.load(Ordering::Relaxed),
        failed,
    })
}

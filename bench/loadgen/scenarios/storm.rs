//! Reconnect storm: every client is cut off at the same moment while events keep flowing, then
//! all reconnect and resubscribe with `after: <last id seen>`. Each must end up with every event
//! exactly once; the figure is how long until all are subscribed again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

use super::{CONNECT_CONCURRENCY, Publishing, publish, token};
use crate::client::{self, event_id, number, source_address};
use crate::target::{Kind, Server};

const TOPIC: &str = "bench:storm";

/// How long after the cut the run waits for stragglers before it counts what arrived.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub struct Storm {
    pub kind: String,
    pub clients: usize,
    pub events: usize,
    /// From the cut until the last client had resubscribed.
    pub resubscribed_seconds: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub failed: usize,
}

/// What one client saw: the last event id, and how often each sequence number arrived.
struct Seen {
    last_id: Option<String>,
    counts: Vec<u8>,
}

impl Seen {
    fn record(&mut self, text: &str) {
        if let Some(id) = event_id(text) {
            self.last_id = Some(id.to_string());
        }
        if let Some(n) = number(text, "\"n\":").and_then(|n| self.counts.get_mut(n as usize)) {
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

pub async fn storm(kind: Kind, clients: usize, events: usize, rate: u32) -> anyhow::Result<Storm> {
    let server = Arc::new(Server::start(kind, None).await?);
    let cut = CancellationToken::new();
    let done = CancellationToken::new();
    // Every client is subscribed before publishing starts.
    let ready = Arc::new(Barrier::new(clients + 1));
    // Limits how many connect at once in the first wave; the storm itself is unthrottled.
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..clients {
        let (server, cut, done, ready, gate) = (
            server.clone(),
            cut.clone(),
            done.clone(),
            ready.clone(),
            gate.clone(),
        );
        // One task per client: connect, read until the cut, drop the socket, reconnect with
        // `after`, read until the run is over.
        tasks.spawn(async move {
            let mut seen = Seen {
                last_id: None,
                counts: vec![0; events],
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
            let mut ws = client::connect(&server.url, &token, source_address(n)).await?;
            client::subscribe(&mut ws, "1", TOPIC, seen.last_id.as_deref()).await?;
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
    tokio::time::sleep(DRAIN).await;
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
        failed,
    })
}

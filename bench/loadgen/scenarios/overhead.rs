//! What the hardening costs per operation: the same query, sent over and over by a fixed number
//! of connections, to Palisade with its per-operation guard, to the same binary without it
//! (`serve --unguarded`), and to the bare async-graphql server. Server CPU per operation is the
//! figure compared; operations per second shows the same from the client's side.
//!
//! One run of each is not enough on a shared machine: three back-to-back runs of guarded and
//! unguarded here gave ratios from 1.00× to 1.09×, and one suite run 1.20×. The suite runs them
//! in rounds, the order rotated each round, and reports the median ratio of the rounds.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt, stream};
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::Message;

use super::{CONNECT_CONCURRENCY, token};
use crate::client::{self, source_address};
use crate::target::{Kind, Server};

/// A query every server under test answers with the same shape: three fields of one object.
const QUERY: &str = "{ serverInfo { version instanceId uptimeSeconds } }";

#[derive(Debug, Serialize)]
pub struct Overhead {
    pub kind: String,
    pub connections: usize,
    pub operations: usize,
    pub per_second: f64,
    /// Server CPU time per operation, in microseconds.
    pub cpu_micros_per_operation: f64,
    pub errors: usize,
}

/// What the rounds compare: with the guard, without it, and bare.
pub const COMPARED: [Kind; 3] = [Kind::Palisade, Kind::PalisadeOpen, Kind::Bare];

/// Each of `COMPARED` once, starting from a different one each round so that none always runs
/// first (or last) while the machine's load drifts. Returned in `COMPARED` order.
pub async fn round(
    round: usize,
    connections: usize,
    operations: usize,
) -> anyhow::Result<[Overhead; 3]> {
    let mut runs: [Option<Overhead>; 3] = Default::default();
    for step in 0..COMPARED.len() {
        let at = (round + step) % COMPARED.len();
        runs[at] = Some(overhead(COMPARED[at], connections, operations).await?);
    }
    Ok(runs.map(|run| run.expect("every kind ran once")))
}

/// `connections` clients each run `operations / connections` queries back to back (the next is
/// sent once the previous one completed).
pub async fn overhead(
    kind: Kind,
    connections: usize,
    operations: usize,
) -> anyhow::Result<Overhead> {
    let server = Server::start(kind, None).await?;
    let each = operations.div_ceil(connections.max(1));
    let sockets: Vec<_> = stream::iter(0..connections)
        .map(|n| {
            let url = server.url.clone();
            async move {
                client::connect(&url, &token(&format!("o{n}"), false), source_address(n)).await
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let sockets = sockets.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let cpu = server.cpu();
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for mut ws in sockets {
        clients.spawn(async move {
            let mut errors = 0;
            for n in 0..each {
                let frame = serde_json::json!({"id": n.to_string(), "type": "subscribe", "payload": {"query": QUERY}});
                ws.send(Message::text(frame.to_string())).await?;
                // One `next` (or `error`) and then `complete` per query.
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("\"complete\"") => break,
                        Some(Ok(Message::Text(text))) if !text.contains("\"next\"") || text.contains("\"errors\"") => {
                            errors += 1;
                            if text.contains("\"error\"") {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => anyhow::bail!("connection closed after {n} operations"),
                    }
                }
            }
            anyhow::Ok(errors)
        });
    }
    let mut errors = 0;
    while let Some(result) = clients.join_next().await {
        errors += result??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (server.cpu() - cpu).as_secs_f64();
    let operations = each * connections;
    Ok(Overhead {
        kind: format!("{kind:?}"),
        connections,
        operations,
        per_second: operations as f64 / seconds,
        cpu_micros_per_operation: cpu * 1e6 / operations as f64,
        errors,
    })
}

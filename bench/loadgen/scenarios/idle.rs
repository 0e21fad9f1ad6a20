//! What a connection costs: marginal memory while idle, and how fast connections are accepted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::populate;
use crate::client::Tally;
use crate::target::{Kind, Server};

/// Time for the allocator and the runtime to settle after a burst of connections: the plateau is
/// measured, not the wave.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct Idle {
    pub kind: String,
    /// (connections, RSS bytes) at each step, each after the population settled.
    pub points: Vec<(usize, u64)>,
    /// RSS growth per connection from the first step to the last, in bytes.
    pub marginal_bytes: u64,
    pub failed: usize,
}

/// Marginal memory of an authenticated, subscribed, idle connection: the population grows through
/// `steps` (spread over 1,000 topics) and RSS is read at each.
pub async fn idle(kind: Kind, steps: &[usize]) -> anyhow::Result<Idle> {
    let server = Server::start(kind, None).await?;
    let servers = std::slice::from_ref(&server);
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut receivers = tokio::task::JoinSet::new();
    let topic = |n: usize| format!("bench:idle{}", n % 1000);
    let (mut failed, mut points, mut open) = (0, Vec::new(), 0);
    for &step in steps {
        failed += populate(servers, open..step, topic, &tally, &stop, &mut receivers).await;
        open = step;
        tokio::time::sleep(SETTLE).await;
        points.push((step, server.rss()));
    }
    stop.cancel();
    let marginal_bytes = match (points.first(), points.last()) {
        (Some(&(n0, r0)), Some(&(n1, r1))) if n1 > n0 => r1.saturating_sub(r0) / (n1 - n0) as u64,
        _ => 0,
    };
    Ok(Idle {
        kind: format!("{kind:?}"),
        points,
        marginal_bytes,
        failed,
    })
}

#[derive(Debug, Serialize)]
pub struct Connect {
    pub kind: String,
    /// What Palisade wrote its rows to (the peers write none).
    pub database: &'static str,
    pub connections: usize,
    pub seconds: f64,
    /// Upgrades per second, each with connection_init + token check + ack + subscribe.
    pub per_second: f64,
    pub failed: usize,
    pub server_cpu_seconds: f64,
    /// Connection-log, presence-log and audit rows Palisade dropped (its writers fell behind or
    /// the database failed).
    pub log_rows_dropped: u64,
}

/// Opens `connections` as fast as the server takes them; with `postgres`, Palisade runs on a fresh
/// database of that PostgreSQL server instead of its SQLite default.
pub async fn connect(
    kind: Kind,
    connections: usize,
    postgres: Option<&str>,
) -> anyhow::Result<Connect> {
    let server = Server::start_on(kind, None, postgres).await?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut receivers = tokio::task::JoinSet::new();
    let cpu = server.cpu();
    let started = Instant::now();
    let failed = populate(
        std::slice::from_ref(&server),
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
    // The log writers drain after the burst; what they could not keep up with is dropped.
    tokio::time::sleep(SETTLE).await;
    let log_rows_dropped = server
        .metric_sum(&["log_dropped_total", "audit_dropped_total"])
        .await as u64;
    Ok(Connect {
        kind: format!("{kind:?}"),
        database: match (kind.is_palisade(), postgres) {
            (false, _) => "none",
            (true, Some(_)) => "postgres",
            (true, None) => "sqlite",
        },
        connections,
        seconds,
        per_second: (connections - failed) as f64 / seconds,
        failed,
        server_cpu_seconds,
        log_rows_dropped,
    })
}

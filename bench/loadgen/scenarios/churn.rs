//! Churn: connections arrive at a steady rate, subscribe, live a few seconds and leave, so the
//! population is constant while every connection is new. Memory must not drift, and with Redis no
//! key may outlive the connections that made it.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use redis::AsyncCommands;
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::Message;

use super::token;
use crate::client::{self, source_address};
use crate::target::{Kind, Redis, Server};

/// How long each connection stays.
const LIFE: Duration = Duration::from_secs(5);

/// When the population's memory counts as steady. Per-IP and per-user rate-limit state, the
/// audit's failure counts and the registry's idle entries are swept once a minute, each once
/// idle for long enough, so these maps grow for the first two sweeps before arrivals and sweeps
/// balance; memory that reaches a bound by design is not drift.
const WARMUP: Duration = Duration::from_secs(150);

/// How often RSS is sampled for the series in the report.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// After the last connection left: presence leases (5 s in the bench config) and registry leases
/// run out, so what remains is what leaked.
const AFTERMATH: Duration = Duration::from_secs(8);

#[derive(Debug, Serialize)]
pub struct Churn {
    pub kind: String,
    pub per_second: u32,
    pub seconds: u64,
    pub connections: usize,
    pub failed: usize,
    /// Seconds into the run at which `rss_steady` was read: `WARMUP`, or for a short run the
    /// moment the population first reached its size.
    pub steady_after_seconds: u64,
    /// RSS once the population reached its steady size, and at the end of the run with the
    /// population still there.
    pub rss_steady: u64,
    pub rss_end: u64,
    /// RSS at the start and every `SAMPLE_EVERY` after.
    pub rss_series: Vec<u64>,
    pub drift_percent: f64,
    /// Redis keys under the run's prefix once everything closed, other than the bus's own
    /// (its stream shards and epoch hold event history by design): what leaked.
    pub redis_keys_left: Option<Vec<String>>,
}

pub async fn churn(
    kind: Kind,
    per_second: u32,
    seconds: u64,
    redis_url: Option<&str>,
) -> anyhow::Result<Churn> {
    let redis = redis_url.map(|url| Redis {
        url: url.to_string(),
        prefix: format!("palisade-bench-churn-{}", std::process::id()),
    });
    let server = Server::start(kind, redis.as_ref()).await?;
    let mut arrivals = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
    let mut lives = tokio::task::JoinSet::new();
    let started = Instant::now();
    let run = Duration::from_secs(seconds);
    let steady_after = if run >= WARMUP * 2 {
        WARMUP
    } else {
        LIFE + Duration::from_secs(2)
    };
    let (mut rss_steady, mut rss_series, mut next_sample) = (None, Vec::new(), Duration::ZERO);
    let mut n = 0;
    while started.elapsed() < run {
        arrivals.tick().await;
        if rss_steady.is_none() && started.elapsed() >= steady_after {
            rss_steady = Some(server.rss());
        }
        if started.elapsed() >= next_sample {
            rss_series.push(server.rss());
            next_sample += SAMPLE_EVERY;
        }
        let url = server.url.clone();
        // One task per connection: it lives LIFE, then closes cleanly as a browser tab would.
        lives.spawn(async move {
            let mut ws =
                client::connect(&url, &token(&format!("c{n}"), false), source_address(n)).await?;
            client::subscribe(&mut ws, "1", &format!("bench:churn{}", n % 100), None).await?;
            tokio::time::sleep(LIFE).await;
            ws.send(Message::Close(None)).await?;
            anyhow::Ok(())
        });
        n += 1;
        // Reap finished lives as we go, so the generator's own memory stays flat too.
        while let Some(done) = lives.try_join_next() {
            let _ = done;
        }
    }
    // Read before the last connections leave, so it compares the same population as `rss_steady`.
    let rss_end = server.rss();
    rss_series.push(rss_end);
    let mut failed = 0;
    while let Some(done) = lives.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let rss_steady = rss_steady.unwrap_or(rss_end);
    let redis_keys_left = match &redis {
        Some(redis) => {
            tokio::time::sleep(AFTERMATH).await;
            Some(keys(redis).await?)
        }
        None => None,
    };
    Ok(Churn {
        kind: format!("{kind:?}"),
        per_second,
        seconds,
        connections: n,
        failed,
        steady_after_seconds: steady_after.as_secs(),
        rss_steady,
        rss_end,
        rss_series,
        drift_percent: (rss_end as f64 - rss_steady as f64) / rss_steady.max(1) as f64 * 100.0,
        redis_keys_left,
    })
}

/// The keys under the run's prefix, deleted afterwards so the run leaves nothing behind.
async fn keys(redis: &Redis) -> anyhow::Result<Vec<String>> {
    let client = redis::Client::open(redis.url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{}*", redis.prefix);
    let mut found: Vec<String> = Vec::new();
    {
        let mut iter = connection.scan_match::<_, String>(&pattern).await?;
        while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
            found.push(key?);
        }
    }
    if !found.is_empty() {
        let _: () = connection.del(&found).await?;
    }
    found.retain(|key| {
        let rest = &key[redis.prefix.len()..];
        !(rest.starts_with(":events:") || rest == ":bus:epoch")
    });
    found.sort();
    Ok(found)
}

//! Retention: every `retention.cleanup_every`, rows older than their table's retention are
//! deleted, in batches so that a large table is never locked for long. Each run logs and counts
//! what it removed (`palisade_retention_deleted_total{table}`). A reload that changes retention
//! takes effect at the next scheduled cleanup, never within the reload.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{LiveConfig, Retention};
use crate::db::Database;
use crate::metrics::Metrics;
use crate::on_pool;

/// Rows deleted per statement: small enough that each delete holds its locks only briefly.
const BATCH: i64 = 1_000;

/// Deletes rows of `table` whose age column is older than `cutoff`, one batch at a time.
async fn delete_before(
    db: &Database,
    table: &'static str,
    age: &'static str,
    cutoff: DateTime<Utc>,
) -> anyhow::Result<u64> {
    // Both names are fixed strings of this module; the values are bound.
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {age} < $1 LIMIT $2)"
    );
    let mut total = 0;
    loop {
        let deleted = on_pool!(db, |pool| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(cutoff)
            .bind(BATCH)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
        // Let other writers in between batches.
        tokio::task::yield_now().await;
    }
}

/// One cleanup pass; returns the rows removed per table.
#[tracing::instrument(skip_all)]
pub async fn run_once(
    db: &Database,
    retention: &Retention,
    metrics: &Metrics,
) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let now = Utc::now();
    // A retention longer than the calendar reaches back keeps everything, rather than overflowing.
    let cutoff = |age: std::time::Duration| {
        chrono::TimeDelta::from_std(age)
            .ok()
            .and_then(|age| now.checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    // A connection's row ages from when it ended; one never closed (its instance died) from
    // when it opened.
    let tables = [
        (
            "connection_log",
            "COALESCE(disconnected_at, connected_at)",
            retention.connection_logs.get(),
        ),
        ("audit_log", "created_at", retention.audit_logs.get()),
        ("presence_log", "at", retention.presence_logs.get()),
    ];
    let mut removed = Vec::new();
    for (table, age, keep) in tables {
        let deleted = delete_before(db, table, age, cutoff(keep)).await?;
        metrics
            .retention_deleted
            .with_label_values(&[table])
            .inc_by(deleted);
        removed.push((table, deleted));
    }
    tracing::info!(?removed, "retention cleanup done");
    Ok(removed)
}

/// The next reload, or never once no reload can come (the server runs without a file).
async fn next_reload(reloaded: &mut Option<watch::Receiver<()>>) {
    if let Some(receiver) = reloaded {
        if receiver.changed().await.is_ok() {
            return;
        }
        *reloaded = None;
    }
    std::future::pending().await
}

/// Runs `run_once` every `retention.cleanup_every` until `shutdown`. A reload never runs a
/// cleanup: changed retention ages apply at the next scheduled one, and a changed `cleanup_every`
/// starts its interval from the reload. A failed pass is logged and retried at the next tick.
pub async fn run(
    db: Database,
    live: LiveConfig,
    reloaded: watch::Receiver<()>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut reloaded = Some(reloaded);
    let mut current = live.load().retention.clone();
    let mut next = Instant::now() + current.cleanup_every.get();
    loop {
        // Three wake-ups: shutdown ends the job, a reload only reschedules, the timer cleans up.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = next_reload(&mut reloaded) => {
                let new = live.load().retention.clone();
                if new != current {
                    if new.cleanup_every != current.cleanup_every {
                        next = Instant::now() + new.cleanup_every.get();
                    }
                    current = new;
                    tracing::info!(
                        next_cleanup_in = ?next.saturating_duration_since(Instant::now()),
                        "retention changed by a reload; it applies at the next scheduled cleanup"
                    );
                }
                continue;
            }
            () = tokio::time::sleep_until(next) => {}
        }
        if let Err(error) = run_once(&db, &current, &metrics).await {
            tracing::warn!(error = format!("{error:#}"), "retention cleanup failed");
        }
        next = Instant::now() + current.cleanup_every.get();
    }
}

//! The audit trail. Recording never blocks or fails the caller: rows go through the bounded
//! queue of [`crate::writer`], and a row that cannot be written counts in
//! `palisade_audit_dropped_total` instead of slowing the connection path.
//!
//! Every string of a row is cut to [`MAX_TEXT_BYTES`] before it is queued: ids, addresses and
//! metadata (headers, topics, origins) often come from the client.
//!
//! Rows of failed credential attempts ([`Audit::record_failure`]) are rate-limited per client
//! address: someone guessing a key gets [`FAILED_ATTEMPT_BURST`] rows, then one per
//! [`FAILED_ATTEMPT_PERIOD`], and the rest count in `palisade_audit_throttled_total`. The HTTP
//! limiter already slows the guessing; this keeps the guesses it lets through from filling the
//! audit table and its queue, which other rows share.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus::IntCounter;
use serde_json::Value;

use crate::db::Database;
use crate::metrics::Metrics;
use crate::on_pool;
use crate::writer::{MAX_TEXT_BYTES, Row, Writer, bounded};

/// Audit rows waiting for the writer. A row can hold a sanitized copy of the upgrade's headers
/// (every value cut to [`MAX_TEXT_BYTES`]), so this bound is kept well below the other logs'.
const QUEUE: usize = 8192;

/// Rows of failed credential attempts one client address may write at once.
pub const FAILED_ATTEMPT_BURST: u32 = 10;

/// After the burst, one more such row per address per this long (10 a minute).
pub const FAILED_ATTEMPT_PERIOD: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, Debug)]
pub enum Severity {
    Info,
    Warn,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub action: &'static str,
    pub severity: Severity,
    pub user_id: Option<String>,
    pub connection_id: Option<String>,
    pub ip: Option<String>,
    pub metadata: Value,
}

impl Entry {
    /// A topic rule refused `action` on `topic`; `reason` says which rule and why.
    pub fn topic_denied(
        user_id: Option<String>,
        connection_id: Option<String>,
        ip: Option<String>,
        topic: &str,
        action: crate::topics::Action,
        reason: String,
    ) -> Self {
        Self {
            action: "unauthorized_topic_access",
            severity: Severity::Warn,
            user_id,
            connection_id,
            ip,
            metadata: serde_json::json!({ "topic": topic, "action": action.as_str(), "reason": reason }),
        }
    }
}

impl Entry {
    /// Cuts every string to [`MAX_TEXT_BYTES`], map keys included (a header's name is client text
    /// too).
    fn bound(&mut self) {
        for text in [&mut self.user_id, &mut self.connection_id, &mut self.ip]
            .into_iter()
            .flatten()
        {
            cut(text);
        }
        bound_strings(&mut self.metadata);
    }
}

fn cut(text: &mut String) {
    let end = bounded(text).len();
    text.truncate(end);
}

fn bound_strings(value: &mut Value) {
    match value {
        Value::String(text) => cut(text),
        Value::Array(items) => items.iter_mut().for_each(bound_strings),
        Value::Object(map) => {
            if map.keys().any(|key| key.len() > MAX_TEXT_BYTES) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(key, value)| (bounded(&key).to_string(), value))
                    .collect();
            }
            map.values_mut().for_each(bound_strings);
        }
        _ => {}
    }
}

/// An entry with the time it was recorded.
struct Recorded(Entry, DateTime<Utc>);

impl Row for Recorded {
    const TABLE: &'static str = "audit_log";

    async fn write(rows: &[Self], db: &Database) -> anyhow::Result<()> {
        on_pool!(db, |pool| {
            sqlx::QueryBuilder::new(
                "INSERT INTO audit_log (action, severity, user_id, connection_id, ip, metadata, created_at) ",
            )
            .push_values(rows, |mut values, Recorded(e, at)| {
                values
                    .push_bind(e.action)
                    .push_bind(e.severity.as_str())
                    .push_bind(&e.user_id)
                    .push_bind(&e.connection_id)
                    .push_bind(&e.ip)
                    .push_bind(sqlx::types::Json(&e.metadata))
                    .push_bind(at);
            })
            .build()
            .persistent(false)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct Audit {
    writer: Writer<Recorded>,
    /// The rows of failed credential attempts, per client address (`Entry::ip`).
    failures: Arc<DefaultKeyedRateLimiter<String>>,
    /// `audit_throttled_total`.
    throttled: IntCounter,
}

impl Audit {
    /// Starts the writer task; it ends when the last handle is dropped.
    pub fn start(db: Database, metrics: Arc<Metrics>) -> Self {
        let burst = NonZeroU32::new(FAILED_ATTEMPT_BURST).expect("a non-zero constant");
        let quota = Quota::with_period(FAILED_ATTEMPT_PERIOD)
            .expect("a non-zero constant")
            .allow_burst(burst);
        Self {
            writer: Writer::start(db, QUEUE, metrics.audit_dropped.clone()),
            failures: Arc::new(RateLimiter::keyed(quota)),
            throttled: metrics.audit_throttled.clone(),
        }
    }

    pub fn record(&self, mut entry: Entry) {
        entry.bound();
        self.writer.record(Recorded(entry, Utc::now()));
    }

    /// Records a refused credential (a wrong key or token), unless its client address is over
    /// the failed-attempt rate: then the row is only counted.
    pub fn record_failure(&self, entry: Entry) {
        let address = entry.ip.as_deref().map(bounded).unwrap_or_default();
        if self.failures.check_key(&address.to_string()).is_err() {
            self.throttled.inc();
            return;
        }
        self.record(entry);
    }

    /// Forgets the failed-attempt counts of idle addresses, bounding memory over churn.
    pub fn retain_recent(&self) {
        self.failures.retain_recent();
    }

    /// Waits until everything recorded so far is written (used at shutdown and in tests).
    pub async fn flush(&self) {
        self.writer.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_string_of_an_entry_is_cut_to_the_bound_map_keys_included() {
        let long = "h".repeat(60_000);
        let mut entry = Entry {
            action: "socket.auth_failed",
            severity: Severity::Warn,
            user_id: Some(long.clone()),
            connection_id: None,
            ip: None,
            metadata: json!({ "topic": long, "headers": { long.clone(): long.clone() }, "n": [long, 3] }),
        };
        entry.bound();
        assert_eq!(entry.user_id.unwrap().len(), MAX_TEXT_BYTES);
        let metadata = entry.metadata.to_string();
        assert!(
            metadata.len() < 5 * MAX_TEXT_BYTES,
            "{} bytes",
            metadata.len()
        );
        assert_eq!(entry.metadata["n"][1], 3);
    }
}

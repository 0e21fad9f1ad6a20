//! The audit trail. Recording never blocks or fails the caller: rows go through the bounded
//! queue of [`crate::writer`], and a row that cannot be written counts in
//! `palisade_audit_dropped_total` instead of slowing the connection path.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::db::Database;
use crate::metrics::Metrics;
use crate::on_pool;
use crate::writer::{Row, Writer};

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

/// An entry with the time it was recorded.
struct Recorded(Entry, DateTime<Utc>);

impl Row for Recorded {
    const TABLE: &'static str = "audit_log";

    async fn insert(&self, db: &Database) -> anyhow::Result<()> {
        let Recorded(e, at) = self;
        on_pool!(db, |pool| {
            sqlx::query(
                "INSERT INTO audit_log (action, severity, user_id, connection_id, ip, metadata, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(e.action)
            .bind(e.severity.as_str())
            .bind(&e.user_id)
            .bind(&e.connection_id)
            .bind(&e.ip)
            .bind(sqlx::types::Json(&e.metadata))
            .bind(at)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct Audit(Writer<Recorded>);

impl Audit {
    /// Starts the writer task; it ends when the last handle is dropped.
    pub fn start(db: Database, metrics: Arc<Metrics>) -> Self {
        Self(Writer::start(db, metrics.audit_dropped.clone()))
    }

    pub fn record(&self, entry: Entry) {
        self.0.record(Recorded(entry, Utc::now()));
    }

    /// Waits until everything recorded so far is written (used at shutdown and in tests).
    pub async fn flush(&self) {
        self.0.flush().await;
    }
}

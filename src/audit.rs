//! The audit trail. Recording never blocks or fails the caller: rows go into a bounded queue that
//! one background task drains into the database. A full queue or a failed insert counts the row as
//! dropped in `palisade_audit_dropped_total` instead of slowing the connection path.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::db::Database;
use crate::metrics::Metrics;
use crate::on_pool;

/// Rows waiting for the writer; beyond this the audit trail sheds load rather than memory.
const QUEUE: usize = 4096;

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

enum Command {
    Write(Entry, DateTime<Utc>),
    /// Answered once every row queued before it has been written.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
}

impl Audit {
    /// Starts the writer task; it ends when the last handle is dropped.
    pub fn start(db: Database, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(db, rx, metrics.clone()));
        Self { tx, metrics }
    }

    pub fn record(&self, entry: Entry) {
        if self.tx.try_send(Command::Write(entry, Utc::now())).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }

    /// Waits until everything recorded so far is written (used at shutdown and in tests).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_loop(db: Database, mut rx: mpsc::Receiver<Command>, metrics: Arc<Metrics>) {
    // One row at a time keeps the writer simple; the queue absorbs bursts.
    while let Some(command) = rx.recv().await {
        match command {
            Command::Write(entry, at) => {
                if let Err(error) = insert(&db, &entry, at).await {
                    metrics.audit_dropped.inc();
                    tracing::warn!(error = ?error, action = entry.action, "audit row dropped");
                }
            }
            Command::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

async fn insert(db: &Database, e: &Entry, at: DateTime<Utc>) -> anyhow::Result<()> {
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

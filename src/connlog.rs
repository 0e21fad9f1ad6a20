//! The connection log: a row per WebSocket, recorded once it is acknowledged (with its user) or,
//! for one that never was, when it ends; completed with the close code and reason when it ends.
//! Both writes go through the batched queue of [`crate::writer`], in order, so nothing on the
//! connection path awaits the database for them; shutdown flushes the queue after every
//! connection has closed, so a clean stop leaves no row open. Writes that cannot be queued or
//! written count in `palisade_connection_log_dropped_total`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prometheus::IntCounter;

use crate::db::Database;
use crate::on_pool;
use crate::writer::{Row, Writer};

/// Writes waiting for the writer: enough to ride out a stall of the database (a SQLite checkpoint
/// took 0.3–0.5 s in the connect benchmark) while 10,000 connections open or close at once. A
/// write holds a few ids and at most [`crate::writer::MAX_TEXT_BYTES`] of client text, under
/// 2 KiB, so a full queue stays under 64 MiB.
const QUEUE: usize = 32_768;

/// What is known about a connection when it opens.
#[derive(Clone, Debug)]
pub struct Opened {
    pub id: String,
    /// The client's [`IpBucket`](crate::client_ip::IpBucket): an IPv6 client's prefix.
    pub ip: String,
    /// The `User-Agent` header, already cut to [`crate::writer::MAX_TEXT_BYTES`] by the upgrade.
    pub user_agent: Option<String>,
    pub instance_id: String,
    pub subprotocol: &'static str,
    pub connected_at: DateTime<Utc>,
    /// Who the connection authenticated as, when it did before the row was recorded.
    pub user_id: Option<String>,
}

/// One write to a connection's row.
pub enum Event {
    Opened(Opened),
    /// How it ended, and when.
    Closed {
        id: String,
        code: u16,
        reason: String,
        at: DateTime<Utc>,
    },
}

/// How a connection ended, as bound into a statement.
type Ending<'a> = (i32, &'a str, DateTime<Utc>);

impl Row for Event {
    const TABLE: &'static str = "connection_log";

    /// A short-lived connection's row and its ending often share a batch: they become one
    /// inserted row. Rows new in the batch go in one multi-row `INSERT`, endings of rows written
    /// earlier in one multi-row `UPDATE`.
    async fn write(rows: &[Self], db: &Database) -> anyhow::Result<()> {
        let mut endings: HashMap<&str, Ending> = HashMap::new();
        for event in rows {
            if let Event::Closed {
                id,
                code,
                reason,
                at,
            } = event
            {
                endings.insert(id, (i32::from(*code), reason, *at));
            }
        }
        let new: Vec<(&Opened, Option<Ending>)> = rows
            .iter()
            .filter_map(|event| match event {
                Event::Opened(row) => Some((row, endings.remove(row.id.as_str()))),
                Event::Closed { .. } => None,
            })
            .collect();
        let ended: Vec<(&str, Ending)> = rows
            .iter()
            .filter_map(|event| match event {
                Event::Closed { id, .. } => endings.remove(id.as_str()).map(|e| (id.as_str(), e)),
                Event::Opened(_) => None,
            })
            .collect();
        if !new.is_empty() {
            on_pool!(db, |pool| {
                sqlx::QueryBuilder::new(
                    "INSERT INTO connection_log (id, ip, user_agent, instance_id, subprotocol, connected_at, \
                     user_id, disconnected_at, close_code, reason) ",
                )
                .push_values(&new, |mut values, (row, ending)| {
                    values
                        .push_bind(&row.id)
                        .push_bind(&row.ip)
                        .push_bind(&row.user_agent)
                        .push_bind(&row.instance_id)
                        .push_bind(row.subprotocol)
                        .push_bind(row.connected_at)
                        .push_bind(&row.user_id)
                        .push_bind(ending.map(|e| e.2))
                        .push_bind(ending.map(|e| e.0))
                        .push_bind(ending.map(|e| e.1));
                })
                .build()
                .persistent(false)
                .execute(pool)
                .await
                .map(drop)
            })?;
        }
        if !ended.is_empty() {
            // `VALUES` names its columns column1, column2…, in PostgreSQL and SQLite alike.
            on_pool!(db, |pool| {
                let mut update = sqlx::QueryBuilder::new(
                    "UPDATE connection_log AS c SET disconnected_at = v.column2, \
                     close_code = v.column3, reason = v.column4 FROM (",
                );
                update.push_values(&ended, |mut values, (id, (code, reason, at))| {
                    values
                        .push_bind(*id)
                        .push_bind(*at)
                        .push_bind(*code)
                        .push_bind(*reason);
                });
                update
                    .push(") AS v WHERE c.id = v.column1")
                    .build()
                    .persistent(false)
                    .execute(pool)
                    .await
                    .map(drop)
            })?;
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct ConnectionLog {
    writer: Writer<Event>,
}

impl ConnectionLog {
    /// Starts the writer task; it ends when the last handle is dropped.
    pub fn start(db: Database, dropped: IntCounter) -> Self {
        Self {
            writer: Writer::start(db, QUEUE, dropped),
        }
    }

    pub fn opened(&self, row: Opened) {
        self.writer.record(Event::Opened(row));
    }

    pub fn closed(&self, id: &str, code: u16, reason: &str) {
        self.writer.record(Event::Closed {
            id: id.to_string(),
            code,
            reason: reason.to_string(),
            at: Utc::now(),
        });
    }

    /// Waits until everything recorded so far is written (used at shutdown and in tests).
    pub async fn flush(&self) {
        self.writer.flush().await;
    }
}

//! The presence log: a row each time a connection becomes present on a topic (`online`) or stops
//! being present (`offline`, written by the sweeper when its instance died). Written through the
//! bounded queue of [`crate::writer`], so a slow or failing database never touches subscriptions;
//! dropped rows count in `palisade_presence_log_dropped_total`.

use chrono::{DateTime, Utc};

use super::Entry;
use crate::db::Database;
use crate::on_pool;
use crate::writer::Row;

/// Rows waiting for the writer: a presence row per subscription entered or left, so as many as
/// the connection log's when 10,000 subscribers arrive or leave at once. A row holds ids and a
/// topic name cut to [`crate::writer::MAX_TEXT_BYTES`], under 2 KiB.
pub const QUEUE: usize = 32_768;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Online,
    Offline,
}

#[derive(Debug)]
pub struct LogRow {
    pub entry: Entry,
    /// The instance that served the connection.
    pub instance: String,
    pub status: Status,
    pub at: DateTime<Utc>,
}

impl Row for LogRow {
    const TABLE: &'static str = "presence_log";

    async fn write(rows: &[Self], db: &Database) -> anyhow::Result<()> {
        on_pool!(db, |pool| {
            sqlx::QueryBuilder::new(
                "INSERT INTO presence_log (user_id, topic, connection_id, instance_id, status, at) ",
            )
            .push_values(rows, |mut values, row| {
                let status = match row.status {
                    Status::Online => "online",
                    Status::Offline => "offline",
                };
                values
                    .push_bind(&row.entry.user)
                    .push_bind(crate::writer::bounded(&row.entry.topic))
                    .push_bind(&row.entry.connection)
                    .push_bind(&row.instance)
                    .push_bind(status)
                    .push_bind(row.at);
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

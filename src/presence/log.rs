//! The presence log: a row each time a connection becomes present on a topic (`online`) or stops
//! being present (`offline`, written by the sweeper when its instance died). Written through the
//! bounded queue of [`crate::writer`], so a slow or failing database never touches subscriptions;
//! dropped rows count in `palisade_presence_log_dropped_total`.

use chrono::{DateTime, Utc};

use super::Entry;
use crate::db::Database;
use crate::on_pool;
use crate::writer::Row;

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

    async fn insert(&self, db: &Database) -> anyhow::Result<()> {
        let status = match self.status {
            Status::Online => "online",
            Status::Offline => "offline",
        };
        on_pool!(db, |pool| {
            sqlx::query(
                "INSERT INTO presence_log (user_id, topic, connection_id, instance_id, status, at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&self.entry.user)
            .bind(crate::writer::bounded(&self.entry.topic))
            .bind(&self.entry.connection)
            .bind(&self.instance)
            .bind(status)
            .bind(self.at)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }
}

//! The connection log: a row when a WebSocket is accepted, completed with the close code and
//! reason when it ends. Writes are awaited by the connection task itself, which shutdown waits for,
//! so no row is left open by a clean stop.

use chrono::{DateTime, Utc};

use crate::db::Database;
use crate::on_pool;

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
}

/// Inserts the row of a new connection.
#[tracing::instrument(skip_all, fields(connection_id = %row.id))]
pub async fn opened(db: &Database, row: &Opened) -> anyhow::Result<()> {
    on_pool!(db, |pool| {
        sqlx::query(
            "INSERT INTO connection_log (id, ip, user_agent, instance_id, subprotocol, connected_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.id)
        .bind(&row.ip)
        .bind(&row.user_agent)
        .bind(&row.instance_id)
        .bind(row.subprotocol)
        .bind(row.connected_at)
        .execute(pool)
        .await
        .map(drop)
    })?;
    Ok(())
}

/// Records who the connection turned out to be, once authenticated.
#[tracing::instrument(skip_all, fields(connection_id = %id))]
pub async fn identified(db: &Database, id: &str, user_id: &str) -> anyhow::Result<()> {
    on_pool!(db, |pool| {
        sqlx::query("UPDATE connection_log SET user_id = $1 WHERE id = $2")
            .bind(user_id)
            .bind(id)
            .execute(pool)
            .await
            .map(drop)
    })?;
    Ok(())
}

/// Closes out the row with how the connection ended.
#[tracing::instrument(skip_all, fields(connection_id = %id, code))]
pub async fn closed(db: &Database, id: &str, code: u16, reason: &str) -> anyhow::Result<()> {
    on_pool!(db, |pool| {
        sqlx::query("UPDATE connection_log SET disconnected_at = $1, close_code = $2, reason = $3 WHERE id = $4")
            .bind(Utc::now())
            .bind(i32::from(code))
            .bind(reason)
            .bind(id)
            .execute(pool)
            .await
            .map(drop)
    })?;
    Ok(())
}

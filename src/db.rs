//! The database: SQLite by default (a file created on first run, nothing to install) or PostgreSQL
//! when `DATABASE_URL` says `postgres://…`. Both get the same tables from `migrations/<backend>/`.
//! Queries are written once with `$N` placeholders, which both backends accept, and run on either
//! pool through [`on_pool!`].

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// The embedded default: a SQLite file in the working directory.
pub const DEFAULT_URL: &str = "sqlite://palisade.db";

/// Readiness probes and pool checkouts give up after this, so a dead database is reported
/// promptly instead of hanging the probe.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same expression against whichever pool is configured; `$pool` is bound to it.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite($pool) => $body,
            $crate::db::Database::Postgres($pool) => $body,
        }
    };
}

impl Database {
    /// Connects and applies pending migrations (idempotent).
    #[tracing::instrument(skip_all, fields(backend))]
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            tracing::Span::current().record("backend", "postgres");
            let options = PgConnectOptions::from_str(url).context("parsing DATABASE_URL")?;
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .context("connecting to PostgreSQL")?;
            Database::Postgres(pool)
        } else {
            tracing::Span::current().record("backend", "sqlite");
            let options = SqliteConnectOptions::from_str(url)
                .context("parsing DATABASE_URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // In WAL mode NORMAL syncs at checkpoints rather than at every commit: an
                // application crash loses nothing, a power cut at most the last commits, and the
                // log writers no longer hold the write lock through an fsync each.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .context("opening the SQLite database")?;
            Database::Sqlite(pool)
        };
        db.migrate().await?;
        Ok(db)
    }

    /// Wraps a pool made elsewhere (tests use `#[sqlx::test]` pools) and migrates it.
    pub async fn from_pg_pool(pool: PgPool) -> anyhow::Result<Self> {
        let db = Database::Postgres(pool);
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Database::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await,
            Database::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await,
        }
        .context("applying database migrations")
    }

    /// A round trip to the database, for `/readyz`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let check = async {
            on_pool!(self, |pool| sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop))
        };
        tokio::time::timeout(ACQUIRE_TIMEOUT, check)
            .await
            .context("the database did not answer in time")?
            .context("the database refused the query")
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }
}

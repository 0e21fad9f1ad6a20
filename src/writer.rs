//! Log rows written off the request path. Recording never blocks or fails the caller: rows go
//! into a bounded queue that one background task drains into the database, up to [`BATCH`] rows
//! at a time and in as few statements as each table allows (a multi-row `INSERT`). During a
//! connect burst the writer is one task among thousands and waits its turn at every await, so
//! what bounds its throughput is statements per row, not the database. A full queue or a failed
//! insert counts the row as dropped (each log has its own counter) instead of slowing the
//! connection path. The audit trail, the connection log and the presence log all write through
//! this.

use std::future::Future;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

use crate::db::Database;

/// Rows written at a time. Large enough that a connect burst (a connection-log row and an audit
/// row per connection) is a handful of statements; small enough that one statement holds
/// SQLite's write lock for milliseconds, and that it stays far below either backend's limit on
/// bound parameters (10 per row at most here; SQLite allows 32,766, PostgreSQL 65,535).
const BATCH: usize = 1024;

/// Bytes that one client-supplied string (a User-Agent, a header, a topic, an origin) may take in
/// a log row. Together with each log's queue length this bounds what a client can make the log
/// queues hold, and keeps a 60 KB header from being stored 60 KB at a time.
pub const MAX_TEXT_BYTES: usize = 512;

/// `text` cut to at most [`MAX_TEXT_BYTES`], at a UTF-8 character boundary. Every string a log
/// row takes from a client goes through this before the row is queued or written.
pub fn bounded(text: &str) -> &str {
    &text[..text.floor_char_boundary(MAX_TEXT_BYTES)]
}

/// One row of a log table.
pub trait Row: Send + Sync + 'static {
    /// The table, for the warning logged when a row is dropped.
    const TABLE: &'static str;

    /// Writes `rows` (at most [`BATCH`], in the order they were recorded), each statement a
    /// multi-row one. No transaction: every statement is atomic by itself, and `BEGIN` and
    /// `COMMIT` would be two more round trips, each a wait for the writer's turn. Statements are
    /// not cached (`persistent(false)`): their text changes with the number of rows, and sqlx's
    /// cache of up to 100 per pooled connection kept a prepared program for each batch size met
    /// (~1.5 KiB of SQLite heap per idle connection between 5k and 15k, by `heaptrack`).
    fn write<'a>(
        rows: &'a [Self],
        db: &'a Database,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'a
    where
        Self: Sized;
}

enum Command<R> {
    Write(R),
    /// Answered once every row queued before it has been written.
    Flush(oneshot::Sender<()>),
}

pub struct Writer<R> {
    tx: mpsc::Sender<Command<R>>,
    dropped: IntCounter,
}

// Derived `Clone` would require `R: Clone`; only the sender and the counter are cloned.
impl<R> Clone for Writer<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

impl<R: Row> Writer<R> {
    /// Starts the writer task; it ends when the last handle is dropped. At most `queue` rows wait
    /// for it (beyond that a log sheds rows rather than grow); rows that cannot be queued or
    /// written are counted in `dropped`.
    pub fn start(db: Database, queue: usize, dropped: IntCounter) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        tokio::spawn(write_loop(db, rx, dropped.clone()));
        Self { tx, dropped }
    }

    pub fn record(&self, row: R) {
        if self.tx.try_send(Command::Write(row)).is_err() {
            self.dropped.inc();
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

async fn write_loop<R: Row>(db: Database, mut rx: mpsc::Receiver<Command<R>>, dropped: IntCounter) {
    let mut commands = Vec::with_capacity(BATCH);
    let mut rows = Vec::with_capacity(BATCH);
    // Whatever has queued up while the last batch was written is taken at once; an idle writer
    // waits here for the next row.
    while rx.recv_many(&mut commands, BATCH).await > 0 {
        for command in commands.drain(..) {
            match command {
                Command::Write(row) => rows.push(row),
                // Rows queued before the flush are written before it is answered.
                Command::Flush(done) => {
                    write(&db, &mut rows, &dropped).await;
                    let _ = done.send(());
                }
            }
        }
        write(&db, &mut rows, &dropped).await;
    }
}

/// Writes `rows` and empties it. Should the batch fail, each row is retried on its own, so one
/// row the database refuses drops only itself.
async fn write<R: Row>(db: &Database, rows: &mut Vec<R>, dropped: &IntCounter) {
    if rows.is_empty() || R::write(rows, db).await.is_ok() {
        rows.clear();
        return;
    }
    for row in rows.drain(..) {
        if let Err(error) = R::write(std::slice::from_ref(&row), db).await {
            dropped.inc();
            tracing::warn!(
                error = format!("{error:#}"),
                table = R::TABLE,
                "log row dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary_and_short_text_is_kept() {
        assert_eq!(bounded("Mozilla/5.0"), "Mozilla/5.0");
        let long = "a".repeat(MAX_TEXT_BYTES - 1) + "é" + "tail";
        let cut = bounded(&long);
        assert_eq!(
            cut.len(),
            MAX_TEXT_BYTES - 1,
            "the two-byte é would end past the bound"
        );
        assert_eq!(bounded(&"x".repeat(60_000)).len(), MAX_TEXT_BYTES);
    }
}

//! Log rows written off the request path. Recording never blocks or fails the caller: rows go
//! into a bounded queue that one background task drains into the database. A full queue or a
//! failed insert counts the row as dropped (each log has its own counter) instead of slowing the
//! connection path. The audit trail and the presence log both write through this.

use std::future::Future;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

use crate::db::Database;

/// Rows waiting for the writer; beyond this a log sheds load rather than memory.
const QUEUE: usize = 4096;

/// Bytes that one client-supplied string (a User-Agent, a header, a topic, an origin) may take in
/// a log row. Together with [`QUEUE`] this bounds what a client can make the log queues hold, and
/// keeps a 60 KB header from being stored 60 KB at a time.
pub const MAX_TEXT_BYTES: usize = 512;

/// `text` cut to at most [`MAX_TEXT_BYTES`], at a UTF-8 character boundary. Every string a log
/// row takes from a client goes through this before the row is queued or written.
pub fn bounded(text: &str) -> &str {
    &text[..text.floor_char_boundary(MAX_TEXT_BYTES)]
}

/// One row of a log table.
pub trait Row: Send + 'static {
    /// The table, for the warning logged when a row is dropped.
    const TABLE: &'static str;

    fn insert<'a>(
        &'a self,
        db: &'a Database,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'a;
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
    /// Starts the writer task; it ends when the last handle is dropped. Rows that cannot be
    /// written are counted in `dropped`.
    pub fn start(db: Database, dropped: IntCounter) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
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
    // One row at a time keeps the writer simple; the queue absorbs bursts.
    while let Some(command) = rx.recv().await {
        match command {
            Command::Write(row) => {
                if let Err(error) = row.insert(&db).await {
                    dropped.inc();
                    tracing::warn!(
                        error = format!("{error:#}"),
                        table = R::TABLE,
                        "log row dropped"
                    );
                }
            }
            Command::Flush(done) => {
                let _ = done.send(());
            }
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

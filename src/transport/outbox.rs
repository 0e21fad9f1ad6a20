//! The outgoing side of a connection: a bounded queue drained by one writer task.
//!
//! Everything a connection sends goes through [`Outbox::push`], which never waits: a client that
//! reads too slowly fills its own queue and is closed as a slow consumer, so it can stall neither
//! other clients nor the other operations on its own connection.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::{mpsc, watch};

use super::protocol::{Close, code};
use crate::metrics::Metrics;

/// How long a close frame may take to reach a client that is no longer reading.
const CLOSE_FLUSH: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Message>,
    close: watch::Sender<Option<Close>>,
}

impl Outbox {
    /// Starts the writer task for `sink`; returns the outbox, a receiver that sees the close
    /// decision, and the writer's handle (it ends after sending the close frame or when the socket
    /// fails).
    pub fn start(
        sink: SplitSink<WebSocket, Message>,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> (
        Self,
        watch::Receiver<Option<Close>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (queue, rx) = mpsc::channel(capacity);
        let (close, close_rx) = watch::channel(None);
        let writer = tokio::spawn(write_loop(sink, rx, close.subscribe(), metrics));
        (Self { queue, close }, close_rx, writer)
    }

    pub fn text(&self, text: String) -> bool {
        self.push(Message::Text(text.into()))
    }

    /// Queues a message; false when the connection is closing. A full queue closes the
    /// connection as a slow consumer.
    pub fn push(&self, message: Message) -> bool {
        match self.queue.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(Close::new(
                    code::SLOW_CONSUMER,
                    "Slow consumer: send queue full",
                ));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Decides to close with `close`; the first decision wins.
    pub fn close(&self, close: Close) {
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(close);
                true
            } else {
                false
            }
        });
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Message>,
    mut close: watch::Receiver<Option<Close>>,
    metrics: Arc<Metrics>,
) {
    loop {
        // `biased`: a close decision preempts the queue, and a send stuck on a client that stopped
        // reading must not delay the close beyond CLOSE_FLUSH. `changed()` also fires when the
        // outbox is dropped, which ends the loop like an exhausted queue does.
        tokio::select! {
            biased;
            _ = close.changed() => break,
            message = queue.recv() => {
                let Some(message) = message else { break };
                // Data messages are counted; pings and the like are not.
                let size = match &message {
                    Message::Text(text) => text.len(),
                    Message::Binary(bytes) => bytes.len(),
                    _ => 0,
                };
                tokio::select! {
                    biased;
                    _ = close.changed() => break,
                    sent = sink.send(message) => {
                        if sent.is_err() {
                            return;
                        }
                        if size > 0 {
                            metrics.ws_messages.with_label_values(&["out"]).inc();
                            metrics.ws_bytes.with_label_values(&["out"]).inc_by(size as u64);
                        }
                    }
                }
            }
        }
    }
    let decided = close.borrow().clone();
    let finish = async {
        let Some(decided) = decided else {
            // The connection ended without a decision of ours: the client closed first. Closing
            // the sink flushes tungstenite's reply to the client's close frame, completing the
            // handshake instead of dropping the TCP connection.
            let _ = sink.close().await;
            return;
        };
        // What was queued before the decision (an `error`, a final notice) still goes out first,
        // except to a slow consumer, whose backlog is the problem.
        if decided.code != code::SLOW_CONSUMER {
            while let Ok(message) = queue.try_recv() {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        }
        let frame = CloseFrame {
            code: decided.code,
            reason: decided.reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
    };
    let _ = tokio::time::timeout(CLOSE_FLUSH, finish).await;
}

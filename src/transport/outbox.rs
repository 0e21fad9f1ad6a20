//! The outgoing side of a connection: a queue bounded in messages and in bytes, drained by one
//! writer task.
//!
//! Everything a connection sends goes through [`Outbox::push`], which never waits: a client that
//! reads too slowly fills its own queue and is closed as a slow consumer, so it can stall neither
//! other clients nor the other operations on its own connection. The byte bound is what keeps a
//! client that never reads from making the server hold `send_queue` large messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::watch;

use super::protocol::{self, Close, code};
use super::queue::{self, Consumer, Queue, Refused};
use crate::config::Connections;
use crate::metrics::Metrics;

/// How long a close frame may take to reach a client that is no longer reading.
const CLOSE_FLUSH: Duration = Duration::from_secs(3);

/// What the queue holds: a message, or a shared subscription's result, kept as the two parts
/// every subscriber of its group shares and joined only when written. A backlog of results then
/// costs two reference counts a message instead of a copy of each.
enum Outgoing {
    Message(Message),
    Next {
        opening: Arc<str>,
        payload: Arc<str>,
    },
}

impl Outgoing {
    /// What it costs against `connections.send_queue_bytes`: the bytes it is written as.
    fn size(&self) -> usize {
        match self {
            Outgoing::Message(Message::Text(text)) => text.len(),
            Outgoing::Message(
                Message::Binary(bytes) | Message::Ping(bytes) | Message::Pong(bytes),
            ) => bytes.len(),
            Outgoing::Message(Message::Close(frame)) => {
                frame.as_ref().map_or(0, |f| 2 + f.reason.len())
            }
            Outgoing::Next { opening, payload } => opening.len() + payload.len() + 1,
        }
    }

    fn into_message(self) -> Message {
        match self {
            Outgoing::Message(message) => message,
            Outgoing::Next { opening, payload } => {
                Message::Text(protocol::next_frame(&opening, &payload).into())
            }
        }
    }
}

#[derive(Clone)]
pub struct Outbox {
    /// Bounded by `connections.send_queue` messages.
    queue: Arc<Queue<Outgoing>>,
    close: watch::Sender<Option<Close>>,
    /// Bytes queued and not yet written: reserved by `push` before a message enters the queue,
    /// released by the writer once the socket took it. Shared by every clone, so operations
    /// pushing at once never reserve past `max_bytes` together.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// Starts the writer task for `sink`, bounded by `connections.send_queue` messages and
    /// `connections.send_queue_bytes` bytes; returns the outbox, a receiver that sees the close
    /// decision, and the writer's handle (it ends after sending the close frame or when the socket
    /// fails).
    pub fn start(
        sink: SplitSink<WebSocket, Message>,
        bounds: &Connections,
        metrics: Arc<Metrics>,
    ) -> (
        Self,
        watch::Receiver<Option<Close>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (queue, consumer) = queue::bounded(bounds.send_queue as usize);
        let (close, close_rx) = watch::channel(None);
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write_loop(
            sink,
            consumer,
            close.subscribe(),
            queued.clone(),
            metrics.clone(),
        ));
        let outbox = Self {
            queue,
            close,
            queued,
            max_bytes: bounds.send_queue_bytes.bytes(),
            metrics,
        };
        (outbox, close_rx, writer)
    }

    pub fn text(&self, text: String) -> bool {
        self.push(Message::Text(text.into()))
    }

    /// Queues a message; false when the connection is closing. A queue full in messages or in
    /// bytes closes the connection as a slow consumer.
    pub fn push(&self, message: Message) -> bool {
        self.queue_up(Outgoing::Message(message))
    }

    /// Queues a `next` message of a shared result: `opening` from [`protocol::next_opening`],
    /// `payload` the serialized result. Bounded like [`Outbox::push`].
    pub fn next(&self, opening: &Arc<str>, payload: &Arc<str>) -> bool {
        self.queue_up(Outgoing::Next {
            opening: opening.clone(),
            payload: payload.clone(),
        })
    }

    fn queue_up(&self, message: Outgoing) -> bool {
        let size = message.size();
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued.checked_add(size).filter(|&n| n <= self.max_bytes)
            });
        let Ok(before) = reserved else {
            self.close(Close::new(
                code::SLOW_CONSUMER,
                "Slow consumer: send queue bytes exceeded",
            ));
            return false;
        };
        match self.queue.push(message) {
            Ok(()) => {
                self.metrics
                    .send_queue_bytes
                    .observe((before + size) as f64);
                true
            }
            Err(refused) => {
                self.queued.fetch_sub(size, Ordering::AcqRel);
                if refused == Refused::Full {
                    self.close(Close::new(
                        code::SLOW_CONSUMER,
                        "Slow consumer: send queue full",
                    ));
                }
                false
            }
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

/// Writes queued messages until a close is decided or the outbox is dropped; false when the
/// socket failed, and nothing more can be sent on it.
async fn forward(
    sink: &mut SplitSink<WebSocket, Message>,
    queue: &Consumer<Outgoing>,
    close: &mut watch::Receiver<Option<Close>>,
    queued: &AtomicUsize,
    metrics: &Metrics,
) -> bool {
    // One wait for the close decision serves the whole loop: a new one per message registered
    // and removed a waiter each time, a measurable share of a fan-out's CPU.
    let decision = close.changed();
    tokio::pin!(decision);
    let out = ["out"];
    let (messages, bytes) = (
        metrics.ws_messages.with_label_values(&out),
        metrics.ws_bytes.with_label_values(&out),
    );
    loop {
        // `biased`: a close decision preempts the queue, and a send stuck on a client that stopped
        // reading must not delay the close beyond CLOSE_FLUSH. The decision also resolves when the
        // outbox is dropped: the connection and its operations are gone, nothing more will come.
        let message = tokio::select! {
            biased;
            _ = &mut decision => return true,
            message = queue.next() => message,
        };
        let reserved = message.size();
        let message = message.into_message();
        // Data messages are counted; pings and the like are not.
        let data = matches!(message, Message::Text(_) | Message::Binary(_));
        tokio::select! {
            biased;
            _ = &mut decision => return true,
            sent = sink.send(message) => {
                if sent.is_err() {
                    return false;
                }
                // Written: the socket's own buffer (`max_write_buffer_size`) holds it now.
                queued.fetch_sub(reserved, Ordering::AcqRel);
                if data {
                    messages.inc();
                    bytes.inc_by(reserved as u64);
                }
            }
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    queue: Consumer<Outgoing>,
    mut close: watch::Receiver<Option<Close>>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    if !forward(&mut sink, &queue, &mut close, &queued, &metrics).await {
        return;
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
            while let Some(message) = queue.pop() {
                if sink.send(message.into_message()).await.is_err() {
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

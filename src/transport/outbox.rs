//! The outgoing side of a connection: a queue bounded in messages and in bytes, drained into the
//! socket by the connection's own task.
//!
//! Everything a connection sends goes through [`Outbox::push`], which never waits: a client that
//! reads too slowly fills its own queue and is closed as a slow consumer, so it can stall neither
//! other clients nor the other operations on its own connection. The byte bound is what keeps a
//! client that never reads from making the server hold `send_queue` large messages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;

use super::protocol::{self, Close, code};
use super::queue::{self, Consumer, Queue, Refused};
use crate::config::Connections;
use crate::metrics::Metrics;
use crate::sync::lock;

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
    state: Arc<State>,
}

struct State {
    /// The close decision; the first one wins.
    decision: Mutex<Option<Close>>,
    /// Bytes queued and not yet written: reserved by `push` before a message enters the queue,
    /// released by the writer once the socket took it. Shared by every clone, so operations
    /// pushing at once never reserve past `max_bytes` together.
    queued: AtomicUsize,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

/// The connection's end of its outbox: it drains the queue into the socket. It runs inside the
/// connection's own task ([`Writer::pump`] is a branch of the connection loop) rather than in a
/// task of its own: a writer task, its future and the watch channel that told it of the close
/// were ~1.2 KiB of every idle connection.
pub struct Writer {
    sink: SplitSink<WebSocket, Message>,
    queue: Consumer<Outgoing>,
    outbox: Outbox,
}

impl Outbox {
    /// An outbox for `sink`, bounded by `connections.send_queue` messages and
    /// `connections.send_queue_bytes` bytes, and the writer that drains it.
    pub fn new(
        sink: SplitSink<WebSocket, Message>,
        bounds: &Connections,
        metrics: Arc<Metrics>,
    ) -> (Self, Writer) {
        let (queue, consumer) = queue::bounded(bounds.send_queue as usize);
        let outbox = Self {
            queue,
            state: Arc::new(State {
                decision: Mutex::new(None),
                queued: AtomicUsize::new(0),
                max_bytes: bounds.send_queue_bytes.bytes(),
                metrics,
            }),
        };
        let writer = Writer {
            sink,
            queue: consumer,
            outbox: outbox.clone(),
        };
        (outbox, writer)
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
        let state = &*self.state;
        let reserved = state
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued.checked_add(size).filter(|&n| n <= state.max_bytes)
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
                state
                    .metrics
                    .send_queue_bytes
                    .observe((before + size) as f64);
                true
            }
            Err(refused) => {
                state.queued.fetch_sub(size, Ordering::AcqRel);
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

    /// Decides to close with `close`; the first decision wins. The writer stops at once, and the
    /// connection loop with it.
    pub fn close(&self, close: Close) {
        let mut decision = lock(&self.state.decision);
        if decision.is_none() {
            *decision = Some(close);
            drop(decision);
            self.queue.wake();
        }
    }

    /// The close decided, if any.
    pub fn decision(&self) -> Option<Close> {
        lock(&self.state.decision).clone()
    }

    fn is_decided(&self) -> bool {
        lock(&self.state.decision).is_some()
    }
}

impl Writer {
    /// Writes queued messages until a close is decided (true) or the socket fails (false, and
    /// nothing more can be sent on it). The connection loop polls it as one of its branches, the
    /// same future for the loop's whole life: dropping it mid-send would lose the message.
    ///
    /// Messages are fed to the socket while the queue has more and flushed when it runs dry, so
    /// what was queued together goes out in one write: a query's `next` and `complete`, or the
    /// events a connection fell behind on. A write to a loopback or LAN peer costs microseconds
    /// of the sender's CPU whatever its size (the receiver's TCP path runs in the sender's
    /// context), so a write per message was half of what an operation cost the server.
    /// tungstenite still writes out on its own once `transport::WRITE_BATCH` bytes are fed.
    pub async fn pump(&mut self) -> bool {
        let metrics = &self.outbox.state.metrics;
        let out = ["out"];
        let (messages, bytes) = (
            metrics.ws_messages.with_label_values(&out),
            metrics.ws_bytes.with_label_values(&out),
        );
        // Whether messages were fed since the last flush.
        let mut fed = false;
        loop {
            // A close decision preempts the queue.
            if self.outbox.is_decided() {
                return true;
            }
            let Some(message) = self.queue.pop() else {
                if fed {
                    fed = false;
                    match unless_decided(&self.queue, &self.outbox, self.sink.flush()).await {
                        None => return true,
                        Some(Err(_)) => return false,
                        Some(Ok(())) => continue,
                    }
                }
                self.queue.wait().await;
                continue;
            };
            let reserved = message.size();
            let message = message.into_message();
            // Data messages are counted; pings and the like are not.
            let data = matches!(message, Message::Text(_) | Message::Binary(_));
            match unless_decided(&self.queue, &self.outbox, self.sink.feed(message)).await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(())) => fed = true,
            }
            // Fed: the socket's own buffer (`max_write_buffer_size`) holds it now.
            self.outbox
                .state
                .queued
                .fetch_sub(reserved, Ordering::AcqRel);
            if data {
                messages.inc();
                bytes.inc_by(reserved as u64);
            }
        }
    }

    /// After the connection loop: what was queued before the decision (an `error`, a final
    /// notice) goes out, except to a slow consumer, whose backlog is the problem, then the close
    /// frame. Without a decision the client closed first: closing the sink flushes tungstenite's
    /// reply to the client's close frame, completing the handshake instead of dropping the TCP
    /// connection.
    pub async fn finish(mut self) {
        let decided = self.outbox.decision();
        let finish = async {
            let Some(decided) = decided else {
                let _ = self.sink.close().await;
                return;
            };
            if decided.code != code::SLOW_CONSUMER {
                while let Some(message) = self.queue.pop() {
                    if self.sink.send(message.into_message()).await.is_err() {
                        return;
                    }
                }
            }
            let frame = CloseFrame {
                code: decided.code,
                reason: decided.reason.into(),
            };
            let _ = self.sink.send(Message::Close(Some(frame))).await;
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH, finish).await;
    }
}

/// Runs `write` (a feed or a flush of the socket) unless a close is decided first (`None`). A
/// write stuck on a client that stopped reading must not delay a close: the queue is woken by
/// every push and by the decision, and only the decision ends the wait. Generic over the write,
/// so the writer's future holds the feed's message once (every connection's task holds it).
async fn unless_decided<F: Future>(
    queue: &Consumer<Outgoing>,
    outbox: &Outbox,
    write: F,
) -> Option<F::Output> {
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            written = &mut write => return Some(written),
            () = queue.wait() => {
                if outbox.is_decided() {
                    return None;
                }
            }
        }
    }
}

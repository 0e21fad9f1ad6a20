//! One WebSocket connection, from the upgrade to its log row: the loop that multiplexes client
//! messages, keepalive, credential deadlines, control messages and the close.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::{ClientMessage, WebSocketProtocols as Protocols};
use axum::extract::ws::{Message, WebSocket};
use axum::http::HeaderMap;
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::time::{Instant, sleep_until};

use super::control::{ConnectionHandle, Control};
use super::deadlines::Clock;
use super::lifetime::Lifetime;
use super::operations::{Operations, Refused};
use super::outbox::{Outbox, Writer};
use super::protocol::{self, Close, code};
use super::queue::Consumer;
use crate::audit::{Entry, Severity};
use crate::auth::Identity;
use crate::connlog;
use crate::graphql::{Caller, recheck_parked};
use crate::registry::{IpSlot, UserSlot};
use crate::startup::AppState;

/// Reason prefix of closes the client started.
const CLIENT_CLOSED: &str = "Closed by client: ";

/// How long it then waits for the client's answering close frame; a client that never answers
/// only delays its own connection-log row by this much.
const CLOSE_ANSWER: Duration = Duration::from_secs(2);

/// Between a notice (REPLACED, REVOKED, a final rate-limit warning) and the close it announces, so
/// the subscription carrying it gets to deliver it first.
const NOTICE_GRACE: Duration = Duration::from_millis(250);

/// Pings answered before `connection_ack`. The stock client pings only once acknowledged; a client
/// that pings on before then is flooding pongs into a queue it may never read, so it is closed
/// (4429, as for a repeated init).
const PINGS_BEFORE_ACK: u32 = 3;

/// A `connection_init`'s payload, for the loop to authenticate.
struct Init(Option<serde_json::Value>);

/// What the upgrade request told us about the client.
pub struct Peer {
    pub ip: String,
    /// What `connection_init` needs of the upgrade request, until it used it. Boxed: an idle
    /// connection keeps a pointer's worth of it instead of ~150 bytes in its task.
    pub upgrade: Option<Box<Upgrade>>,
    /// This connection's share of `connections.max_per_ip`, released when it is dropped.
    pub _ip_slot: IpSlot,
}

#[derive(Default)]
pub struct Upgrade {
    pub user_agent: Option<String>,
    pub headers: HeaderMap,
    /// The `access_token` query parameter, when `auth.jwt.allow_query_token` is on.
    pub query_token: Option<String>,
}

/// Serves the connection to its end, then completes its connection-log row. The connection is set
/// up before the future exists: an async fn keeps its arguments for its whole life, and the socket
/// (dead once split) and the peer (moved into the connection) would size every connection's task.
pub fn serve(
    socket: WebSocket,
    state: AppState,
    peer: Peer,
    protocol: Protocols,
) -> impl Future<Output = ()> + Send {
    let id = uuid::Uuid::now_v7().to_string();
    let span = tracing::info_span!("connection", connection_id = %id, user_id = tracing::field::Empty, instance = %state.instance.id);
    let opened = connlog::Opened {
        id: id.clone(),
        ip: peer.ip.clone(),
        user_agent: peer.upgrade.as_ref().and_then(|u| u.user_agent.clone()),
        instance_id: state.instance.id.clone(),
        subprotocol: protocol.sec_websocket_protocol(),
        connected_at: chrono::Utc::now(),
        user_id: None,
    };
    state.metrics.connections_active.inc();
    let opened_at = Instant::now();
    let (sink, mut stream) = socket.split();
    let (outbox, mut writer) = Outbox::new(sink, &state.config.connections, state.metrics.clone());
    let (handle, control) = ConnectionHandle::new(id, state.live.clone());
    let mut connection = Connection {
        state,
        peer,
        protocol,
        span,
        outbox,
        handle,
        identity: None,
        user_slot: None,
        lifetime: Lifetime::none(),
        close_at: None,
        early_pings: 0,
        regrant_parked: false,
        log_row: Some(Box::new(opened)),
    };
    // The block uses what it captured in place: moving it into locals of its own would store
    // each twice in the task (captures keep their room for the future's whole life).
    async move {
        let close = connection.run(&mut stream, &mut writer, control).await;
        // Boxed: reached once, at the close, its timers would otherwise size every connection's
        // task for its whole life. Bound before it is awaited: a temporary in the awaited
        // expression would keep its room in the task all the same.
        let end = Box::pin(connection.end(close, stream, writer, opened_at));
        end.await;
    }
}

impl Connection {
    /// After `run`: sends what is left and the close frame, waits for the client's answer, and
    /// records the close.
    async fn end(
        mut self,
        close: Close,
        mut stream: SplitStream<WebSocket>,
        writer: Writer,
        opened_at: Instant,
    ) {
        let (state, id, span) = (
            self.state.clone(),
            self.handle.id.clone(),
            self.span.clone(),
        );
        // A connection that ended before its `connection_ack` writes its row now.
        let log_row = self.log_row.take();
        // Dropping the connection releases its registry slots (its operations were aborted when
        // `run` returned) before the close frame is sent.
        drop(self);
        writer.finish().await;
        let by_client = close.reason.starts_with(CLIENT_CLOSED);
        if close.code != code::ABNORMAL && !by_client {
            // We closed: wait for the client's close frame, completing the handshake, so clients
            // see a clean close with our code rather than a dropped connection.
            let answered = async {
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Close(_) = message {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_ANSWER, answered).await;
        }
        state.metrics.connections_active.dec();
        state
            .metrics
            .connection_seconds
            .observe(opened_at.elapsed().as_secs_f64());
        // A client may close with any code it likes; as a label that would be a series per code it
        // picks, so its closes share one.
        let label = if by_client {
            "client".to_string()
        } else {
            close.code.to_string()
        };
        state
            .metrics
            .closes_total
            .with_label_values(&[&label])
            .inc();
        tracing::info!(parent: &span, code = close.code, reason = %close.reason, "connection closed");
        if let Some(row) = log_row {
            state.connection_log.opened(*row);
        }
        state.connection_log.closed(&id, close.code, &close.reason);
    }
}

pub(super) struct Connection {
    pub(super) state: AppState,
    pub(super) peer: Peer,
    pub(super) protocol: Protocols,
    pub(super) span: tracing::Span,
    pub(super) outbox: Outbox,
    /// How resolvers and the registry reach this connection.
    pub(super) handle: ConnectionHandle,
    /// Set by a successful `connection_init`; `Some(None)` is an accepted anonymous connection.
    /// Its operations share it; `reauthenticate` replaces it.
    pub(super) identity: Option<Option<Arc<Identity>>>,
    /// This connection's share of `connections.max_per_user`, once authenticated.
    pub(super) user_slot: Option<UserSlot>,
    pub(super) lifetime: Lifetime,
    /// A close announced by a notice, due after `NOTICE_GRACE`.
    pub(super) close_at: Option<(Instant, Close)>,
    /// The connection-log row, held until `connection_ack` (or the close, for a connection that
    /// never got one) so that it is written once, with its user, instead of written and updated.
    /// Boxed: most of a connection's life it is gone.
    pub(super) log_row: Option<Box<connlog::Opened>>,
    /// Pings answered before `connection_ack`, bounded by `PINGS_BEFORE_ACK`.
    pub(super) early_pings: u32,
    /// Set when the identity changed its grants; the loop then re-checks its parked members.
    pub(super) regrant_parked: bool,
}

impl Connection {
    async fn run(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        writer: &mut Writer,
        control: Consumer<Box<Control>>,
    ) -> Close {
        let connections = &self.state.config.connections;
        let mut clock = Clock::new(&self.state.config);
        let mut operations = Operations::new(connections.max_operations as usize);
        // On shutdown this connection waits its own random share of `server.drain_period` before
        // closing, so an instance's clients do not all reconnect elsewhere in the same instant.
        // The one wait for the whole loop: a new one per turn would lock the token every
        // connection shares.
        let shutdown = self.state.shutdown.clone();
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        // The same writing future for the loop's whole life: it is dropped only when the loop
        // ends, never mid-send.
        let pump = writer.pump();
        tokio::pin!(pump);

        loop {
            // Our identity changed (`refreshAuth`, or a session re-check that found other claims).
            // Parked shared members have no task to notice, so their grants are checked again
            // here, in a task: a `member` grant may need the database.
            if std::mem::take(&mut self.regrant_parked) {
                let seats = operations.parked();
                if !seats.is_empty() {
                    tokio::spawn(recheck_parked(seats, self.handle.current_identity()));
                }
            }
            let (due_at, due) = self.next_due(&clock);
            tokio::select! {
                // Order matters: a decided close beats everything, and finished operations are
                // reaped before new messages so a reused id is not mistaken for a duplicate.
                biased;
                // A close was decided, so the writer stopped (or the socket failed): stop reading.
                written = &mut pump => return self.stopped(written),
                // Server shutdown: the close (1001, so the client reconnects elsewhere) becomes a
                // deadline, this connection's random share of the drain period from now.
                () = &mut shutting_down, if clock.drain_at.is_none() => clock.drain(&self.state.config),
                // The earliest of the connection's deadlines. One timer serves them all: a timer
                // per deadline kept ~100 bytes each in every connection's task.
                () = sleep_until(due_at) => self.on_due(due, &mut clock),
                // Session connections: was the user logged out, or is the session near expiry?
                // Boxed, like `init`: awaited rarely, their database futures would otherwise
                // size every connection's task for its whole life.
                // The writer goes on meanwhile: a session lookup must not hold up deliveries.
                _ = self.lifetime.revalidation() => {
                    let recheck = Box::pin(self.recheck_session());
                    tokio::select! {
                        biased;
                        () = recheck => {}
                        written = &mut pump => return self.stopped(written),
                    }
                }
                // Other parts of the server (registry, revocation, refreshAuth) acting on us.
                message = control.next() => self.control(*message),
                // An operation task ended: free its slot (and close on a panic).
                Some(close) = operations.reap() => {
                    tracing::error!(parent: &self.span, "an operation panicked");
                    self.outbox.close(close);
                }
                // What the client sent.
                message = stream.next() => match message {
                    None => return Close::new(code::ABNORMAL, "Connection dropped"),
                    Some(Err(error)) => {
                        if is_too_big(&error) {
                            self.outbox.close(Close::new(code::TOO_BIG, "Message too big"));
                        } else {
                            return Close::new(code::ABNORMAL, "Connection failed");
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map(|f| (f.code, f.reason.to_string())).unwrap_or((code::NORMAL, String::new()));
                        return Close::new(code, format!("{CLIENT_CLOSED}{reason}"));
                    }
                    Some(Ok(Message::Pong(_))) => clock.pong_by = None,
                    Some(Ok(Message::Ping(_))) => {} // tungstenite answers pings itself
                    Some(Ok(Message::Text(text))) => self.receive(text.as_bytes(), &mut operations).await,
                    Some(Ok(Message::Binary(bytes))) => self.receive(&bytes, &mut operations).await,
                },
            }
        }
    }

    /// Why the loop ends once the writer stopped: the close decided, or a failed socket.
    fn stopped(&self, written: bool) -> Close {
        if !written {
            return Close::new(code::ABNORMAL, "Connection failed");
        }
        self.outbox
            .decision()
            .unwrap_or_else(|| Close::new(code::INTERNAL, "Internal error"))
    }

    /// A client message. Only `connection_init` awaits, and it is boxed: the parsed message and
    /// the authentication futures would otherwise size every connection's task for its life.
    async fn receive(&mut self, raw: &[u8], operations: &mut Operations) {
        if let Some(Init(payload)) = self.handle(raw, operations) {
            Box::pin(self.init(payload)).await;
        }
    }

    /// Does what a client message asks, except `connection_init`, which it hands back.
    fn handle(&mut self, raw: &[u8], operations: &mut Operations) -> Option<Init> {
        let metrics = &self.state.metrics;
        metrics.ws_messages.with_label_values(&["in"]).inc();
        metrics
            .ws_bytes
            .with_label_values(&["in"])
            .inc_by(raw.len() as u64);
        if !self.screen(raw, operations) {
            return None;
        }
        let Ok(message) = ClientMessage::from_bytes(raw) else {
            self.outbox
                .close(Close::new(code::BAD_REQUEST, "Invalid message received"));
            return None;
        };
        match message {
            ClientMessage::ConnectionInit { payload } => return Some(Init(payload)),
            ClientMessage::Start { id, payload } => self.start(id, payload, operations),
            ClientMessage::Stop { id } => {
                // Only the legacy protocol confirms a stop.
                if operations.stop(&id) && self.protocol == Protocols::SubscriptionsTransportWS {
                    self.outbox.text(protocol::complete(&id));
                }
            }
            ClientMessage::ConnectionTerminate => self
                .outbox
                .close(Close::new(code::NORMAL, "Terminated by client")),
            ClientMessage::Ping { payload } => {
                if self.identity.is_none() {
                    self.early_pings += 1;
                    if self.early_pings > PINGS_BEFORE_ACK {
                        self.outbox.close(Close::new(
                            code::TOO_MANY_INIT,
                            "Too many pings before connection_ack",
                        ));
                        return None;
                    }
                }
                self.outbox.text(protocol::pong(payload));
            }
            ClientMessage::Pong { .. } => {}
        }
        None
    }

    pub(super) fn control(&mut self, message: Control) {
        match message {
            Control::Close {
                notice: Some(notice),
                close,
            } => {
                self.handle.notify(notice);
                self.close_at
                    .get_or_insert((Instant::now() + NOTICE_GRACE, close));
            }
            Control::Close {
                notice: None,
                close,
            } => self.outbox.close(close),
            Control::CloseSoon(close) => {
                self.close_at
                    .get_or_insert((Instant::now() + NOTICE_GRACE, close));
            }
            Control::Refresh(identity) => self.refresh(identity),
        }
    }

    fn start(&mut self, id: String, request: async_graphql::Request, operations: &mut Operations) {
        let Some(identity) = &self.identity else {
            return self
                .outbox
                .close(Close::new(code::UNAUTHORIZED, "Unauthorized"));
        };
        let caller = Caller {
            identity: identity.clone(),
            connection_id: Some(self.handle.id.clone()),
            ip: Some(self.peer.ip.clone()),
            connection: Some(self.handle.clone()),
        };
        // Taken on arrival, so the guard counts operations in the order the client sent them,
        // whatever order their tasks run in.
        let ticket = self.handle.budget.ticket();
        let started = operations.start(
            id.clone(),
            request.data(caller).data(ticket),
            self.state.schema.clone(),
            self.protocol,
            self.outbox.clone(),
        );
        match started {
            Ok(()) => {}
            Err(Refused::DuplicateId) => {
                self.outbox.close(Close::new(
                    code::DUPLICATE_ID,
                    format!("Subscriber for {id} already exists"),
                ));
            }
            Err(Refused::Full { limit }) => {
                let mut extensions = async_graphql::ErrorExtensionValues::default();
                extensions.set("code", "MAX_OPERATIONS_LIMIT");
                extensions.set("limit", limit as u64);
                let mut error = async_graphql::ServerError::new(
                    format!("Too many concurrent operations on this connection (limit {limit})"),
                    None,
                );
                error.extensions = Some(extensions);
                self.state
                    .metrics
                    .operations_total
                    .with_label_values(&["unknown", "rejected"])
                    .inc();
                self.outbox
                    .text(protocol::error(self.protocol, &id, &[error]));
            }
        }
    }

    pub(super) fn audit(
        &self,
        action: &'static str,
        severity: Severity,
        user_id: Option<String>,
        metadata: serde_json::Value,
    ) {
        self.state.audit.record(Entry {
            action,
            severity,
            user_id,
            connection_id: Some(self.handle.id.clone()),
            ip: Some(self.peer.ip.clone()),
            metadata,
        });
    }
}

/// axum hides tungstenite's error type, so its capacity error is recognised by its text
/// ("Space limit exceeded: Message too long: N > M").
fn is_too_big(error: &axum::Error) -> bool {
    error.to_string().contains("Space limit exceeded")
}

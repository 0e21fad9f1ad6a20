//! The two GraphQL-over-WebSocket subprotocols and Palisade's close codes.
//!
//! `graphql-transport-ws` (the `graphql-ws` library) is the modern one; `graphql-ws` is the legacy
//! subscriptions-transport-ws protocol some older Apollo clients still speak. Client messages of
//! both parse into async-graphql's `ClientMessage`; server messages are written here.

use async_graphql::http::WebSocketProtocols as Protocols;
use async_graphql::{Response, ServerError};
use serde::Serialize;
use serde_json::{Value, json};

/// The longest close reason a close frame can carry: a control frame's payload is at most 125
/// bytes (RFC 6455 §5.5), two of which are the code. A longer one makes the frame invalid, and the
/// client sees 1006 instead of our code.
pub const MAX_REASON_BYTES: usize = 123;

/// Why a connection was closed: a WebSocket close code and a human-readable reason. Build it with
/// [`Close::new`], the one place reasons are cut to fit a close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

impl Close {
    /// Reasons often quote what the client sent (an id, its own close reason), so they are cut to
    /// [`MAX_REASON_BYTES`] at a character boundary.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        reason.truncate(reason.floor_char_boundary(MAX_REASON_BYTES));
        Self { code, reason }
    }
}

/// Close codes. The stock graphql-ws client retries every code except 4400, 4401, 4409, 4429, 4500
/// and most 1xxx ones, so codes a client should come back from (shutdown, slow consumer, missed
/// pong) are chosen outside that list.
pub mod code {
    /// Normal closure (the client said goodbye).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down; clients reconnect, reaching another instance.
    pub const GOING_AWAY: u16 = 1001;
    /// The connection dropped without a close frame.
    pub const ABNORMAL: u16 = 1006;
    /// Policy: replaced by a newer connection of the same user, or too many connections for the
    /// user. The stock client does not reconnect, so two tabs cannot evict each other forever.
    pub const POLICY: u16 = 1008;
    /// A message exceeded `payload.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The user reconnected too often (`connections.reconnects_per_minute`); the stock client
    /// retries with its backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection exceeded its operation budget (`operations.rate_limit`, `on_exceed:
    /// disconnect`). Not 4429, which the stock client treats as fatal: this one is retried with
    /// backoff, and the new connection starts with a fresh budget.
    pub const RATE_LIMITED: u16 = 4420;
    /// A message was not valid JSON, not a message type of the negotiated subprotocol, or nested
    /// too deep to read its id.
    pub const BAD_REQUEST: u16 = 4400;
    /// `subscribe` before `connection_ack`.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Authentication failed (reason `Forbidden` for every cause), or the credentials stopped
    /// being valid (`Token expired`, `Session expired`, `Revoked`).
    pub const FORBIDDEN: u16 = 4403;
    /// No `connection_init` within `auth.connection_init_timeout`.
    pub const INIT_TIMEOUT: u16 = 4408;
    /// `subscribe` with an id that is already running.
    pub const DUPLICATE_ID: u16 = 4409;
    /// A second `connection_init`, or more pings before `connection_ack` than a client needs (the
    /// stock client pings only once acknowledged). Fatal for the stock client, as it should be.
    pub const TOO_MANY_INIT: u16 = 4429;
    /// An internal error on the server.
    pub const INTERNAL: u16 = 4500;
    /// The client read too slowly and its send queue filled up: `connections.send_queue` messages
    /// or `connections.send_queue_bytes` bytes.
    pub const SLOW_CONSUMER: u16 = 4503;
    /// A server ping went unanswered for `connections.pong_timeout`.
    pub const PONG_TIMEOUT: u16 = 4504;
}

/// The subprotocol the client asked for, among those Palisade speaks; modern one first.
pub fn negotiate<'a>(requested: impl Iterator<Item = &'a str>) -> Option<Protocols> {
    let offered: Vec<Protocols> = requested
        .flat_map(|header| header.split(','))
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    [Protocols::GraphQLWS, Protocols::SubscriptionsTransportWS]
        .into_iter()
        .find(|p| offered.contains(p))
}

/// Whether `kind` is a client message type of `protocol`. async-graphql's `ClientMessage` parses
/// both protocols' types alike (`subscribe` is an alias of `start`, `complete` of `stop`), so the
/// raw type decides which protocol a message belongs to.
pub fn accepts(protocol: Protocols, kind: &str) -> bool {
    match protocol {
        Protocols::GraphQLWS => {
            matches!(
                kind,
                "connection_init" | "subscribe" | "complete" | "ping" | "pong"
            )
        }
        Protocols::SubscriptionsTransportWS => {
            matches!(
                kind,
                "connection_init" | "start" | "stop" | "connection_terminate"
            )
        }
    }
}

/// The type that starts an operation in `protocol`.
pub fn subscribe_type(protocol: Protocols) -> &'static str {
    match protocol {
        Protocols::GraphQLWS => "subscribe",
        Protocols::SubscriptionsTransportWS => "start",
    }
}

pub fn connection_ack() -> String {
    json!({ "type": "connection_ack" }).to_string()
}

/// The legacy protocol reports a refused init as a message before the close.
pub fn connection_error(message: &str) -> String {
    json!({ "type": "connection_error", "payload": { "message": message } }).to_string()
}

pub fn keep_alive() -> String {
    json!({ "type": "ka" }).to_string()
}

pub fn pong(payload: Option<Value>) -> String {
    match payload {
        Some(payload) => json!({ "type": "pong", "payload": payload }),
        None => json!({ "type": "pong" }),
    }
    .to_string()
}

fn next_type(protocol: Protocols) -> &'static str {
    match protocol {
        Protocols::GraphQLWS => "next",
        Protocols::SubscriptionsTransportWS => "data",
    }
}

pub fn next(protocol: Protocols, id: &str, response: &Response) -> String {
    operation_message(id, next_type(protocol), Some(response))
}

/// A message about operation `id`, serialized straight to text: building a `serde_json::Value`
/// first (`json!`) allocated every name and value of the result once more, ~1.5 µs of each
/// query's `next` (perf, `palisade-bench overhead`).
fn operation_message<P: Serialize>(id: &str, kind: &str, payload: Option<P>) -> String {
    #[derive(Serialize)]
    struct Message<'a, P> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<P>,
    }
    let message = Message { id, kind, payload };
    serde_json::to_string(&message).expect("a message of strings and a result serializes")
}

/// The opening of `id`'s `next` messages, up to their payload, for results serialized once and
/// sent to many subscribers ([`next_frame`] completes it).
pub fn next_opening(protocol: Protocols, id: &str) -> String {
    let (id, kind) = (Value::from(id), next_type(protocol));
    format!(r#"{{"id":{id},"type":"{kind}","payload":"#)
}

/// A `next` message: an opening from [`next_opening`] and a serialized result.
pub fn next_frame(opening: &str, payload: &str) -> String {
    let mut frame = String::with_capacity(opening.len() + payload.len() + 1);
    frame.push_str(opening);
    frame.push_str(payload);
    frame.push('}');
    frame
}

/// Errors that end an operation before it produced a result (parse, validation, limits).
pub fn error(protocol: Protocols, id: &str, errors: &[ServerError]) -> String {
    match protocol {
        Protocols::GraphQLWS => operation_message(id, "error", Some(errors)),
        // subscriptions-transport-ws carries one error object.
        Protocols::SubscriptionsTransportWS => operation_message(id, "error", Some(errors.first())),
    }
}

pub fn complete(id: &str) -> String {
    operation_message::<()>(id, "complete", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modern_protocol_wins_when_a_client_offers_both() {
        assert_eq!(
            negotiate(["graphql-ws, graphql-transport-ws"].into_iter()),
            Some(Protocols::GraphQLWS)
        );
        assert_eq!(
            negotiate(["graphql-ws"].into_iter()),
            Some(Protocols::SubscriptionsTransportWS)
        );
        assert_eq!(negotiate(["chat"].into_iter()), None);
        assert_eq!(negotiate(std::iter::empty()), None);
    }

    #[test]
    fn a_long_reason_is_cut_to_fit_a_close_frame_at_a_character_boundary() {
        let close = Close::new(4409, "é".repeat(100));
        assert_eq!(
            close.reason.len(),
            122,
            "61 two-byte characters fit in 123 bytes"
        );
        assert!(close.reason.chars().all(|c| c == 'é'));
        assert_eq!(Close::new(1000, "bye").reason, "bye");
    }

    #[test]
    fn a_next_built_from_a_shared_payload_equals_the_one_built_whole() {
        let response = Response::new(async_graphql::Value::from_json(json!({ "a": 1 })).unwrap());
        let payload = serde_json::to_string(&response).unwrap();
        for protocol in [Protocols::GraphQLWS, Protocols::SubscriptionsTransportWS] {
            let id = "an \"odd\" id";
            let shared = next_frame(&next_opening(protocol, id), &payload);
            let whole = next(protocol, id, &response);
            let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
            assert_eq!(parse(&shared), parse(&whole));
        }
    }

    #[test]
    fn each_protocol_accepts_only_its_own_message_types() {
        let modern = Protocols::GraphQLWS;
        let legacy = Protocols::SubscriptionsTransportWS;
        for kind in ["subscribe", "complete", "ping", "pong"] {
            assert!(accepts(modern, kind) && !accepts(legacy, kind), "{kind}");
        }
        for kind in ["start", "stop", "connection_terminate"] {
            assert!(accepts(legacy, kind) && !accepts(modern, kind), "{kind}");
        }
        assert!(accepts(modern, "connection_init") && accepts(legacy, "connection_init"));
    }
}

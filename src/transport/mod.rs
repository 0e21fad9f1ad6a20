//! The WebSocket endpoint: a graphql-ws server of Palisade's own on axum's WebSocket, driving
//! async-graphql's execution. The request path reads top to bottom: upgrade (subprotocol, size
//! limits) here → the connection loop (init/auth, per-operation guards) in `connection` →
//! execution and fan-out in `operations`.

mod connection;
pub mod control;
mod deadlines;
mod frame;
mod init;
mod lifetime;
mod operations;
pub mod outbox;
pub mod protocol;
pub mod queue;
mod screen;

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::audit::{Entry, Severity};
use crate::config::{Config, OriginCheck};
use crate::registry::Refusal;
use crate::startup::AppState;
use serde_json::json;

/// Outgoing bytes tungstenite may buffer for a client beyond the messages queued in the outbox.
const WRITE_BUFFER_SLACK: usize = 1 << 20;

/// Bytes of fed frames after which tungstenite writes them out without waiting for the flush
/// (the writer flushes when its queue runs dry, see `outbox::Writer::pump`). Its buffer keeps the
/// capacity it grew to, so this bounds what a burst leaves allocated in a connection (beyond one
/// large frame), where tungstenite's default of 128 KiB would let every connection that fell
/// behind keep 128 KiB.
const WRITE_BATCH: usize = 4 << 10;

/// tungstenite allocates a socket's read buffer at the upgrade and keeps it (128 KiB by default),
/// so it is what an idle connection costs. Client frames are small (pings, pongs, a subscribe of
/// a few hundred bytes); a larger one still arrives whole, read this many bytes at a time into
/// room reserved for it, and the buffer keeps the size of the largest frame read (a
/// `connection_init` with its token, typically). 128 bytes rather than 1 KiB: an idle connection's
/// buffer is then the size of that frame, for a few more reads of the first frames.
const READ_BUFFER: usize = 128;

/// Answers `GET <graphql_path>` with `Upgrade: websocket`. Before the 101: the subprotocol
/// (400), the origin (403), the per-IP limits (429); then the size limits are set and the socket
/// goes to the connection loop.
pub async fn upgrade(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    query: Option<&str>,
    ws: WebSocketUpgrade,
) -> Response {
    let client = state.client_ip.resolve(peer.ip(), &headers);
    let requested = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(protocol) = protocol::negotiate(requested) else {
        count(&state, "protocol_rejected");
        return (
            StatusCode::BAD_REQUEST,
            "Unsupported WebSocket subprotocol: offer graphql-transport-ws (or legacy graphql-ws)",
        )
            .into_response();
    };
    if let Err(origin) = origin_allowed(&state.config, &headers) {
        count(&state, "origin_rejected");
        tracing::warn!(ip = %client, origin = %origin, "WebSocket upgrade from a foreign origin refused");
        state.audit.record(Entry {
            action: "origin_rejected",
            severity: Severity::Warn,
            user_id: None,
            connection_id: None,
            ip: Some(client.to_string()),
            metadata: json!({ "origin": origin }),
        });
        return (StatusCode::FORBIDDEN, "Origin not allowed").into_response();
    }
    let ip_slot = match state.registry.admit_ip(client).await {
        Ok(slot) => slot,
        Err(refusal) => {
            count(&state, "limit_rejected");
            tracing::warn!(ip = %client, ?refusal, "WebSocket upgrade refused by a per-IP limit");
            let retry_after = match refusal {
                Refusal::IpRate { retry_after } | Refusal::UserRate { retry_after } => {
                    retry_after.as_secs().max(1)
                }
                Refusal::IpFull | Refusal::UserFull => 60,
            };
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after.to_string())],
                "Too many connections from this address",
            )
                .into_response();
        }
    };
    let max_message = state.config.payload.max_message_bytes.bytes();
    let query_token = query
        .filter(|_| state.config.auth.jwt.allow_query_token)
        .and_then(access_token);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|agent| crate::writer::bounded(agent).to_string());
    let peer = connection::Peer {
        ip: client.to_string(),
        upgrade: Some(Box::new(connection::Upgrade {
            user_agent,
            headers,
            query_token,
        })),
        _ip_slot: ip_slot,
    };
    let tracker = state.tracker.clone();
    ws.protocols([protocol.sec_websocket_protocol()])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .write_buffer_size(WRITE_BATCH)
        .max_write_buffer_size(max_message * 4 + WRITE_BUFFER_SLACK)
        .read_buffer_size(READ_BUFFER)
        // Tracked so that shutdown waits for every connection to close and write its log row.
        .on_upgrade(move |socket| {
            tracker.track_future(connection::serve(socket, state, peer, protocol))
        })
}

/// Counts an upgrade or init outcome in `palisade_connections_total`.
pub(super) fn count(state: &AppState, outcome: &str) {
    state
        .metrics
        .connections_total
        .with_label_values(&[outcome])
        .inc();
}

/// Cross-site WebSocket hijacking rides on cookies the browser attaches by itself, so upgrades
/// carrying a cookie (and, with `check_origin: always`, every upgrade) must come from an allowed
/// origin. Returns the offending origin (`<none>` when missing).
fn origin_allowed(config: &Config, headers: &HeaderMap) -> Result<(), String> {
    let must_check =
        config.auth.check_origin == OriginCheck::Always || headers.contains_key(header::COOKIE);
    if !must_check {
        return Ok(());
    }
    let allowed = config
        .auth
        .allowed_origins
        .as_ref()
        .unwrap_or(&config.server.cors.allowed_origins);
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) if allowed.iter().any(|a| a == origin) => Ok(()),
        Some(origin) => Err(origin.chars().take(200).collect()),
        None => Err("<none>".into()),
    }
}

fn access_token(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .map(|raw| {
            percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned()
        })
}

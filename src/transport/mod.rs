//! The WebSocket endpoint: a graphql-ws server of Palisade's own on axum's WebSocket, driving
//! async-graphql's execution. The request path reads top to bottom: upgrade (subprotocol, size
//! limits) here → the connection loop (init/auth, per-operation guards) in `connection` →
//! execution and fan-out in `operations`.

mod connection;
mod operations;
mod outbox;
pub mod protocol;

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::startup::AppState;

/// Outgoing bytes tungstenite may buffer for a client beyond the messages queued in the outbox.
const WRITE_BUFFER_SLACK: usize = 1 << 20;

/// Answers `GET <graphql_path>` with `Upgrade: websocket`: refuses unknown subprotocols before
/// the 101, sets the size limits, and hands the socket to the connection loop.
pub fn upgrade(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let requested = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(protocol) = protocol::negotiate(requested) else {
        state
            .metrics
            .connections_total
            .with_label_values(&["protocol_rejected"])
            .inc();
        return (
            StatusCode::BAD_REQUEST,
            "Unsupported WebSocket subprotocol: offer graphql-transport-ws (or legacy graphql-ws)",
        )
            .into_response();
    };
    let max_message = state.config.payload.max_message_bytes.bytes();
    let peer = connection::Peer {
        ip: peer.ip().to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        headers,
    };
    let tracker = state.tracker.clone();
    ws.protocols([protocol.sec_websocket_protocol()])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .max_write_buffer_size(max_message * 4 + WRITE_BUFFER_SLACK)
        // Tracked so that shutdown waits for every connection to close and write its log row.
        .on_upgrade(move |socket| {
            tracker.track_future(connection::serve(socket, state, peer, protocol))
        })
}

//! The kernel floor of a fan-out: what delivering one event to every subscriber costs when nothing
//! but the socket writes is left. `palisade-bench floor-serve PORT` (started as `--kinds floor`)
//! speaks just enough graphql-transport-ws for the load generator: it acknowledges
//! `connection_init`, keeps every subscriber's socket, and answers each publish by writing one
//! WebSocket frame, encoded once, to all of them from two threads (the server's worker count) with
//! blocking writes: no GraphQL, no per-connection task, no queue.
//!
//! Over loopback the kernel runs the receiving side's TCP work inside the sender's write. At a rate
//! the floor keeps up with, no server writing one frame per subscriber per event has a lower p99;
//! past it, writes to readers that are already busy cost less, and a server may do better than
//! the floor (Palisade does at half its maximum rate).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::{WebSocket, accept_hdr};

use crate::client::number;

type Subscriber = WebSocket<TcpStream>;

/// Threads writing one event's frames: as many as the servers under test have workers.
const WRITERS: usize = 2;

/// How long one client may take over its handshake; the accept loop handles one at a time.
const HANDSHAKE: Duration = Duration::from_secs(20);

/// Serves on `port` until killed (the load generator's `kill_on_drop`).
pub fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).context("binding the floor's port")?;
    let subscribers: Arc<Mutex<Vec<Subscriber>>> = Arc::default();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // One client's failed handshake is its own: the run counts it as a failed connection.
        let _ = admit(stream, &subscribers);
    }
    Ok(())
}

/// Completes the upgrade and `connection_init`, then reads the first operation: a subscription
/// joins the subscribers; a publish makes this the publisher, served on a thread of its own.
fn admit(stream: TcpStream, subscribers: &Arc<Mutex<Vec<Subscriber>>>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE))?;
    let mut ws = accept_hdr(stream, protocol)?;
    let init = text(&mut ws)?;
    anyhow::ensure!(init.contains("connection_init"), "expected connection_init");
    ws.send(Message::text(r#"{"type":"connection_ack"}"#))?;
    let first = text(&mut ws)?;
    ws.get_mut().set_read_timeout(None)?;
    if first.contains("mutation") {
        let subscribers = subscribers.clone();
        std::thread::spawn(move || publisher(ws, first, &subscribers));
    } else {
        subscribers.lock().expect("lock poisoned").push(ws);
    }
    Ok(())
}

/// Answers with the subprotocol the load generator asks for (its client checks it).
#[allow(
    clippy::result_large_err,
    reason = "tungstenite's handshake callback fixes the error type"
)]
fn protocol(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let value = HeaderValue::from_static("graphql-transport-ws");
    response
        .headers_mut()
        .insert("sec-websocket-protocol", value);
    Ok(response)
}

fn text(ws: &mut Subscriber) -> anyhow::Result<String> {
    loop {
        if let Message::Text(text) = ws.read()? {
            return Ok(text.to_string());
        }
    }
}

/// Answers each publish, in order, once its frame was written to every subscriber.
fn publisher(mut ws: Subscriber, first: String, subscribers: &Mutex<Vec<Subscriber>>) {
    let mut request = Some(first);
    while let Some(publish) = request.take().or_else(|| text(&mut ws).ok()) {
        let stamp = number(&publish, "\"t\":").unwrap_or_default();
        let n = number(&publish, "\"n\":").unwrap_or_default();
        let frame = frame(&format!(
            r#"{{"id":"1","type":"next","payload":{{"data":{{"events":{{"id":"{n}-0","payload":{{"t":{stamp},"n":{n}}}}}}}}}}}"#
        ));
        let mut all = subscribers.lock().expect("lock poisoned");
        let share = all.len().div_ceil(WRITERS).max(1);
        std::thread::scope(|scope| {
            for part in all.chunks_mut(share) {
                let frame = &frame;
                // A subscriber that left is skipped: the run counts what arrived.
                scope.spawn(move || {
                    part.iter_mut()
                        .for_each(|s| drop(s.get_mut().write_all(frame)))
                });
            }
        });
        drop(all);
        let id = publish
            .split("\"id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string();
        let complete = format!(r#"{{"id":"{id}","type":"complete"}}"#);
        if ws.send(Message::text(complete)).is_err() {
            return;
        }
    }
}

/// An unmasked text frame, as a server sends it (RFC 6455 §5.2).
fn frame(payload: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload.as_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_length_as_the_protocol_says() {
        assert_eq!(frame("hi"), b"\x81\x02hi");
        let long = "x".repeat(300);
        assert_eq!(&frame(&long)[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(frame(&long).len(), 304);
    }
}

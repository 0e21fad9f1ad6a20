//! One load-generator connection: a graphql-transport-ws client that connects from a chosen
//! loopback source address, authenticates, subscribes, and then only counts what arrives.
//!
//! Frames are not parsed as JSON: a delivery is recognised by its `"type":"next"` marker, and the
//! publish timestamp is read by scanning for the `"t":` field the publisher put in the payload, so
//! the generator's own cost per frame stays far below the server's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{Message, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, client_async_with_config};

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one connection may take to be accepted, acknowledged and subscribed.
const HANDSHAKE: Duration = Duration::from_secs(20);

/// Counters shared by every connection of a run.
#[derive(Default)]
pub struct Tally {
    pub deliveries: AtomicU64,
    pub errors: AtomicU64,
    pub closed: AtomicU64,
}

/// The `n`-th source address: 127.1.0.1 upwards, 200 connections per address, so no single
/// (source, destination) pair comes near the ephemeral-port range.
pub fn source_address(n: usize) -> IpAddr {
    let host = 1 + (n / 200) as u32;
    IpAddr::V4(Ipv4Addr::from(0x7f01_0000 | (host & 0xffff)))
}

/// Microseconds since the epoch: the publisher stamps events with it, receivers subtract.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Opens a WebSocket from `source` and completes `connection_init` → `connection_ack`.
pub async fn connect(url: &str, token: &str, source: IpAddr) -> anyhow::Result<Socket> {
    let fut = async {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let host = request.uri().host().context("url has no host")?.to_string();
        let port = request.uri().port_u16().unwrap_or(80);
        let target: SocketAddr = format!("{host}:{port}")
            .parse()
            .context("url host is not an IP")?;
        if !target.ip().is_loopback() {
            bail!("the load generator only targets loopback addresses, not {target}");
        }
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(target).await?;
        stream.set_nodelay(true)?;
        // Small buffers: the generator holds thousands of sockets and reads tiny frames.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) =
            client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config)).await?;
        let init = serde_json::json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}});
        ws.send(Message::text(init.to_string())).await?;
        while let Some(message) = ws.next().await {
            if let Message::Text(text) = message? {
                if text.contains("connection_ack") {
                    return Ok(ws);
                }
                bail!("expected connection_ack, got {text}");
            }
        }
        bail!("closed before connection_ack")
    };
    tokio::time::timeout(HANDSHAKE, fut)
        .await
        .context("handshake timed out")?
}

/// Sends a `subscribe` for the events of `topic`, resuming after event `after` when given.
pub async fn subscribe(
    ws: &mut Socket,
    id: &str,
    topic: &str,
    after: Option<&str>,
) -> anyhow::Result<()> {
    let frame = serde_json::json!({
        "id": id,
        "type": "subscribe",
        "payload": {
            "query": "subscription($t: String!, $a: ID) { events(topic: $t, after: $a) { id payload } }",
            "variables": {"t": topic, "a": after},
        },
    });
    ws.send(Message::text(frame.to_string())).await?;
    Ok(())
}

/// The number after `"key":` in a delivery, without parsing the frame.
pub fn number(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = text[at..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The publish timestamp in a delivery.
fn stamp(text: &str) -> Option<u64> {
    number(text, "\"t\":")
}

/// The event id of a delivery (the stream position to resume after).
pub fn event_id(text: &str) -> Option<&str> {
    let marker = "\"events\":{\"id\":\"";
    let at = text.find(marker)? + marker.len();
    text[at..].split('"').next()
}

/// Reads until the socket closes or `stop` fires, counting deliveries and, when `latency` is
/// given, recording publish→receive microseconds. Pings are answered by tungstenite as it reads.
pub async fn receive(
    mut ws: Socket,
    tally: Arc<Tally>,
    mut latency: Option<Histogram<u64>>,
    stop: tokio_util::sync::CancellationToken,
) -> Option<Histogram<u64>> {
    loop {
        tokio::select! {
            // The run is over: leave without a close handshake, the server copes with drops.
            _ = stop.cancelled() => break,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if text.contains("\"next\"") {
                        tally.deliveries.fetch_add(1, Ordering::Relaxed);
                        if let (Some(h), Some(t)) = (latency.as_mut(), stamp(&text)) {
                            let _ = h.record(now_micros().saturating_sub(t).max(1));
                        }
                    } else if text.contains("\"error\"") {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    tally.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    latency
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_read_without_parsing_the_frame() {
        let frame = r#"{"id":"1","type":"next","payload":{"data":{"events":{"id":"5-0","payload":{"t": 1712345678901234,"n":3}}}}}"#;
        assert_eq!(stamp(frame), Some(1712345678901234));
        assert_eq!(stamp(r#"{"type":"next"}"#), None);
        assert_eq!(number(frame, "\"n\":"), Some(3));
        assert_eq!(event_id(frame), Some("5-0"));
    }

    #[test]
    fn source_addresses_stay_in_loopback() {
        assert_eq!(source_address(0).to_string(), "127.1.0.1");
        assert_eq!(source_address(15_000).to_string(), "127.1.0.76");
        assert!((0..100_000).all(|n| source_address(n).is_loopback()));
    }
}

//! The WebSocket transport: queued bytes, pings, close reasons, message types, nesting.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};

use crate::helpers::{TestApp, WsClient, spawn_app, start_binary, ws_to};

const EVENTS: &str = "subscription($topic: String!) { events(topic: $topic) { type } }";
const PUBLISH: &str = "mutation($topic: String!) { publish(topic: $topic, type: \"note\") { id } }";

/// A legacy (`graphql-ws`) connection acknowledged for `sub`.
async fn legacy_acked(app: &TestApp, sub: &str) -> WsClient {
    let mut client = app.ws("graphql-ws").await;
    let token = app.token(sub);
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    client.send(init).await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    client
}

/// The very next frame is the server's close: what was sent was neither executed nor answered.
async fn closes_at_once(client: &mut WsClient) -> u16 {
    loop {
        match client.next_frame().await {
            Message::Close(Some(frame)) => return frame.code.into(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected the close, got {other:?}"),
        }
    }
}

/// `levels` nested objects around a number, as raw JSON text.
fn nested(levels: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
}

/// Subscribes `id` to a system topic and waits until the server has processed it.
async fn follow(client: &mut WsClient, id: &str, topic: &str) {
    let subscribe = json!({ "id": id, "type": "subscribe", "payload": { "query": EVENTS, "variables": { "topic": topic } } });
    client.send(subscribe).await;
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
}

#[tokio::test]
async fn a_duplicate_id_of_three_hundred_characters_still_closes_with_4409() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    let id = "x".repeat(300);
    follow(&mut client, &id, "system:long-id").await;
    let again = json!({ "id": id, "type": "subscribe", "payload": { "query": EVENTS, "variables": { "topic": "system:long-id" } } });
    client.send(again).await;
    let (code, reason) = client.closed().await;
    assert_eq!(code, 4409);
    assert!(reason.len() <= 123, "{} bytes", reason.len());
    assert!(reason.starts_with("Subscriber for xxx"), "{reason}");
}

#[tokio::test]
async fn legacy_message_types_on_graphql_transport_ws_close_with_4400() {
    let app = spawn_app().await;
    for message in [
        json!({ "id": "1", "type": "start", "payload": { "query": "{ me { id } }" } }),
        json!({ "id": "1", "type": "stop" }),
        json!({ "type": "connection_terminate" }),
    ] {
        let mut client = app.ws_acked("mallory").await;
        client.send(message.clone()).await;
        assert_eq!(closes_at_once(&mut client).await, 4400, "{message}");
    }
}

#[tokio::test]
async fn graphql_transport_ws_message_types_on_the_legacy_protocol_close_with_4400() {
    let app = spawn_app().await;
    for message in [
        json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { id } }" } }),
        json!({ "id": "1", "type": "complete" }),
        json!({ "type": "ping" }),
        json!({ "type": "pong" }),
    ] {
        let mut client = legacy_acked(&app, "mallory").await;
        client.send(message.clone()).await;
        assert_eq!(closes_at_once(&mut client).await, 4400, "{message}");
    }
}

#[tokio::test]
async fn variables_too_deep_to_parse_refuse_only_their_operation() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    follow(&mut client, "live", "system:deep").await;
    let query = json!("query($v: JSON) { me(x: $v) { id } }");
    // Past serde_json's recursion limit (128), and within it but past max_input_nesting (32).
    for levels in [5_000, 100] {
        let deep = format!(
            r#"{{"type":"subscribe","payload":{{"query":{query},"variables":{{"v":{}}}}},"id":"deep"}}"#,
            nested(levels)
        );
        client.send_raw(Message::text(deep)).await;
        let answer = client.recv().await;
        assert_eq!(
            (answer["type"].as_str(), answer["id"].as_str()),
            (Some("error"), Some("deep"))
        );
        let extensions = &answer["payload"][0]["extensions"];
        assert_eq!(extensions["code"], "MAX_INPUT_NESTING_LIMIT", "{answer}");
        assert_eq!(extensions["limit"], 32);
        assert_eq!(extensions["measured"], levels);
    }
    // The connection and its other subscription carry on.
    app.post_as_service(PUBLISH, json!({ "topic": "system:deep" }))
        .await;
    let event = client.recv().await;
    assert_eq!(
        (event["type"].as_str(), event["id"].as_str()),
        (Some("next"), Some("live"))
    );
    app.assert_metrics(&[
        r#"palisade_payload_rejections_total{limit="MAX_INPUT_NESTING_LIMIT"} 2"#,
    ])
    .await;
}

/// An acknowledged connection whose socket takes in only a few KiB that it has not read, so what
/// the server sends it piles up on the server's side.
async fn acked_with_a_small_window(app: &TestApp, sub: &str) -> WsClient {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    let protocol = "graphql-transport-ws".parse().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol);
    let (stream, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut client = WsClient { stream };
    let token = app.token(sub);
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    client.send(init).await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    client
}

/// The value of the sample `name` in a Prometheus exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in\n{text}"))
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_4503_before_its_queue_passes_the_byte_bound() {
    let app = spawn_app().await;
    let mut client = acked_with_a_small_window(&app, "mallory").await;
    // Each ping makes the server queue a pong as large; 200 of them are 12 MB, which the message
    // bound (1024) alone would let the server hold.
    let ping = json!({ "type": "ping", "payload": { "p": "x".repeat(60_000) } });
    for _ in 0..200 {
        let sent = tokio::time::timeout(Duration::from_secs(2), client.send(ping.clone())).await;
        if sent.is_err() {
            break; // the server stopped reading: it has decided to close
        }
    }
    assert_eq!(client.closed().await.0, 4503);
    let text = app.metrics_text().await;
    let bound = "1048576"; // connections.send_queue_bytes, 1 MiB by default
    let count = sample(&text, "palisade_send_queue_bytes_count");
    let within = sample(
        &text,
        &format!(r#"palisade_send_queue_bytes_bucket{{le="{bound}"}}"#),
    );
    let small = sample(&text, r#"palisade_send_queue_bytes_bucket{le="262144"}"#);
    assert_eq!(within, count, "no queued size above the bound");
    assert!(
        small < count,
        "the queue grew past 256 KiB before the close"
    );
}

#[tokio::test]
async fn pings_before_connection_ack_are_answered_a_few_times_then_closed_with_4429() {
    let app = spawn_app().await;
    let mut client = app.ws("graphql-transport-ws").await;
    for _ in 0..10 {
        client.send(json!({ "type": "ping" })).await;
    }
    let mut pongs = 0;
    let code = loop {
        match client.next_frame().await {
            Message::Text(text) if text.contains("pong") => pongs += 1,
            Message::Close(Some(frame)) => break u16::from(frame.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((pongs, code), (3, 4429));
}

#[tokio::test]
async fn codes_a_client_closes_with_share_one_client_label() {
    let app = spawn_app().await;
    for code in 4900..4940u16 {
        let mut client = app.ws("graphql-transport-ws").await;
        let frame = CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        client.send_raw(Message::Close(Some(frame))).await;
    }
    let wanted = r#"palisade_connection_closes_total{code="client"} 40"#;
    let mut text = String::new();
    for _ in 0..100 {
        text = app.metrics_text().await;
        if text.lines().any(|line| line == wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.lines().any(|line| line == wanted), "{text}");
    assert!(!text.contains(r#"code="49"#), "{text}");
}

/// A close reason that, written raw, would end the log line and forge a red ERROR line after it,
/// reset the colour with a C1 CSI and reverse the rest of the line.
const FORGED_REASON: &str =
    "bye\n2026-12-01T00:00:00.000000Z ERROR palisade: \x1b[31mdisk full\u{9b}0m\u{202e}!";

/// Closes a fresh connection to the binary at `address` with [`FORGED_REASON`].
async fn close_with_forged_reason(address: &str) {
    let mut client = ws_to(address, "graphql-transport-ws").await;
    let frame = CloseFrame {
        code: 1000.into(),
        reason: FORGED_REASON.into(),
    };
    client.send_raw(Message::Close(Some(frame))).await;
    let _ = client.stream.next().await;
}

#[tokio::test]
async fn a_close_reason_cannot_forge_a_line_in_the_pretty_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hardening.yaml");
    std::fs::write(
        &config,
        "server:\n  listen: 127.0.0.1:0\nlogging:\n  format: pretty\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("p.db").display()),
        )
        .env(
            "PALISADE_JWT_SECRET",
            "a-hostile-transport-test-secret-of-40-bytes",
        )
        .env_remove("RUST_LOG")
        .env_remove("REDIS_URL")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the server logs in time")
            .unwrap()
            .expect("the server is running")
    };
    let address = loop {
        let line = next_line().await;
        if let Some((_, address)) = line.split_once(" listening address=") {
            break address.trim().to_string();
        }
    };
    close_with_forged_reason(&address).await;
    let mut seen = Vec::new();
    loop {
        let line = next_line().await;
        seen.push(line.clone());
        if line.contains("connection closed") {
            break;
        }
    }
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("ERROR palisade: ") && !l.contains("connection closed")),
        "{seen:#?}"
    );
    let raw = |c: char| matches!(c, '\x1b' | '\u{9b}' | '\u{202e}');
    assert!(!seen.iter().any(|l| l.contains(raw)), "{seen:#?}");
    let closed = seen.last().unwrap();
    let escaped =
        r"bye\n2026-12-01T00:00:00.000000Z ERROR palisade: \u{1b}[31mdisk full\u{9b}0m\u{202e}!";
    assert!(closed.contains(escaped), "{closed}");
}

#[tokio::test]
async fn a_close_reason_stays_inside_its_json_string_in_the_json_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = "server:\n  listen: 127.0.0.1:0\nlogging:\n  format: json\n";
    let secret = (
        "PALISADE_JWT_SECRET",
        "a-hostile-transport-test-secret-of-40-bytes",
    );
    let mut binary = start_binary(dir.path(), config, &[secret]).await;
    close_with_forged_reason(&binary.address).await;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), binary.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the server is running");
        // serde_json escapes C0 controls; the C1 CSI and the bidi override must not be raw either.
        assert!(!line.contains(['\u{9b}', '\u{202e}']), "{line:?}");
        let entry: serde_json::Value =
            serde_json::from_str(&line).expect("each line is one JSON object");
        if entry["fields"]["message"] == "connection closed" {
            let reason = format!("Closed by client: {FORGED_REASON}");
            assert_eq!(entry["fields"]["reason"], reason.as_str());
            break;
        }
    }
}

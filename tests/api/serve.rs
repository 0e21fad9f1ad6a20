//! The real binary, as an operator runs it.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};

use crate::helpers::{Binary, start_binary, ws_to};

const SECRET: &str = "serve-test-secret-of-32-bytes-or-more";

#[tokio::test]
async fn serve_writes_json_logs_whose_connection_lines_carry_connection_user_and_instance() {
    let dir = tempfile::tempdir().unwrap();
    let Binary {
        mut child,
        address,
        logged: mut seen,
        mut lines,
    } = start_binary(
        dir.path(),
        "server:\n  listen: 127.0.0.1:0\nlogging:\n  format: json\n",
        &[("PALISADE_JWT_SECRET", SECRET)],
    )
    .await;

    let secret = palisade::auth::secret::HmacSecret {
        bytes: SECRET.as_bytes().to_vec(),
        development: false,
    };
    let token = palisade::auth::jwt::mint(
        &secret,
        &Default::default(),
        "alice",
        Default::default(),
        Duration::from_secs(60),
    )
    .unwrap();
    let mut ws = ws_to(&address, "graphql-transport-ws").await.stream;
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": { "token": token } }).to_string(),
    ))
    .await
    .unwrap();
    use futures_util::StreamExt;
    let ack = ws.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"));
    ws.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let _ = ws.next().await;

    // Wait for the connection's last line, then stop the server as an init system would.
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let entry: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let done = entry["fields"]["message"] == "connection closed";
        seen.push(entry);
        if done {
            break;
        }
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    while let Ok(Some(line)) = lines.next_line().await {
        seen.push(serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")));
    }
    assert!(
        child.wait().await.unwrap().success(),
        "exit 0 after SIGTERM"
    );

    let closed = seen
        .iter()
        .find(|e| e["fields"]["message"] == "connection closed")
        .unwrap();
    let span = &closed["span"];
    assert!(span["connection_id"].is_string(), "{closed}");
    assert_eq!(span["user_id"], "alice", "{closed}");
    assert!(span["instance"].is_string(), "{closed}");
    let everything = seen
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!everything.contains(&token), "a token reached the logs");
    assert!(
        seen.iter().any(|e| e["fields"]["message"] == "stopped"),
        "{everything}"
    );
}

use palisade::db::Database;

use crate::helpers::{connection_rows, spawn_app, spawn_app_with};

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_writes_their_rows_and_stops_listening() {
    let mut app = spawn_app().await;
    let mut first = app.ws_acked("alice").await;
    let mut second = app.ws_acked("bob").await;
    let addr = app.addr;
    let url = app.database_url.clone().unwrap();

    app.begin_shutdown();
    assert_eq!(first.closed().await, (1001, "Server shutting down".into()));
    assert_eq!(second.closed().await.0, 1001);
    app.stopped().await.expect("a clean shutdown returns Ok");

    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
    let db = Database::connect(&url).await.unwrap();
    let rows = connection_rows(&db).await;
    assert_eq!(
        rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        [Some(1001), Some(1001)]
    );
}

#[tokio::test]
async fn an_http_request_in_flight_at_shutdown_is_finished_before_the_server_stops() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut app = spawn_app().await;
    let body = serde_json::json!({ "query": "{ me { id } }" }).to_string();
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.token("late"),
        body.len()
    );
    // Half the body, then shutdown, then the rest: the request is in flight throughout.
    let (first, rest) = body.split_at(body.len() / 2);
    socket
        .write_all(format!("{head}{first}").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    app.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    socket.write_all(rest.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(r#"{"data":{"me":{"id":"late"}}}"#),
        "{response}"
    );
    app.stopped().await.unwrap();
}

#[tokio::test]
async fn shutdown_spreads_websocket_closes_over_the_drain_period() {
    use std::time::{Duration, Instant};
    let mut app = crate::helpers::spawn_app_with(|c| {
        c.server.drain_period = palisade::config::units::Duration::secs(2);
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(app.ws_acked(&format!("user-{i}")).await);
    }

    let began = Instant::now();
    app.begin_shutdown();
    let closes = futures_util::future::join_all(clients.iter_mut().map(|client| async {
        let close = client.closed().await;
        (close.0, began.elapsed())
    }))
    .await;
    app.stopped().await.unwrap();

    assert!(closes.iter().all(|(code, _)| *code == 1001), "{closes:?}");
    let first = closes.iter().map(|(_, at)| *at).min().unwrap();
    let last = closes.iter().map(|(_, at)| *at).max().unwrap();
    // Twenty closes drawn uniformly over 2 s all landing within 0.5 s of each other has a
    // probability below 1e-10; all at once (no drain) lands them within milliseconds.
    assert!(
        last - first > Duration::from_millis(500),
        "closes were not spread: {first:?}..{last:?}"
    );
}

/// The queue length the kernel gives the listener on `port`, as `ss` reports it (the Send-Q of a
/// listening socket).
fn listen_queue_of(port: u16) -> u32 {
    let output = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is installed; scripts/test.sh installs it");
    let text = String::from_utf8(output.stdout).unwrap();
    let columns: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(columns.first(), Some(&"LISTEN"), "{text}");
    columns[2].parse().unwrap()
}

#[tokio::test]
async fn the_listener_queues_as_many_handshaken_connections_as_listen_backlog_says() {
    let app = spawn_app_with(|c| c.server.listen_backlog = 77).await;
    assert_eq!(listen_queue_of(app.addr.port()), 77);
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let app = spawn_app().await;
    assert_eq!(
        listen_queue_of(app.addr.port()),
        4096.min(somaxconn),
        "the default, as far as the kernel allows it"
    );
}

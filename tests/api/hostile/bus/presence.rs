//! Presence bookkeeping under subscription churn: bounded while the worker is stuck, and one
//! JOIN and one LEAVE per topic however fast a client cycles.

use std::time::Duration;

use serde_json::{Value, json};

use super::{PATIENCE, complete, publish, roomy, subscribe, until};
use crate::helpers::{TestApp, spawn_app_with, spawn_app_with_redis, unique_prefix};

/// A Redis server of the test's own that it can freeze (SIGSTOP) as a hung Redis would be: every
/// call then waits until its timeout.
struct FrozenRedis {
    port: u16,
    process: std::process::Child,
}

impl FrozenRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        // Owned before waiting, so the server is stopped even if it never answers.
        let redis = Self { port, process };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {port} did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for FrozenRedis {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test]
async fn subscription_churn_while_presence_is_stuck_drops_joins_past_the_presence_queue() {
    let redis = FrozenRedis::start().await;
    let app = spawn_app_with_redis(&redis.url(), |c| {
        roomy(c);
        c.streams.key_prefix = unique_prefix();
        c.streams.presence_queue = 8;
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    subscribe(&mut client, "warm", "system:warm", None).await;
    // Once an event goes through, the bus is in place and only presence needs Redis.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(publish(&app, "system:warm").await.status().is_success());
        let next = tokio::time::timeout(Duration::from_millis(200), client.recv()).await;
        if next.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event came through"
        );
    }

    let own = app.sample("palisade_topics_active").await.unwrap();
    redis.signal("-STOP");
    const CHURN: usize = 200;
    for n in 0..CHURN {
        let topic = format!("system:churn-{n}");
        subscribe(&mut client, &n.to_string(), &topic, None).await;
    }
    // The worker is stuck on its first batch; the queue takes 8 joins, and no join waits for
    // room: every subscription has started while Redis is still frozen.
    let dropped = until(&app, "palisade_presence_queue_dropped_total", |v| v > 0.0).await;
    until(&app, "palisade_topics_active", |v| v >= own + CHURN as f64).await;
    let dropped = until(&app, "palisade_presence_queue_dropped_total", |v| {
        v >= (CHURN - 8 - 8) as f64
    })
    .await
    .max(dropped);
    for n in 0..CHURN {
        complete(&mut client, &n.to_string()).await;
    }
    until(&app, "palisade_topics_active", |v| v == own).await;
    // The bound, and a leave for each subscription that joined; the dropped ones queue none.
    let queued = app.sample("palisade_presence_queue_length").await.unwrap();
    let joined = CHURN as f64 - dropped;
    assert!(
        queued <= 8.0 + joined && joined <= 16.0,
        "{queued} commands queued, {dropped} dropped"
    );

    redis.signal("-CONT");
    until(&app, "palisade_presence_queue_length", |v| v == 0.0).await;
    let dropped_after = app.sample("palisade_presence_queue_dropped_total").await;
    assert!(dropped_after.unwrap() <= CHURN as f64);
}

/// The presence log's (user, status) rows.
async fn presence_rows(app: &TestApp) -> Vec<(String, String)> {
    palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query_as("SELECT user_id, status FROM presence_log ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

#[tokio::test]
async fn subscription_churn_on_one_topic_shows_watchers_one_join_and_one_leave() {
    let app = spawn_app_with(roomy).await;
    const TOPIC: &str = "system:lobby";
    let mut watcher = app.ws_acked("bob").await;
    let presence = json!({ "query": "subscription($t: String!) { presence(topic: $t) { type userId } }", "variables": { "t": TOPIC } });
    watcher
        .send(json!({ "id": "p", "type": "subscribe", "payload": presence }))
        .await;
    let change = |message: &Value| {
        let event = &message["payload"]["data"]["presence"];
        format!(
            "{} {}",
            event["type"].as_str().unwrap(),
            event["userId"].as_str().unwrap()
        )
    };
    assert_eq!(change(&watcher.recv().await), "JOIN bob");
    let own = until(&app, "palisade_topics_active", |v| v >= 1.0).await;

    let mut churner = app.ws_acked("alice").await;
    for _ in 0..300 {
        subscribe(&mut churner, "c", TOPIC, None).await;
        until(&app, "palisade_topics_active", |v| v > own).await;
        complete(&mut churner, "c").await;
        until(&app, "palisade_topics_active", |v| v == own).await;
    }
    // The LEAVE comes once alice has been gone for the linger (2s by default).
    let mut seen = Vec::new();
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(4), watcher.recv()).await {
        seen.push(change(&message));
    }
    assert_eq!(seen, ["JOIN alice", "LEAVE alice"]);
    // Rows are written in the background.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let alice = loop {
        let alice: Vec<String> = presence_rows(&app)
            .await
            .into_iter()
            .filter(|(user, _)| user == "alice")
            .map(|(_, status)| status)
            .collect();
        if alice.len() >= 2 || tokio::time::Instant::now() > deadline {
            break alice;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        alice,
        ["online", "offline"],
        "one pair of rows, not one per cycle"
    );
}

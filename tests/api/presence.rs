//! Presence: who is online on a topic, on one instance and across several sharing a Redis.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use palisade::bus::{Bus, MemoryBus};
use palisade::config::{Config, Retention, Streams};
use palisade::db::Database;
use palisade::metrics::Metrics;
use palisade::presence::{Presence, Setup};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Binary, PrivateRedis, TestApp, WsClient, redis_url, spawn_app, spawn_app_on, spawn_instance,
    start_binary, unique_prefix, ws_to,
};

/// Any authenticated user may subscribe to `system:*` topics.
const TOPIC: &str = "system:lobby";
/// How long a test waits for a state it polls for.
const PATIENCE: Duration = Duration::from_secs(15);

fn short_ttl(c: &mut Config) {
    c.streams.presence_ttl = "3s".parse().unwrap();
}

async fn subscribe(client: &mut WsClient, id: &str, query: &str) {
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": { "t": TOPIC } } }))
        .await;
}

async fn subscribe_events(client: &mut WsClient, id: &str) {
    subscribe(
        client,
        id,
        "subscription($t: String!) { events(topic: $t) { id } }",
    )
    .await;
}

/// A connection of `user` following the presence of [`TOPIC`].
async fn watch(app: &TestApp, user: &str) -> WsClient {
    let mut client = app.ws_acked(user).await;
    subscribe(
        &mut client,
        "p",
        "subscription($t: String!) { presence(topic: $t) { type userId topic at } }",
    )
    .await;
    client
}

/// The next presence event: (type, user).
async fn next_change(client: &mut WsClient) -> (String, String) {
    let message = client.recv().await;
    let event = &message["payload"]["data"]["presence"];
    assert_eq!(event["topic"], TOPIC, "{message}");
    (
        event["type"].as_str().unwrap().to_string(),
        event["userId"].as_str().unwrap().to_string(),
    )
}

fn change(kind: &str, user: &str) -> (String, String) {
    (kind.to_string(), user.to_string())
}

/// `Query.presence` on `app`: (user, connections), sorted by user.
async fn online(app: &TestApp) -> Vec<(String, i64)> {
    let answer = app
        .post(
            "reader",
            "query($t: String!) { presence(topic: $t) { userId connections since } }",
            json!({ "t": TOPIC }),
        )
        .await;
    let entries = answer["data"]["presence"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"));
    entries
        .iter()
        .map(|e| {
            assert!(e["since"].is_string(), "{e}");
            (
                e["userId"].as_str().unwrap().to_string(),
                e["connections"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Polls `Query.presence` until it lists exactly `expected`.
async fn wait_online(app: &TestApp, expected: &[(&str, i64)]) {
    let expected: Vec<(String, i64)> = expected.iter().map(|(u, n)| (u.to_string(), *n)).collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = online(app).await;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "online {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_user_joins_with_the_first_connection_and_leaves_with_the_last() {
    let app = spawn_app().await;
    let mut watcher = watch(&app, "watcher").await;
    assert_eq!(next_change(&mut watcher).await, change("JOIN", "watcher"));

    let mut first = app.ws_acked("alice").await;
    subscribe_events(&mut first, "e").await;
    assert_eq!(next_change(&mut watcher).await, change("JOIN", "alice"));
    wait_online(&app, &[("alice", 1), ("watcher", 1)]).await;

    // A second connection of alice, and a second subscription on it: no JOIN of its own.
    let mut second = app.ws_acked("alice").await;
    subscribe_events(&mut second, "e1").await;
    subscribe(
        &mut second,
        "e2",
        "subscription($t: String!) { presence(topic: $t) { userId } }",
    )
    .await;
    wait_online(&app, &[("alice", 2), ("watcher", 1)]).await;
    let mut bob = app.ws_acked("bob").await;
    subscribe_events(&mut bob, "e").await;
    assert_eq!(
        next_change(&mut watcher).await,
        change("JOIN", "bob"),
        "alice did not join twice"
    );

    // The first connection unsubscribes: alice is still online through the second.
    first.send(json!({ "id": "e", "type": "complete" })).await;
    wait_online(&app, &[("alice", 1), ("bob", 1), ("watcher", 1)]).await;
    second.send(json!({ "id": "e1", "type": "complete" })).await;
    drop(bob);
    assert_eq!(
        next_change(&mut watcher).await,
        change("LEAVE", "bob"),
        "alice did not leave"
    );
    // Closing the last connection ends its last subscription.
    drop(second);
    assert_eq!(next_change(&mut watcher).await, change("LEAVE", "alice"));
    wait_online(&app, &[("watcher", 1)]).await;
}

#[tokio::test]
async fn presence_needs_the_subscribe_grant_of_the_topic() {
    let app = spawn_app().await;
    let query = "query { presence(topic: \"user:alice\") { userId } }";
    let answer = app.post("mallory", query, json!({})).await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{answer}"
    );
    assert!(app.post("alice", query, json!({})).await["data"]["presence"].is_array());

    let mut client = app.ws_acked("mallory").await;
    client
        .send(json!({ "id": "p", "type": "subscribe", "payload": { "query": "subscription { presence(topic: \"user:alice\") { userId } }" } }))
        .await;
    let refused = client.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "FORBIDDEN");
    // Nor can the internal topic carrying presence be followed directly.
    let internal = app
        .post(
            "alice",
            "query { presence(topic: \"$presence:system:lobby\") { userId } }",
            json!({}),
        )
        .await;
    assert_eq!(internal["errors"][0]["extensions"]["code"], "FORBIDDEN");
}

#[tokio::test]
async fn the_presence_query_on_one_instance_lists_users_connected_to_another() {
    let prefix = unique_prefix();
    let a = spawn_instance(&redis_url(), &prefix, |_| {}).await;
    let b = spawn_instance(&redis_url(), &prefix, |_| {}).await;
    let mut alice = b.ws_acked("alice").await;
    subscribe_events(&mut alice, "e").await;
    let mut again = a.ws_acked("alice").await;
    subscribe_events(&mut again, "e").await;
    wait_online(&a, &[("alice", 2)]).await;
    drop(alice);
    wait_online(&a, &[("alice", 1)]).await;
    drop(again);
    wait_online(&b, &[]).await;
}

#[tokio::test]
async fn an_instance_shutting_down_takes_its_users_offline_without_waiting_for_the_ttl() {
    let prefix = unique_prefix();
    let a = spawn_instance(&redis_url(), &prefix, |_| {}).await;
    let mut b = spawn_instance(&redis_url(), &prefix, |_| {}).await;
    let mut alice = b.ws_acked("alice").await;
    subscribe_events(&mut alice, "e").await;
    wait_online(&a, &[("alice", 1)]).await;
    b.begin_shutdown();
    assert_eq!(alice.closed().await.0, 1001);
    b.stopped().await.unwrap();
    // At once, not after the default presence_ttl of 30s.
    assert_eq!(online(&a).await, []);
}

#[tokio::test]
async fn a_presence_subscriber_on_one_instance_sees_users_join_and_leave_on_another() {
    let prefix = unique_prefix();
    let a = spawn_instance(&redis_url(), &prefix, |_| {}).await;
    let b = spawn_instance(&redis_url(), &prefix, |_| {}).await;
    let mut watcher = watch(&a, "watcher").await;
    assert_eq!(next_change(&mut watcher).await, change("JOIN", "watcher"));
    let mut alice = b.ws_acked("alice").await;
    subscribe_events(&mut alice, "e").await;
    assert_eq!(next_change(&mut watcher).await, change("JOIN", "alice"));
    drop(alice);
    assert_eq!(next_change(&mut watcher).await, change("LEAVE", "alice"));
}

#[tokio::test]
async fn a_killed_instance_is_forgotten_within_the_presence_ttl() {
    let prefix = unique_prefix();
    let a = spawn_instance(&redis_url(), &prefix, short_ttl).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "server:\n  listen: 127.0.0.1:0\nlogging:\n  format: json\nstreams:\n  key_prefix: {prefix}\n  presence_ttl: 3s\n"
    );
    let redis = redis_url();
    let Binary {
        mut child,
        address,
        mut lines,
        ..
    } = start_binary(
        dir.path(),
        &config,
        &[
            (
                "PALISADE_JWT_SECRET",
                "integration-test-secret-of-32-bytes-or-more",
            ),
            ("REDIS_URL", &redis),
        ],
    )
    .await;
    // Read on, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let mut alice = ws_to(&address, "graphql-transport-ws").await;
    alice
        .send(json!({ "type": "connection_init", "payload": { "token": a.token("alice") } }))
        .await;
    assert_eq!(alice.recv().await["type"], "connection_ack");
    subscribe_events(&mut alice, "e").await;
    wait_online(&a, &[("alice", 1)]).await;
    let mut watcher = watch(&a, "watcher").await;
    let mut joined = vec![
        next_change(&mut watcher).await,
        next_change(&mut watcher).await,
    ];
    joined.sort();
    assert_eq!(joined, [change("JOIN", "alice"), change("JOIN", "watcher")]);

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // Within presence_ttl (3s) and a sweep (1s); the helper's wait is 10s.
    assert_eq!(next_change(&mut watcher).await, change("LEAVE", "alice"));
    wait_online(&a, &[("watcher", 1)]).await;
    let rows = presence_rows(&a.state.db, 2).await;
    assert!(
        rows.iter().any(|(user, status, instance)| user == "alice"
            && status == "offline"
            && *instance != a.state.instance.id),
        "the sweeper logged alice offline, on the killed instance: {rows:?}"
    );
    a.assert_metrics(&["palisade_redis_swept_total{kind=\"presence_lease\"} 1"])
        .await;
}

/// The presence log's (user, status, instance) rows, once there are at least `count`.
async fn presence_rows(db: &Database, count: usize) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let rows: Vec<(String, String, String)> = palisade::on_pool!(db, |pool| {
            sqlx::query_as("SELECT user_id, status, instance_id FROM presence_log ORDER BY id")
                .fetch_all(pool)
                .await
                .unwrap()
        });
        if rows.len() >= count || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_presence_log_has_a_row_per_connection_going_online_and_offline() {
    let app = spawn_app().await;
    let mut alice = app.ws_acked("alice").await;
    subscribe_events(&mut alice, "e").await;
    wait_online(&app, &[("alice", 1)]).await;
    drop(alice);
    wait_online(&app, &[]).await;
    let id = &app.state.instance.id;
    assert_eq!(
        presence_rows(&app.state.db, 2).await,
        [
            ("alice".to_string(), "online".to_string(), id.clone()),
            ("alice".to_string(), "offline".to_string(), id.clone())
        ]
    );
}

async fn only_expired_presence_rows_are_deleted(app: &TestApp) {
    let db = &app.state.db;
    let now = Utc::now();
    for (user, age) in [
        ("old", TimeDelta::days(31)),
        ("recent", TimeDelta::days(29)),
    ] {
        palisade::on_pool!(db, |pool| sqlx::query(
            "INSERT INTO presence_log (user_id, topic, connection_id, instance_id, status, at) VALUES ($1, 't', 'c', 'i', 'online', $2)"
        )
        .bind(user)
        .bind(now - age)
        .execute(pool)
        .await
        .map(drop))
        .unwrap();
    }
    let removed = palisade::retention::run_once(db, &Retention::default(), &app.state.metrics)
        .await
        .unwrap();
    assert!(removed.contains(&("presence_log", 1)), "{removed:?}");
    let left: Vec<String> = palisade::on_pool!(db, |pool| sqlx::query_scalar(
        "SELECT user_id FROM presence_log"
    )
    .fetch_all(pool)
    .await)
    .unwrap();
    assert_eq!(left, ["recent"]);
    app.assert_metrics(&["palisade_retention_deleted_total{table=\"presence_log\"} 1"])
        .await;
}

#[tokio::test]
async fn retention_deletes_only_expired_presence_rows_on_sqlite() {
    only_expired_presence_rows_are_deleted(&spawn_app().await).await;
}

#[sqlx::test(migrations = false)]
async fn retention_deletes_only_expired_presence_rows_on_postgres(pool: sqlx::PgPool) {
    let app = spawn_app_on(Database::from_pg_pool(pool).await.unwrap(), |_| {}).await;
    only_expired_presence_rows_are_deleted(&app).await;
}

/// Every presence key under `prefix`.
async fn presence_keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:presence*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            keys.sort();
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn presence_keys_vanish_once_everyone_has_left() {
    let prefix = unique_prefix();
    let a = spawn_instance(&redis_url(), &prefix, |_| {}).await;
    let b = spawn_instance(&redis_url(), &prefix, |_| {}).await;
    let mut clients = Vec::new();
    for (n, app) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut client = app.ws_acked(&format!("user-{}", n % 3)).await;
        subscribe_events(&mut client, "e").await;
        clients.push(client);
    }
    wait_online(&a, &[("user-0", 2), ("user-1", 1), ("user-2", 1)]).await;
    assert_eq!(
        presence_keys(&prefix).await,
        [
            format!("{prefix}:presence:leases"),
            format!("{prefix}:presence:{{{TOPIC}}}:connections"),
            format!("{prefix}:presence:{{{TOPIC}}}:users"),
        ]
    );
    drop(clients);
    wait_online(&a, &[]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !presence_keys(&prefix).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            presence_keys(&prefix).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn presence_outlives_a_redis_outage_without_holding_anyone_up() {
    let mut redis = PrivateRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let metrics = Arc::new(Metrics::new("test"));
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(16, 16));
    let streams = Streams {
        key_prefix: unique_prefix(),
        presence_ttl: "3s".parse().unwrap(),
        ..Streams::default()
    };
    let presence = Presence::start(Setup {
        redis: Some(&client),
        streams: &streams,
        instance: "outage".into(),
        bus,
        db: Database::connect(&format!("sqlite://{}", dir.path().join("p.db").display()))
            .await
            .unwrap(),
        metrics: metrics.clone(),
        shutdown: CancellationToken::new(),
    })
    .unwrap();

    redis.kill().await;
    // Each call gives up within its bound; none fails the caller.
    let entered =
        tokio::time::timeout(Duration::from_secs(5), presence.enter(TOPIC, "alice", "c1"))
            .await
            .expect("entering does not wait on a dead Redis");
    assert!(presence.online(TOPIC).await.is_err());
    let errors = metrics
        .cluster_errors
        .with_label_values(&["presence"])
        .get();
    assert!(errors >= 2, "counted: {errors}");

    // Redis is back (empty): the refresh joins alice again.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(snapshot) = presence.online(TOPIC).await
            && snapshot
                .users
                .iter()
                .any(|o| o.user == "alice" && o.connections == 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice was not joined again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(entered);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !presence.online(TOPIC).await.unwrap().users.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice did not leave"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

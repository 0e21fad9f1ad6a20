//! Leases over time: the slots of a crashed instance run out, churn leaves no key behind, and a
//! Redis outage or restart neither locks users out nor loses the count for good.

use std::process::Stdio;
use std::time::{Duration, Instant};

use palisade::config::{Config, OnUserLimit};
use redis::AsyncCommands;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{CONVERGE, MANY, admit, assert_open, connect};
use crate::helpers::{
    PrivateRedis, WsClient, redis_url, spawn_app_with_redis, spawn_instance, unique_prefix,
};

async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The registry's keys under `prefix`.
async fn registry_keys(redis: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut found = redis
        .scan_match::<_, String>(format!("{prefix}:registry:*"))
        .await
        .unwrap();
    while let Some(key) = futures_util::StreamExt::next(&mut found).await {
        keys.push(key.unwrap());
    }
    keys
}

/// Runs the real binary against the shared Redis under `prefix` with a 3-second lease, holding at
/// most two connections per user; returns it and its address.
async fn spawn_binary(dir: &std::path::Path, prefix: &str) -> (tokio::process::Child, String) {
    let config = dir.join("hardening.yaml");
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\nlogging:\n  format: json\nstreams:\n  key_prefix: {prefix}\n  presence_ttl: 3s\nconnections:\n  max_per_user: 2\n  on_user_limit: reject_new\n  reconnects_per_minute: {MANY}\n"
    );
    std::fs::write(&config, yaml).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .current_dir(dir)
        .env(
            "PALISADE_JWT_SECRET",
            "integration-test-secret-of-32-bytes-or-more",
        )
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("p.db").display()),
        )
        .env("REDIS_URL", redis_url())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the server starts")
            .unwrap()
            .expect("the server logs");
        let entry: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if entry["fields"]["message"] == "listening" {
            let address = entry["fields"]["address"].as_str().unwrap().to_string();
            // The rest of the log is not read; draining it keeps the child from blocking on it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, address);
        }
    }
}

#[tokio::test]
async fn the_slots_of_a_crashed_instance_are_forgotten_within_the_presence_ttl() {
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let (mut crashing, address) = spawn_binary(dir.path(), &prefix).await;
    let survivor = spawn_instance(&redis_url(), &prefix, |c| {
        c.streams.presence_ttl = palisade::config::units::Duration::secs(3);
        c.connections.max_per_user = 2;
        c.connections.on_user_limit = OnUserLimit::RejectNew;
        c.connections.reconnects_per_minute = MANY;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut request = format!("ws://{address}/graphql")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        held.push(
            admit(&survivor, WsClient { stream }, "alice")
                .await
                .unwrap(),
        );
    }

    crashing.start_kill().unwrap();
    crashing.wait().await.unwrap();
    let killed = Instant::now();
    assert_eq!(
        connect(&survivor, "alice").await.err(),
        Some((1008, "Too many connections for this user".into())),
        "the dead instance's slots still count until their lease runs out"
    );
    loop {
        match connect(&survivor, "alice").await {
            Ok(mut admitted) => break assert_open(&mut admitted).await,
            Err((1008, _)) if killed.elapsed() < CONVERGE => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(other) => panic!(
                "still refused {:?} after the kill: {other:?}",
                killed.elapsed()
            ),
        }
    }
}

#[tokio::test]
async fn no_registry_keys_remain_once_connections_of_many_users_and_ips_are_gone() {
    let prefix = unique_prefix();
    let tweak = |c: &mut Config| {
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
        c.connections.max_per_user = 2;
        c.connections.reconnects_per_minute = MANY;
    };
    let instances = [
        spawn_instance(&redis_url(), &prefix, tweak).await,
        spawn_instance(&redis_url(), &prefix, tweak).await,
    ];
    let mut redis = redis().await;
    let mut open = Vec::new();
    for n in 0..40 {
        let app = &instances[n % 2];
        let ip = format!("10.9.0.{}", n % 7);
        let client = app
            .try_ws("/graphql", &[("x-forwarded-for", &ip)])
            .await
            .unwrap();
        // Five users for forty connections: close_oldest replaces some along the way.
        let client = admit(app, client, &format!("user-{}", n % 5))
            .await
            .unwrap();
        if n % 3 == 0 {
            drop(client);
        } else {
            open.push(client);
        }
    }
    assert!(
        !registry_keys(&mut redis, &prefix).await.is_empty(),
        "open connections hold leases under {prefix}:registry:"
    );
    drop(open);
    let started = Instant::now();
    loop {
        let keys = registry_keys(&mut redis, &prefix).await;
        if keys.is_empty() {
            break;
        }
        assert!(started.elapsed() < CONVERGE, "left behind: {keys:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn admission_falls_back_to_this_instances_counts_while_redis_is_unreachable() {
    let mut private = PrivateRedis::start().await;
    let app = spawn_app_with_redis(&private.url(), |c| {
        c.streams.key_prefix = unique_prefix();
        c.connections.max_per_user = 1;
        c.connections.on_user_limit = OnUserLimit::RejectNew;
    })
    .await;
    private.kill().await;
    let mut alice = connect(&app, "alice").await.expect("admitted: fail open");
    assert_eq!(
        connect(&app, "alice").await.err(),
        Some((1008, "Too many connections for this user".into())),
        "this instance's own count still applies"
    );
    assert_open(&mut alice).await;
    let text = app.metrics_text().await;
    let failures: f64 = text
        .lines()
        .find(|l| {
            l.starts_with("palisade_cluster_errors_total") && l.contains(r#"part="registry""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no registry errors counted in\n{text}"));
    assert!(failures >= 1.0, "{failures}");
}

#[tokio::test]
async fn leases_redis_lost_in_a_restart_are_written_back_by_the_next_renewal() {
    let mut private = PrivateRedis::start().await;
    let prefix = unique_prefix();
    let app = spawn_app_with_redis(&private.url(), |c| {
        c.streams.key_prefix = prefix.clone();
        c.streams.presence_ttl = palisade::config::units::Duration::secs(3);
    })
    .await;
    let _alice = connect(&app, "alice").await.unwrap();
    private.restart().await;
    let client = redis::Client::open(private.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}:registry:user:{{alice}}");
    let started = Instant::now();
    while !redis.exists::<_, bool>(&key).await.unwrap() {
        assert!(started.elapsed() < CONVERGE, "{key} never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leases: Vec<String> = redis.zrange(&key, 0, -1).await.unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
}

//! `/readyz` and `/metrics` on the public port: a cached check, no dependency details for
//! strangers, and the per-IP limit.

use serde_json::{Value, json};

use super::code_of;
use crate::helpers::{PrivateRedis, TestApp, spawn_app_with};

/// Connections Redis has accepted since it started (`INFO stats`), read over one connection kept
/// for the whole test so that reading it opens none.
async fn redis_connections(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(connection)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn readyz_is_served_from_the_last_check_and_opens_no_redis_connection_per_request() {
    let redis = PrivateRedis::start().await;
    let app = crate::helpers::spawn_app_with_redis(&redis.url(), |_| {}).await;
    let mut watcher = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(
        reqwest::get(app.url("/readyz")).await.unwrap().status(),
        200
    );
    let before = redis_connections(&mut watcher).await;
    for _ in 0..50 {
        assert_eq!(
            reqwest::get(app.url("/readyz")).await.unwrap().status(),
            200
        );
    }
    let opened = redis_connections(&mut watcher).await - before;
    assert!(opened <= 1, "50 probes opened {opened} Redis connections");
}

fn admin_token(app: &TestApp) -> String {
    app.token_with(
        "ops",
        serde_json::Map::from_iter([("roles".to_string(), json!(["admin"]))]),
    )
}

#[tokio::test]
async fn the_public_readyz_names_no_dependency_unless_the_caller_is_an_admin() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app =
        crate::helpers::spawn_app_with_redis(&format!("redis://127.0.0.1:{closed_port}"), |_| {})
            .await;
    let public = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(public.status(), 503);
    assert_eq!(
        public.json::<Value>().await.unwrap(),
        json!({ "status": "unavailable" })
    );
    let stranger = reqwest::Client::new()
        .get(app.url("/readyz"))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stranger.json::<Value>().await.unwrap(),
        json!({ "status": "unavailable" })
    );

    let admin = reqwest::Client::new()
        .get(app.url("/readyz"))
        .bearer_auth(admin_token(&app))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 503);
    let body: Value = admin.json().await.unwrap();
    assert_eq!(body["checks"]["redis"]["ok"], false);
    assert!(body["checks"]["redis"]["error"].as_str().unwrap().len() > 5);
}

#[tokio::test]
async fn on_admin_listen_readyz_shows_every_check() {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let _app = spawn_app_with(|c| c.server.admin_listen = Some(admin_addr)).await;
    let body: Value = reqwest::get(format!("http://{admin_addr}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["ok"], true);
}

#[tokio::test]
async fn probes_and_metrics_on_the_public_port_are_behind_the_per_ip_limit() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 2;
    })
    .await;
    assert_eq!(
        reqwest::get(app.url("/metrics")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(app.url("/readyz")).await.unwrap().status(),
        200
    );
    for path in ["/readyz", "/metrics", "/healthz"] {
        let (status, code) = code_of(reqwest::get(app.url(path)).await.unwrap()).await;
        assert_eq!((status, code), (429, json!("HTTP_RATE_LIMITED")), "{path}");
    }
}

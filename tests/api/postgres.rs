//! The same server on PostgreSQL: fresh database per test from `#[sqlx::test]` (DATABASE_URL points
//! at the server; the test script sets it).

use std::time::Duration;

use palisade::db::Database;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::helpers::spawn_app_on;
use crate::http::readyz_as_admin;

#[sqlx::test(migrations = false)]
async fn on_postgres_connections_are_logged_and_readiness_is_green(pool: PgPool) {
    let db = Database::from_pg_pool(pool).await.unwrap();
    // Migrations are idempotent: applying them again changes nothing.
    let db = Database::from_pg_pool(match &db {
        Database::Postgres(p) => p.clone(),
        _ => unreachable!(),
    })
    .await
    .unwrap();
    let app = spawn_app_on(db, |_| {}).await;
    let client = app.ws_acked("pg-user").await;
    drop(client);
    let rows = app.closed_connection_rows().await;
    assert_eq!(rows[0].0.as_deref(), Some("pg-user"));
    let body: Value = readyz_as_admin(&app).await.json().await.unwrap();
    assert_eq!(body["checks"]["database"]["backend"], "postgres");
    assert_eq!(body["status"], "ready");
}

#[sqlx::test(migrations = false)]
async fn readiness_fails_with_503_naming_the_database_when_it_becomes_unreachable(pool: PgPool) {
    let proxy = Proxy::start().await;
    let options = (*pool.connect_options())
        .clone()
        .host("127.0.0.1")
        .port(proxy.port);
    let through_proxy = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await
        .unwrap();
    let app = spawn_app_on(Database::from_pg_pool(through_proxy).await.unwrap(), |_| {}).await;
    assert_eq!(
        reqwest::get(app.url("/readyz")).await.unwrap().status(),
        200
    );

    proxy.cut();
    // Readiness is checked on a timer: the cut shows within a few rounds.
    let mut response = readyz_as_admin(&app).await;
    for _ in 0..40 {
        if response.status() == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        response = readyz_as_admin(&app).await;
    }
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"]["ok"], false);
    assert!(body["checks"]["database"]["error"].as_str().unwrap().len() > 10);
    assert_eq!(
        reqwest::get(app.url("/healthz")).await.unwrap().status(),
        200,
        "liveness is unaffected"
    );
}

/// A TCP proxy in front of PostgreSQL that the test can cut, like a network failure.
struct Proxy {
    port: u16,
    stop: CancellationToken,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                // Accept until cut; each accepted connection is piped until cut.
                let (mut inbound, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let mut upstream = TcpStream::connect("127.0.0.1:5432").await.unwrap();
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => {}
                    }
                });
            }
        });
        Self { port, stop }
    }

    fn cut(&self) {
        self.stop.cancel();
    }
}

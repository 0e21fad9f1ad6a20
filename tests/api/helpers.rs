//! Spawns Palisade on port 0 with a fresh database and talks to it over real sockets.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use palisade::auth::jwt;
use palisade::auth::secret::HmacSecret;
use palisade::config::Config;
use palisade::db::Database;
use palisade::publish::PublishKey;
use palisade::startup::{AppState, Application, DatabaseSource, Settings};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Writes a session row as express-session with connect-pg-simple does, expiring `minutes` from
/// now, on either backend.
pub async fn insert_session(db: &Database, sid: &str, sess: &Value, minutes: i64) {
    // PostgreSQL's `sess` is `json`, which a text parameter must be cast to; SQLite keeps text.
    let sql = match db {
        Database::Postgres(_) => {
            "INSERT INTO session (sid, sess, expire) VALUES ($1, $2::json, $3)"
        }
        Database::Sqlite(_) => "INSERT INTO session (sid, sess, expire) VALUES ($1, $2, $3)",
    };
    let expire = (chrono::Utc::now() + chrono::TimeDelta::minutes(minutes)).naive_utc();
    palisade::on_pool!(db, |pool| {
        sqlx::query(sql)
            .bind(sid)
            .bind(sess.to_string())
            .bind(expire)
            .execute(pool)
            .await
            .map(drop)
            .unwrap()
    });
}

/// The `POST /api/publish` key test servers accept (except those spawned from a file).
pub const PUBLISH_KEY: &str = "test-publish-key";

/// The HMAC secret every test server verifies tokens with.
pub const TEST_SECRET: &[u8] = b"integration-test-secret-of-32-bytes-or-more";

/// The Express cookie secret test servers accept.
pub const SESSION_SECRET: &str = "keyboard cat";

/// How long a test waits for any single expected message.
const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    /// The SQLite URL, for reading rows after the server (and its pool) stopped.
    pub database_url: Option<String>,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    secret: HmacSecret,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns with a fresh SQLite database, after `tweak` adjusts the configuration.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("palisade.db").display());
    let mut app = spawn(DatabaseSource::Url(url.clone()), None, tweak, dir, false).await;
    app.database_url = Some(url);
    app
}

/// Spawns on defaults with the per-operation guard left out (`serve --unguarded`).
pub async fn spawn_unguarded() -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("palisade.db").display());
    spawn(DatabaseSource::Url(url), None, |_| {}, dir, true).await
}

/// Spawns from a hardening.yaml file (listening on port 0), so reloads of that file apply.
pub async fn spawn_app_from_file(path: &std::path::Path) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("palisade.db").display());
    let mut config = Config::load(path).expect("the test config is valid");
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.drain_period = palisade::config::units::Duration::secs(0);
    let secret = HmacSecret {
        bytes: TEST_SECRET.to_vec(),
        development: false,
    };
    let settings = Settings {
        config,
        config_path: Some(path.to_path_buf()),
        database: DatabaseSource::Url(url),
        redis_url: None,
        jwt_secret: secret.clone(),
        session_secrets: Vec::new(),
        publish_key: None,
        unguarded: false,
    };
    start(settings, secret, dir).await
}

/// Spawns on a database made by the test (a fresh PostgreSQL database from `#[sqlx::test]`).
pub async fn spawn_app_on(db: Database, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn(
        DatabaseSource::Ready(db),
        None,
        tweak,
        tempfile::tempdir().expect("temp dir"),
        false,
    )
    .await
}

/// The Redis every machine runs (CI included), or `REDIS_URL`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis key prefix no other test (and no earlier run) uses.
pub fn unique_prefix() -> String {
    format!("palisade-test-{}", uuid::Uuid::new_v4().simple())
}

/// One instance of a cluster: instances spawned with the same `prefix` share the Redis at
/// `redis_url` and so behave as one server; each has its own SQLite database.
pub async fn spawn_instance(
    redis_url: &str,
    prefix: &str,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_app_with_redis(redis_url, |c| {
        c.streams.key_prefix = prefix.to_string();
        tweak(c);
    })
    .await
}

/// A Redis server of the test's own (no persistence, on a free port), which the test may stop and
/// restart empty, something the shared server must never go through.
pub struct PrivateRedis {
    pub port: u16,
    process: Option<std::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            process: None,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would) and waits until the port is free.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private Redis on port {} did not stop", self.port);
    }

    /// Starts the server (empty: nothing is persisted) and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.process = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private Redis on port {} did not start", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real binary, as an operator runs it.
pub struct Binary {
    pub child: Child,
    /// Where it listens, from its `listening` log line.
    pub address: String,
    /// The JSON log lines before the `listening` one.
    pub logged: Vec<Value>,
    /// The log lines after it. Read them, or the child blocks once the pipe is full.
    pub lines: Lines<BufReader<ChildStderr>>,
}

/// Starts the binary in `dir` with `config` as its hardening.yaml (which sets `logging.format:
/// json` and a port-0 `server.listen`), a SQLite database in `dir`, neither `RUST_LOG` nor
/// `REDIS_URL` unless `env` sets them, and waits until it listens.
pub async fn start_binary(dir: &Path, config: &str, env: &[(&str, &str)]) -> Binary {
    let config_path = dir.join("hardening.yaml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["serve", "--config", config_path.to_str().unwrap()])
        .current_dir(dir)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("p.db").display()),
        )
        .env_remove("RUST_LOG")
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut logged = Vec::new();
    let address = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the server logs");
        let entry: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if entry["fields"]["message"] == "listening" {
            break entry["fields"]["address"].as_str().unwrap().to_string();
        }
        logged.push(entry);
    };
    Binary {
        child,
        address,
        logged,
        lines,
    }
}

/// Spawns with a fresh SQLite database and `REDIS_URL` set to `redis_url`, after `tweak`.
pub async fn spawn_app_with_redis(redis_url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("palisade.db").display());
    spawn(
        DatabaseSource::Url(url),
        Some(redis_url.to_string()),
        tweak,
        dir,
        false,
    )
    .await
}

async fn spawn(
    database: DatabaseSource,
    redis_url: Option<String>,
    tweak: impl FnOnce(&mut Config),
    dir: tempfile::TempDir,
    unguarded: bool,
) -> TestApp {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    // Tests stop servers often; the drain test sets its own period.
    config.server.drain_period = palisade::config::units::Duration::secs(0);
    tweak(&mut config);
    let secret = HmacSecret {
        bytes: TEST_SECRET.to_vec(),
        development: false,
    };
    let settings = Settings {
        config,
        config_path: None,
        database,
        redis_url,
        jwt_secret: secret.clone(),
        session_secrets: vec![SESSION_SECRET.to_string()],
        publish_key: Some(PublishKey::new(PUBLISH_KEY)),
        unguarded,
    };
    start(settings, secret, dir).await
}

async fn start(settings: Settings, secret: HmacSecret, dir: tempfile::TempDir) -> TestApp {
    let app = Application::build(settings).await.expect("the app builds");
    let addr = app.local_addr();
    let state = app.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        database_url: None,
        state,
        stop: Some(stop),
        server,
        secret,
        _dir: dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn token(&self, sub: &str) -> String {
        self.token_with(sub, Map::new())
    }

    pub fn token_with(&self, sub: &str, claims: Map<String, Value>) -> String {
        self.token_for(sub, claims, Duration::from_secs(600))
    }

    pub fn token_for(&self, sub: &str, claims: Map<String, Value>, ttl: Duration) -> String {
        jwt::mint(&self.secret, &self.state.config.auth.jwt, sub, claims, ttl).unwrap()
    }

    /// Attempts an upgrade with extra request headers; the HTTP status when it is refused.
    pub async fn try_ws(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, u16> {
        let mut request = format!("ws://{}{path_and_query}", self.addr)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("upgrade failed: {other}"),
        }
    }

    /// Opens a WebSocket offering `protocol`, without sending anything.
    pub async fn ws(&self, protocol: &str) -> WsClient {
        ws_to(&self.addr.to_string(), protocol).await
    }

    /// A `graphql-transport-ws` connection that has been acknowledged for user `sub`.
    pub async fn ws_acked(&self, sub: &str) -> WsClient {
        self.ws_acked_with(&self.token(sub)).await
    }

    /// A `graphql-transport-ws` connection acknowledged for `token`.
    pub async fn ws_acked_with(&self, token: &str) -> WsClient {
        let mut client = self.ws("graphql-transport-ws").await;
        let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
        client.send(init).await;
        assert_eq!(client.recv().await["type"], "connection_ack");
        client
    }

    /// Runs a GraphQL operation over HTTP as `sub`.
    pub async fn post(&self, sub: &str, query: &str, variables: Value) -> Value {
        self.post_with_token(&self.token(sub), query, variables)
            .await
    }

    /// Runs a GraphQL operation over HTTP as a backend service (the `service` role may publish).
    pub async fn post_as_service(&self, query: &str, variables: Value) -> Value {
        let claims = Map::from_iter([("roles".to_string(), json!(["service"]))]);
        self.post_with_token(&self.token_with("svc", claims), query, variables)
            .await
    }

    pub async fn post_with_token(&self, token: &str, query: &str, variables: Value) -> Value {
        reqwest::Client::new()
            .post(self.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the sample `name` (with its labels, if any) in `/metrics`, if it is there.
    pub async fn sample(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Asserts that `/metrics` has each of `lines` exactly.
    pub async fn assert_metrics(&self, lines: &[&str]) {
        let text = self.metrics_text().await;
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "missing `{line}` in\n{text}"
            );
        }
    }

    /// Waits until `/metrics` has each of `lines` exactly, for gauges that settle after a
    /// message is answered (an aborted operation leaves its resources on another task).
    pub async fn until_metrics(&self, lines: &[&str]) {
        for _ in 0..100 {
            let text = self.metrics_text().await;
            if lines.iter().all(|line| text.lines().any(|l| l == *line)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.assert_metrics(lines).await;
    }

    /// The connection log, oldest first, once every connection has ended (connections end
    /// asynchronously after the client's close) and the log's queue is written.
    pub async fn closed_connection_rows(&self) -> Vec<ConnectionRow> {
        for _ in 0..300 {
            if self.state.tracker.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            self.state.tracker.is_empty(),
            "connections did not end in time"
        );
        self.state.connection_log.flush().await;
        connection_rows(&self.state.db).await
    }

    /// Signals shutdown, as SIGTERM would.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to finish shutting down and returns its result.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(30), &mut self.server)
            .await
            .expect("shutdown finishes")
            .expect("the server task does not panic")
    }
}

/// Opens a WebSocket to `/graphql` at `address` offering `protocol`, without sending anything.
pub async fn ws_to(address: &str, protocol: &str) -> WsClient {
    let mut request = format!("ws://{address}/graphql")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let (stream, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
    WsClient { stream }
}

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn send(&mut self, message: Value) {
        self.stream
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next protocol message, skipping WebSocket pings; panics on a close.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_frame().await {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Message::Close(Some(frame)) => {
                    return (frame.code.into(), frame.reason.to_string());
                }
                Message::Close(None) => return (1005, String::new()),
                _ => continue,
            }
        }
    }

    pub async fn next_frame(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.stream.next())
            .await
            .expect("the server answers in time")
            .expect("the stream is open")
            .expect("the frame is valid")
    }
}

/// Publishes an event of type `kind` into `topic` as the service role.
pub async fn publish_event(app: &TestApp, topic: &str, kind: &str) {
    let answer = app
        .post_as_service(
            "mutation($t: String!, $k: String!) { publish(topic: $t, type: $k) { id } }",
            json!({ "t": topic, "k": kind }),
        )
        .await;
    assert!(answer["errors"].is_null(), "{answer}");
}

/// Waits until the subscriptions `ids` (on `topics`, pairwise) deliver, publishing a `ready`
/// event on each until they do: a subscription is live only once its task has subscribed.
pub async fn until_live(app: &TestApp, client: &mut WsClient, subscriptions: &[(&str, &str)]) {
    let mut pending: Vec<&str> = subscriptions.iter().map(|(id, _)| *id).collect();
    for _ in 0..50 {
        for (id, topic) in subscriptions {
            if pending.contains(id) {
                publish_event(app, topic, "ready").await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(message) = tokio::time::timeout_at(deadline, client.recv()).await {
            assert_eq!(message["type"], "next", "{message}");
            pending.retain(|id| message["id"] != *id);
        }
        if pending.is_empty() {
            return;
        }
    }
    panic!("subscriptions {pending:?} never delivered");
}

/// A connection-log row: (user_id, subprotocol, ip, close_code, reason).
pub type ConnectionRow = (Option<String>, String, String, Option<i32>, Option<String>);

/// The connection log, oldest first.
pub async fn connection_rows(db: &Database) -> Vec<ConnectionRow> {
    palisade::on_pool!(db, |pool| {
        sqlx::query_as("SELECT user_id, subprotocol, ip, close_code, reason FROM connection_log ORDER BY connected_at")
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

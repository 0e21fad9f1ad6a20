//! Topics, presence and replays: what a client can make the bus hold or do.

use std::time::Duration;

use palisade::config::Config;
use serde_json::{Value, json};

use crate::helpers::{
    PUBLISH_KEY, TestApp, WsClient, redis_url, spawn_app_with, spawn_app_with_redis,
    spawn_instance, unique_prefix,
};

const EVENTS: &str =
    "subscription($t: String!, $a: ID) { events(topic: $t, after: $a) { id type payload } }";

/// How long a test polls for a state the server reaches asynchronously.
const PATIENCE: Duration = Duration::from_secs(20);

/// Room for many operations on one connection, so the bounds under test are the only ones hit.
fn roomy(config: &mut Config) {
    config.operations.rate_limit.limit = 1_000_000;
    config.connections.max_operations = 1_000;
    config.connections.send_queue = 100_000;
}

/// The value of an unlabelled sample in `/metrics`, if it is there.
async fn sample(app: &TestApp, name: &str) -> Option<f64> {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until `name` satisfies `done`; its last value.
async fn until(app: &TestApp, name: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let value = sample(app, name).await;
        if let Some(value) = value.filter(|v| done(*v)) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {value:?}, not there yet"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn subscribe(client: &mut WsClient, id: &str, topic: &str, after: Option<&str>) {
    let payload = json!({ "query": EVENTS, "variables": { "t": topic, "a": after } });
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": payload }))
        .await;
}

async fn complete(client: &mut WsClient, id: &str) {
    client.send(json!({ "id": id, "type": "complete" })).await;
}

/// The extensions of the first error of an HTTP GraphQL answer.
fn extensions(answer: &Value) -> &Value {
    &answer["errors"][0]["extensions"]
}

#[tokio::test]
async fn thousands_of_distinct_topics_come_and_go_and_leave_only_the_bounded_replay_behind() {
    let app = spawn_app_with(|c| {
        roomy(c);
        c.streams.maxlen = 300;
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    // The instance's own topics (cluster control) are followed all along.
    let own = until(&app, "palisade_topics_active", |v| v >= 0.0).await;
    const BATCH: usize = 100;
    for round in 0..25 {
        for n in 0..BATCH {
            let topic = format!("system:churn-{round}-{n}");
            subscribe(&mut client, &n.to_string(), &topic, None).await;
        }
        // Each topic is followed before it is let go, so each one made state to free.
        until(&app, "palisade_topics_active", |v| v >= own + BATCH as f64).await;
        for n in 0..BATCH {
            complete(&mut client, &n.to_string()).await;
        }
        until(&app, "palisade_topics_active", |v| v == own).await;
    }
    // Every topic's JOIN and LEAVE (5,000 events) went into the bus, which kept only `maxlen`.
    until(&app, "palisade_presence_queue_length", |v| v == 0.0).await;
    let retained = until(&app, "palisade_bus_retained_events", |v| v > 0.0).await;
    assert_eq!(
        retained, 300.0,
        "the bound over all topics, not one per topic"
    );
    assert_eq!(sample(&app, "palisade_topics_active").await, Some(own));
}

#[tokio::test]
async fn a_topic_longer_than_max_topic_bytes_is_refused_with_its_code_everywhere_it_comes_in() {
    // The default bound, 256 bytes.
    let app = spawn_app_with(|_| {}).await;
    let long = format!("system:{}", "x".repeat(250));
    assert_eq!(long.len(), 257);
    let refused = |extensions: &Value| {
        assert_eq!(extensions["code"], "MAX_TOPIC_BYTES_LIMIT", "{extensions}");
        assert_eq!(extensions["limit"], 256, "{extensions}");
        assert_eq!(extensions["measured"], 257, "{extensions}");
    };

    let mut client = app.ws_acked("alice").await;
    subscribe(&mut client, "e", &long, None).await;
    let error = client.recv().await;
    assert_eq!(error["type"], "error", "{error}");
    refused(&error["payload"][0]["extensions"]);
    let presence = json!({ "query": "subscription($t: String!) { presence(topic: $t) { type } }", "variables": { "t": long } });
    client
        .send(json!({ "id": "p", "type": "subscribe", "payload": presence }))
        .await;
    let error = client.recv().await;
    refused(&error["payload"][0]["extensions"]);

    let online = app
        .post(
            "alice",
            "query($t: String!) { presence(topic: $t) { userId } }",
            json!({ "t": long }),
        )
        .await;
    refused(extensions(&online));
    let published = app
        .post_as_service(
            r#"mutation($t: String!) { publish(topic: $t, type: "t") { id } }"#,
            json!({ "t": long }),
        )
        .await;
    refused(extensions(&published));

    let response = reqwest::Client::new()
        .post(app.url("/api/publish"))
        .bearer_auth(PUBLISH_KEY)
        .json(&json!({ "topic": long, "type": "t" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    refused(extensions(&body));

    // One byte less is an ordinary topic.
    let fits = &long[..256];
    let published = app
        .post_as_service(
            r#"mutation($t: String!) { publish(topic: $t, type: "t") { id } }"#,
            json!({ "t": fits }),
        )
        .await;
    assert!(published["errors"].is_null(), "{published}");
}

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

/// Publishes `type: "t"` on `topic` through `POST /api/publish`.
async fn publish(app: &TestApp, topic: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/api/publish"))
        .bearer_auth(PUBLISH_KEY)
        .json(&json!({ "topic": topic, "type": "t", "payload": { "n": 1 } }))
        .send()
        .await
        .unwrap()
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

    let own = sample(&app, "palisade_topics_active").await.unwrap();
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
    let queued = sample(&app, "palisade_presence_queue_length")
        .await
        .unwrap();
    let joined = CHURN as f64 - dropped;
    assert!(
        queued <= 8.0 + joined && joined <= 16.0,
        "{queued} commands queued, {dropped} dropped"
    );

    redis.signal("-CONT");
    until(&app, "palisade_presence_queue_length", |v| v == 0.0).await;
    let dropped_after = sample(&app, "palisade_presence_queue_dropped_total").await;
    assert!(dropped_after.unwrap() <= CHURN as f64);
}

#[tokio::test]
async fn a_resume_storm_over_big_events_never_makes_a_publish_fail() {
    let prefix = unique_prefix();
    let app = spawn_instance(&redis_url(), &prefix, |c| {
        roomy(c);
        c.streams.shards = 1;
        c.streams.max_replays = 4;
        c.streams.max_replays_per_connection = 2;
    })
    .await;
    // A thousand 30 KB events of one topic, written straight into its stream.
    let key = format!("{prefix}:events:{{0}}");
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let payload = json!({ "blob": "x".repeat(30_000) }).to_string();
    for _ in 0..10 {
        let mut pipe = redis::pipe();
        for _ in 0..100 {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("topic")
                .arg("system:big")
                .arg("type")
                .arg("t")
                .arg("payload")
                .arg(&payload)
                .ignore();
        }
        let () = pipe.query_async(&mut redis).await.unwrap();
    }

    // Every client of the instance comes back at once and resumes from the start.
    let mut clients = Vec::new();
    for user in ["r0", "r1", "r2"] {
        let mut client = app.ws_acked(user).await;
        for n in 0..10 {
            subscribe(&mut client, &n.to_string(), "system:big", Some("0-0")).await;
        }
        clients.push(client);
    }
    let mut busiest = 0.0_f64;
    for n in 0..20 {
        let response = publish(&app, &format!("system:other-{n}")).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "publish {n} during the storm: {body}");
        let active = sample(&app, "palisade_replays_active").await.unwrap();
        busiest = busiest.max(active);
    }
    assert!(busiest <= 4.0, "{busiest} replays at once");
    let () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// Counts ERROR events logged on this thread, where a `#[tokio::test]` runs the server it spawns.
#[derive(Clone, Default)]
struct Errors(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Errors {
    fn logged(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Resumes after each of the ids a client may make up; each is refused on its own operation,
/// and a resume after a real id still gets the next event live.
async fn made_up_ids_are_refused(app: &TestApp) {
    use tracing_subscriber::layer::SubscriberExt;
    let errors = Errors::default();
    let _logging =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(errors.clone()));
    let topic = "system:resume";
    let first = publish(app, topic).await.json::<Value>().await.unwrap();
    let first = first["id"].as_str().unwrap().to_string();
    let mut client = app.ws_acked("alice").await;
    let made_up = [
        "18446744073709551615-18446744073709551615",
        "9999999999999-0",
        "+1-0",
        "1-2-3",
        "18446744073709551616-0",
        "-",
    ];
    for (n, after) in made_up.iter().enumerate() {
        subscribe(&mut client, &n.to_string(), topic, Some(after)).await;
        let error = client.recv().await;
        assert_eq!(error["type"], "error", "{after}: {error}");
        assert_eq!(error["id"], n.to_string());
        let code = &error["payload"][0]["extensions"]["code"];
        assert_eq!(code, "BAD_USER_INPUT", "{after}: {error}");
    }
    subscribe(&mut client, "real", topic, Some(&first)).await;
    // Live once a later publish comes through (the subscription starts asynchronously).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let event = loop {
        publish(app, topic).await;
        if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), client.recv()).await {
            break event;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing came live");
    };
    assert_eq!(event["id"], "real", "{event}");
    assert_eq!(event["payload"]["data"]["events"]["type"], "t", "{event}");
    assert_eq!(errors.logged(), 0, "a client's ids are never an ERROR");
}

#[tokio::test]
async fn made_up_resume_ids_are_bad_user_input_on_redis_and_nothing_is_logged_as_an_error() {
    let prefix = unique_prefix();
    let app = spawn_instance(&redis_url(), &prefix, |c| c.streams.shards = 1).await;
    made_up_ids_are_refused(&app).await;
}

#[tokio::test]
async fn made_up_resume_ids_are_bad_user_input_in_process_too() {
    let app = spawn_app_with(|_| {}).await;
    made_up_ids_are_refused(&app).await;
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

//! The Redis Streams bus across instances, against real Redis servers: the shared one (each test
//! with its own key prefix, removed when the test ends) or a private one the test may crash.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use palisade::bus::redis::{epoch_key, internal_stream_key, shard_of, stream_key};
use palisade::bus::{Bus, Delivery, RedisBus};
use palisade::config::Config;
use palisade::metrics::Metrics;
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

use crate::helpers::{PrivateRedis, TestApp, WsClient, redis_url, spawn_instance, unique_prefix};

const EVENTS: &str =
    "subscription($t: String!, $a: ID) { events(topic: $t, after: $a) { id type payload } }";
const PUBLISH: &str = "mutation($t: String!, $k: String!, $p: JSON) { publish(topic: $t, type: $k, payload: $p) { id } }";

/// Test instances publish hundreds of events over HTTP from one address.
fn roomy(c: &mut Config) {
    c.operations.http.per_ip_per_second = 10_000;
    c.operations.http.burst = 10_000;
    // The same user reconnects across instances, which now counts cluster-wide.
    c.connections.reconnects_per_minute = 10_000;
}

/// Deletes the test's keys from the shared Redis when the test ends, even by a panic. It runs
/// on the test's single runtime thread, so no reader writes a key back meanwhile.
struct Keys(String);

impl Drop for Keys {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) else {
            return;
        };
        for key in keys(&mut conn, &self.0) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query(&mut conn);
        }
    }
}

fn keys(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    redis::Commands::scan_match::<_, String>(conn, format!("{prefix}:*"))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Publishes as a backend service; cheap to clone into a publishing task.
#[derive(Clone)]
struct Publisher {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Publisher {
    fn on(app: &TestApp) -> Self {
        let claims = Map::from_iter([("roles".to_string(), json!(["service"]))]);
        Self {
            url: app.url("/graphql"),
            token: app.token_with("svc", claims),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, topic: &str, kind: &str, payload: Value) -> Value {
        let variables = json!({ "t": topic, "k": kind, "p": payload });
        self.http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({ "query": PUBLISH, "variables": variables }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Publishes event `n` of a sequence; its id.
    async fn publish(&self, topic: &str, n: u64) -> String {
        let answer = self.send(topic, "n", json!({ "n": n })).await;
        answer["data"]["publish"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("publish {n}: {answer}"))
            .to_string()
    }
}

async fn subscribe(client: &mut WsClient, id: &str, topic: &str, after: Option<&str>) {
    let payload = json!({ "query": EVENTS, "variables": { "t": topic, "a": after } });
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": payload }))
        .await;
}

/// The next event of a subscription (`id`, `type`, `payload`), skipping probes.
async fn next_event(client: &mut WsClient) -> Value {
    loop {
        let message = client.recv().await;
        assert_eq!(message["type"], "next", "{message}");
        let event = &message["payload"]["data"]["events"];
        if event["type"] != "probe" {
            return event.clone();
        }
    }
}

/// Publishes probes until one arrives, so the subscription is known to be live.
async fn until_live(client: &mut WsClient, publisher: &Publisher, topic: &str) {
    for _ in 0..50 {
        publisher.send(topic, "probe", Value::Null).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, client.stream.next()).await {
            if let Message::Text(text) = frame.unwrap() {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["payload"]["data"]["events"]["type"] == "probe" {
                    return;
                }
            }
        }
    }
    panic!("the subscription to {topic} never went live");
}

/// Reads events until event `last` (a sequence number); the numbers seen, in order.
async fn numbers_until(client: &mut WsClient, last: u64, seen: &mut Vec<u64>) {
    loop {
        let event = next_event(client).await;
        assert_eq!(event["type"], "n", "{event}");
        let n = event["payload"]["n"].as_u64().unwrap();
        seen.push(n);
        if n >= last {
            return;
        }
    }
}

/// The client ids of the bus readers of one instance, found by their `CLIENT SETNAME`.
async fn reader_ids(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    instance: &str,
) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    let wanted = format!("name={prefix}:reader:{instance}:");
    list.lines()
        .filter(|line| line.split(' ').any(|field| field.starts_with(&wanted)))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

async fn shared_redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// `CLIENT KILL`s the bus readers of one instance; how many there were.
async fn kill_readers(prefix: &str, instance: &str) -> usize {
    let mut conn = shared_redis().await;
    let ids = reader_ids(&mut conn, prefix, instance).await;
    for id in &ids {
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    ids.len()
}

/// Publishes events `0..count` of `topic`, pausing a little so subscribers read meanwhile.
fn publish_sequence(
    publisher: &Publisher,
    topic: &'static str,
    count: u64,
) -> tokio::task::JoinHandle<()> {
    let publisher = publisher.clone();
    tokio::spawn(async move {
        for n in 0..count {
            publisher.publish(topic, n).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

#[tokio::test]
async fn a_subscriber_on_one_instance_gets_events_published_on_another() {
    let prefix = unique_prefix();
    let _keys = Keys(prefix.clone());
    let a = spawn_instance(&redis_url(), &prefix, roomy).await;
    let b = spawn_instance(&redis_url(), &prefix, roomy).await;
    let publisher = Publisher::on(&b);
    let mut client = a.ws_acked("alice").await;
    subscribe(&mut client, "1", "system:news", None).await;
    until_live(&mut client, &publisher, "system:news").await;

    let id = publisher.publish("system:news", 7).await;
    let event = next_event(&mut client).await;
    assert_eq!(event["id"].as_str(), Some(id.as_str()), "{event}");
    assert_eq!(event["payload"], json!({ "n": 7 }));
    assert!(
        a.sample("palisade_bus_read_lag_seconds_count")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
}

const TOPIC_TICKER: &str = "system:ticker";
const COUNT: u64 = 300;

/// Two instances, a publisher on B and a client on A following the ticker topic, live.
struct Ticker {
    prefix: Keys,
    a: TestApp,
    b: TestApp,
    publisher: Publisher,
    client: WsClient,
}

impl Ticker {
    async fn start() -> Self {
        let prefix = unique_prefix();
        let keys = Keys(prefix.clone());
        let a = spawn_instance(&redis_url(), &prefix, roomy).await;
        let b = spawn_instance(&redis_url(), &prefix, roomy).await;
        let publisher = Publisher::on(&b);
        let mut client = a.ws_acked("alice").await;
        subscribe(&mut client, "1", TOPIC_TICKER, None).await;
        until_live(&mut client, &publisher, TOPIC_TICKER).await;
        Self {
            prefix: keys,
            a,
            b,
            publisher,
            client,
        }
    }
}

#[tokio::test]
async fn clients_resuming_on_another_instance_while_publishing_goes_on_see_each_event_once() {
    let Ticker {
        prefix: _keys,
        a,
        b,
        publisher,
        client: first,
    } = Ticker::start().await;

    let publishing = publish_sequence(&publisher, TOPIC_TICKER, COUNT);
    let mut seen = Vec::new();
    let mut client = first;
    // Each client reads a stretch, goes away, and the next resumes on the other instance; every
    // seam is a chance for a duplicate or a hole.
    for (round, app) in [&b, &a, &b, &a, &b].into_iter().enumerate() {
        let mut last_id = Value::Null;
        while seen.len() < 40 * (round + 1) {
            let event = next_event(&mut client).await;
            seen.push(event["payload"]["n"].as_u64().unwrap());
            last_id = event["id"].clone();
        }
        drop(client);
        client = app.ws_acked("alice").await;
        subscribe(&mut client, "1", TOPIC_TICKER, last_id.as_str()).await;
    }
    numbers_until(&mut client, COUNT - 1, &mut seen).await;
    publishing.await.unwrap();
    assert_eq!(seen, (0..COUNT).collect::<Vec<_>>());
}

#[tokio::test]
async fn killing_the_reader_connections_mid_stream_loses_and_duplicates_nothing() {
    let Ticker {
        prefix,
        a,
        b: _b,
        publisher,
        mut client,
    } = Ticker::start().await;

    let publishing = publish_sequence(&publisher, TOPIC_TICKER, COUNT);
    let mut seen = Vec::new();
    for kill_after in [60, 150] {
        numbers_until(&mut client, kill_after, &mut seen).await;
        let killed = kill_readers(&prefix.0, &a.state.instance.id).await;
        assert_eq!(
            killed, 17,
            "one reader per shard and one for internal topics"
        );
    }
    numbers_until(&mut client, COUNT - 1, &mut seen).await;
    publishing.await.unwrap();
    assert_eq!(seen, (0..COUNT).collect::<Vec<_>>());
    assert!(
        a.sample("palisade_cluster_errors_total{part=\"bus\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
}

#[tokio::test]
async fn a_redis_restarted_empty_gives_subscribers_a_gap_and_later_events_still_arrive() {
    const TOPIC: &str = "system:news";
    let mut redis = PrivateRedis::start().await;
    let prefix = unique_prefix();
    let a = spawn_instance(&redis.url(), &prefix, roomy).await;
    let b = spawn_instance(&redis.url(), &prefix, roomy).await;
    let publisher = Publisher::on(&b);
    let mut client = a.ws_acked("alice").await;
    subscribe(&mut client, "1", TOPIC, None).await;
    until_live(&mut client, &publisher, TOPIC).await;
    publisher.publish(TOPIC, 1).await;
    assert_eq!(next_event(&mut client).await["payload"]["n"], 1);

    redis.restart().await;
    let gap = next_event(&mut client).await;
    assert_eq!(gap["type"], "GAP", "{gap}");
    // The publishing instance's connection comes back on its own; until then it says so.
    let mut published = Value::Null;
    for _ in 0..50 {
        published = publisher.send(TOPIC, "n", json!({ "n": 2 })).await;
        if published["data"]["publish"]["id"].is_string() {
            break;
        }
        assert_eq!(
            published["errors"][0]["extensions"]["code"],
            "BUS_UNAVAILABLE"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = next_event(&mut client).await;
    assert_eq!(event["payload"]["n"], 2, "{event}");
    assert_eq!(event["id"], published["data"]["publish"]["id"]);
    // At least the client's; the registry's own `$control` subscription sees the reset too.
    assert!(
        a.sample("palisade_bus_gaps_total{cause=\"redis_reset\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn publishing_or_resuming_while_redis_is_down_answers_bus_unavailable() {
    let mut redis = PrivateRedis::start().await;
    let app = spawn_instance(&redis.url(), &unique_prefix(), roomy).await;
    let publisher = Publisher::on(&app);
    let id = publisher.publish("system:news", 1).await;

    redis.kill().await;
    // The first publish finds the connection broken, the second one a reconnection failing.
    for n in [2, 3] {
        let answer = publisher.send("system:news", "n", json!({ "n": n })).await;
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "BUS_UNAVAILABLE",
            "{answer}"
        );
        assert!(answer["data"].is_null(), "{answer}");
    }
    let mut client = app.ws_acked("alice").await;
    subscribe(&mut client, "1", "system:news", Some(&id)).await;
    let refused = client.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "BUS_UNAVAILABLE"
    );
}

#[tokio::test]
async fn resuming_from_further_back_than_the_replay_limit_gives_a_gap_then_the_newest_events() {
    const TOPIC: &str = "system:backlog";
    let prefix = unique_prefix();
    let _keys = Keys(prefix.clone());
    let limited = |c: &mut Config| {
        roomy(c);
        c.streams.replay_limit = 5;
    };
    let a = spawn_instance(&redis_url(), &prefix, limited).await;
    let b = spawn_instance(&redis_url(), &prefix, limited).await;
    let publisher = Publisher::on(&b);
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(publisher.publish(TOPIC, n).await);
    }
    let mut client = a.ws_acked("alice").await;
    subscribe(&mut client, "1", TOPIC, Some(&ids[0])).await;
    let gap = next_event(&mut client).await;
    assert_eq!(
        (gap["type"].as_str(), gap["id"].as_str()),
        (Some("GAP"), Some(ids[0].as_str()))
    );
    let mut seen = Vec::new();
    numbers_until(&mut client, 11, &mut seen).await;
    assert_eq!(seen, [7, 8, 9, 10, 11]);
    publisher.publish(TOPIC, 12).await;
    numbers_until(&mut client, 12, &mut seen).await;
    assert_eq!(seen.last(), Some(&12), "then live: {seen:?}");
    a.assert_metrics(&["palisade_bus_gaps_total{cause=\"replay_window\"} 1"])
        .await;
}

#[tokio::test]
async fn presence_transitions_cannot_trim_away_the_events_clients_resume_from() {
    let prefix = unique_prefix();
    let _keys = Keys(prefix.clone());
    let mut config = Config::default();
    config.streams.key_prefix = prefix.clone();
    // One shard, so every client topic shares its stream with the transitions unless they have
    // one of their own.
    config.streams.shards = 1;
    config.streams.maxlen = 10;
    let metrics = Arc::new(Metrics::new("test"));
    let shutdown = CancellationToken::new();
    let client = redis::Client::open(redis_url()).unwrap();
    let bus = RedisBus::start(client, &config, "one", metrics.clone(), &shutdown).unwrap();
    let first = bus.publish("a".into(), "k".into(), json!(0)).await.unwrap();
    bus.publish("a".into(), "k".into(), json!(1)).await.unwrap();
    // A reconnect storm's leaves and joins, far past `maxlen`: Redis trims whole nodes of 100
    // entries, so this is what empties the first node of a shared stream.
    for n in 0..500 {
        let topic = format!("$presence:t{n}");
        bus.publish(topic, "join".into(), json!(n)).await.unwrap();
    }
    let resumed = bus.subscribe("a".into(), Some(first.id)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), resumed.take(1).collect::<Vec<_>>())
        .await
        .expect("the resume delivers");
    match &got[..] {
        [Delivery::Event(event)] => assert_eq!(event.payload, json!(1)),
        other => panic!("expected the missed event, got {other:?}"),
    }
    let gaps = metrics.bus_gaps.with_label_values(&["replay_window"]).get();
    assert_eq!(gaps, 0);
    shutdown.cancel();
}

#[tokio::test]
async fn a_plain_xadd_in_the_documented_format_is_delivered_and_malformed_entries_are_skipped() {
    const TOPIC: &str = "system:plain";
    let prefix = unique_prefix();
    let _keys = Keys(prefix.clone());
    let app = spawn_instance(&redis_url(), &prefix, roomy).await;
    let mut client = app.ws_acked("alice").await;
    subscribe(&mut client, "1", TOPIC, None).await;
    until_live(&mut client, &Publisher::on(&app), TOPIC).await;

    let key = stream_key(&prefix, shard_of(TOPIC, 16));
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let xadd = |fields: &[(&str, &str)]| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key).arg("MAXLEN").arg("~").arg(10_000).arg("*");
        for (field, value) in fields {
            cmd.arg(field).arg(value);
        }
        cmd
    };
    let mut ids = Vec::new();
    for fields in [
        &[
            ("topic", TOPIC),
            ("type", "plain"),
            ("payload", r#"{"n":1}"#),
        ][..],
        &[("type", "plain"), ("payload", r#"{"n":-1}"#)],
        &[
            ("topic", TOPIC),
            ("type", "plain"),
            ("payload", "{not json"),
        ],
        &[("topic", TOPIC), ("payload", r#"{"n":-2}"#)],
        &[
            ("topic", TOPIC),
            ("type", "plain"),
            ("payload", r#"{"n":2}"#),
        ],
    ] {
        let id: String = xadd(fields).query_async(&mut redis).await.unwrap();
        ids.push(id);
    }
    for (n, id) in [(1, &ids[0]), (2, &ids[4])] {
        let event = next_event(&mut client).await;
        assert_eq!(event["type"], "plain", "{event}");
        assert_eq!(event["payload"], json!({ "n": n }));
        assert_eq!(event["id"].as_str(), Some(id.as_str()));
    }
}

#[tokio::test]
async fn a_slow_consumer_is_closed_while_another_subscriber_on_its_instance_gets_every_event() {
    const TOPIC: &str = "system:flood";
    let prefix = unique_prefix();
    let _keys = Keys(prefix.clone());
    let small = |c: &mut Config| {
        roomy(c);
        c.connections.send_queue = 8;
        // Big events: keep the streams small.
        c.streams.maxlen = 50;
    };
    let a = spawn_instance(&redis_url(), &prefix, small).await;
    let b = spawn_instance(&redis_url(), &prefix, small).await;
    let publisher = Publisher::on(&b);
    let mut slow = a.ws_acked("slow").await;
    let mut fast = a.ws_acked("fast").await;
    for client in [&mut slow, &mut fast] {
        subscribe(client, "1", TOPIC, None).await;
        until_live(client, &publisher, TOPIC).await;
    }
    // The slow client reads nothing while far more than its queue and socket buffers can hold is
    // published; the fast one keeps up.
    let big = "x".repeat(32 * 1024);
    for n in 0..400 {
        let answer = publisher
            .send(TOPIC, "n", json!({ "n": n, "pad": big }))
            .await;
        assert!(answer["data"]["publish"]["id"].is_string(), "{answer}");
        assert_eq!(next_event(&mut fast).await["payload"]["n"], n);
    }
    drop((slow, fast));
    let rows = a.closed_connection_rows().await;
    let codes: Vec<_> = rows.iter().map(|r| (r.0.as_deref(), r.3)).collect();
    assert!(codes.contains(&(Some("slow"), Some(4503))), "{codes:?}");
}

#[tokio::test]
async fn after_many_topics_come_and_go_only_the_event_streams_and_the_epoch_key_remain() {
    let prefix = unique_prefix();
    let _keys = Keys(prefix.clone());
    let tweak = |c: &mut Config| {
        roomy(c);
        c.streams.shards = 4;
        c.operations.rate_limit.limit = 10_000;
    };
    let a = spawn_instance(&redis_url(), &prefix, tweak).await;
    let b = spawn_instance(&redis_url(), &prefix, tweak).await;
    let publisher = Publisher::on(&b);
    let mut client = a.ws_acked("alice").await;
    for n in 0..60 {
        let topic = format!("system:churn-{n}");
        // Resuming from the start makes the subscription see the event wherever it lands
        // (replay or live), with no probe needed.
        subscribe(&mut client, &n.to_string(), &topic, Some("0-0")).await;
        publisher.publish(&topic, n).await;
        assert_eq!(next_event(&mut client).await["payload"]["n"], n);
        client
            .send(json!({ "id": n.to_string(), "type": "complete" }))
            .await;
    }
    drop(client);

    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut allowed: Vec<String> = (0..4).map(|shard| stream_key(&prefix, shard)).collect();
    // The subscriptions' presence transitions went to the internal stream.
    allowed.push(internal_stream_key(&prefix));
    allowed.push(epoch_key(&prefix));
    allowed.sort();
    // Presence keys and connection slots go once the closed connection's leaves and releases
    // are applied, just after the close. Connection rates expire on their own, within a minute.
    let rates = format!("{prefix}:ratelimit:");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut found: Vec<_> = keys(&mut conn, &prefix)
            .into_iter()
            .filter(|key| !key.starts_with(&rates))
            .collect();
        found.sort();
        if found == allowed || std::time::Instant::now() > deadline {
            assert_eq!(found, allowed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_instance_that_shuts_down_closes_its_reader_connections() {
    let prefix = unique_prefix();
    let _keys = Keys(prefix.clone());
    let mut app = spawn_instance(&redis_url(), &prefix, roomy).await;
    let instance = app.state.instance.id.clone();
    let mut conn = shared_redis().await;
    let mut readers = Vec::new();
    for _ in 0..100 {
        readers = reader_ids(&mut conn, &prefix, &instance).await;
        if readers.len() == 17 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readers.len(), 17, "one named reader per stream");

    app.begin_shutdown();
    app.stopped().await.unwrap();
    for _ in 0..100 {
        readers = reader_ids(&mut conn, &prefix, &instance).await;
        if readers.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("readers still connected after shutdown: {readers:?}");
}

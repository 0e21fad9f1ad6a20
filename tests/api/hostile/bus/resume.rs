//! Resumes with `after`: a storm of them, and ids a client made up.

use std::time::Duration;

use serde_json::{Value, json};

use super::{PATIENCE, publish, roomy, subscribe};
use crate::helpers::{TestApp, redis_url, spawn_app_with, spawn_instance, unique_prefix};

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
        let active = app.sample("palisade_replays_active").await.unwrap();
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

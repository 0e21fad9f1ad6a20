//! Topics a client makes the bus keep, and how long their names may be.

use serde_json::{Value, json};

use super::{complete, extensions, roomy, subscribe, until};
use crate::helpers::{PUBLISH_KEY, spawn_app_with};

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
    assert_eq!(app.sample("palisade_topics_active").await, Some(own));
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

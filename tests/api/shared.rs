//! Shared subscription executions: subscribers of the same document and variables are served by
//! one execution per event, each on its own operation id and in its own subprotocol's envelope.

use serde_json::{Map, Value, json};

use crate::helpers::{TestApp, WsClient, publish_event, spawn_app, until_live};

const EVENTS: &str = "subscription($t: String!) { events(topic: $t) { topic type payload } }";

fn subscribe(kind: &str, id: &str, topic: &str) -> Value {
    json!({ "id": id, "type": kind, "payload": { "query": EVENTS, "variables": { "t": topic } } })
}

/// The next message that is not a `ready` event of `until_live`.
async fn next_event(client: &mut WsClient) -> Value {
    loop {
        let message = client.recv().await;
        if message["payload"]["data"]["events"]["type"] != "ready" {
            return message;
        }
    }
}

async fn legacy_acked(app: &TestApp, sub: &str) -> WsClient {
    let mut client = app.ws("graphql-ws").await;
    let authorization = format!("Bearer {}", app.token(sub));
    client
        .send(json!({ "type": "connection_init", "payload": { "authorization": authorization } }))
        .await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    client
}

#[tokio::test]
async fn subscribers_of_the_same_subscription_share_one_execution_each_on_its_own_id() {
    let app = spawn_app().await;
    let mut alice = app.ws_acked("alice").await;
    alice
        .send(subscribe("subscribe", "a1", "system:news"))
        .await;
    until_live(&app, &mut alice, &[("a1", "system:news")]).await;
    let mut bob = app.ws_acked("bob").await;
    bob.send(subscribe("subscribe", "b7", "system:news")).await;
    let mut carol = legacy_acked(&app, "carol").await;
    carol.send(subscribe("start", "c", "system:news")).await;
    let mut dave = app.ws_acked("dave").await;
    dave.send(subscribe("subscribe", "d", "system:other")).await;
    until_live(&app, &mut dave, &[("d", "system:other")]).await;
    app.until_metrics(&[
        "palisade_shared_subscriptions 2",
        "palisade_shared_subscribers 4",
    ])
    .await;

    publish_event(&app, "system:news", "hello").await;
    let mut payloads = Vec::new();
    for (client, id, kind) in [
        (&mut alice, "a1", "next"),
        (&mut bob, "b7", "next"),
        (&mut carol, "c", "data"),
    ] {
        let message = next_event(client).await;
        assert_eq!(
            (&message["id"], &message["type"]),
            (&json!(id), &json!(kind))
        );
        payloads.push(message["payload"].clone());
    }
    assert_eq!(payloads[0]["data"]["events"]["type"], "hello");
    assert!(payloads.iter().all(|p| *p == payloads[0]), "{payloads:?}");
    publish_event(&app, "system:other", "other").await;
    let message = next_event(&mut dave).await;
    assert_eq!(
        message["payload"]["data"]["events"]["type"], "other",
        "dave follows only his topic"
    );
}

#[tokio::test]
async fn a_completed_shared_subscription_frees_its_id_at_once_and_the_last_member_ends_the_group() {
    let app = spawn_app().await;
    let mut alice = app.ws_acked("alice").await;
    alice.send(subscribe("subscribe", "1", "system:news")).await;
    until_live(&app, &mut alice, &[("1", "system:news")]).await;
    let mut bob = app.ws_acked("bob").await;
    bob.send(subscribe("subscribe", "b", "system:news")).await;
    app.until_metrics(&["palisade_shared_subscribers 2"]).await;

    // The id is reused at once, for another topic: nothing of the old one may arrive under it.
    alice.send(json!({ "id": "1", "type": "complete" })).await;
    alice
        .send(subscribe("subscribe", "1", "system:other"))
        .await;
    publish_event(&app, "system:news", "late").await;
    until_live(&app, &mut alice, &[("1", "system:other")]).await;
    publish_event(&app, "system:other", "mark").await;
    let message = next_event(&mut alice).await;
    assert_eq!(
        message["payload"]["data"]["events"]["topic"], "system:other",
        "{message}"
    );
    assert_eq!(
        next_event(&mut bob).await["payload"]["data"]["events"]["type"],
        "late"
    );

    bob.send(json!({ "id": "b", "type": "complete" })).await;
    app.until_metrics(&[
        "palisade_shared_subscriptions 1",
        "palisade_shared_subscribers 1",
    ])
    .await;
}

#[tokio::test]
async fn a_member_that_loses_its_grant_ends_with_forbidden_while_the_others_keep_receiving() {
    let app = spawn_app().await;
    let member = || Map::from_iter([("workspaces".to_string(), json!(["acme"]))]);
    let mut alice = app.ws_acked_with(&app.token_with("alice", member())).await;
    alice
        .send(subscribe("subscribe", "feed", "workspace:acme:feed"))
        .await;
    until_live(&app, &mut alice, &[("feed", "workspace:acme:feed")]).await;
    let mut bob = app.ws_acked_with(&app.token_with("bob", member())).await;
    bob.send(subscribe("subscribe", "feed", "workspace:acme:feed"))
        .await;
    app.until_metrics(&["palisade_shared_subscribers 2"]).await;

    let refresh = json!({ "id": "r", "type": "subscribe", "payload": {
        "query": "mutation($t: String!) { refreshAuth(token: $t) { expiresAt } }",
        "variables": { "t": app.token("alice") } } });
    alice.send(refresh).await;
    let ended = loop {
        let message = alice.recv().await;
        if message["id"] == "feed" {
            break message;
        }
    };
    assert_eq!(ended["type"], "error", "{ended}");
    assert_eq!(
        ended["payload"][0]["extensions"]["code"], "FORBIDDEN",
        "{ended}"
    );
    app.until_metrics(&["palisade_shared_subscribers 1"]).await;

    publish_event(&app, "workspace:acme:feed", "after-refresh").await;
    let message = next_event(&mut bob).await;
    assert_eq!(
        message["payload"]["data"]["events"]["type"],
        "after-refresh"
    );
    alice.send(json!({ "type": "ping" })).await;
    loop {
        let message = alice.recv().await;
        if message["type"] == "pong" {
            break;
        }
        assert_eq!(message["id"], "r", "nothing more for feed: {message}");
    }
}

#[tokio::test]
async fn a_parked_member_keeps_its_operation_slot_and_its_id() {
    let app = crate::helpers::spawn_app_with(|c| c.connections.max_operations = 2).await;
    let mut alice = app.ws_acked("alice").await;
    alice.send(subscribe("subscribe", "a", "system:a")).await;
    alice.send(subscribe("subscribe", "b", "system:b")).await;
    until_live(&app, &mut alice, &[("a", "system:a"), ("b", "system:b")]).await;
    app.until_metrics(&["palisade_shared_subscribers 2"]).await;

    // Both members are parked, their tasks gone: the slots are still theirs.
    alice.send(subscribe("subscribe", "c", "system:c")).await;
    let refused = next_event(&mut alice).await;
    assert_eq!(
        (&refused["id"], &refused["type"]),
        (&json!("c"), &json!("error"))
    );
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "MAX_OPERATIONS_LIMIT"
    );
    alice.send(subscribe("subscribe", "a", "system:a")).await;
    assert_eq!(
        alice.closed().await,
        (4409, "Subscriber for a already exists".into())
    );
}

#[tokio::test]
async fn a_closed_connection_takes_its_parked_members_out_of_their_groups() {
    let app = spawn_app().await;
    let mut alice = app.ws_acked("alice").await;
    alice.send(subscribe("subscribe", "1", "system:news")).await;
    until_live(&app, &mut alice, &[("1", "system:news")]).await;
    let mut bob = app.ws_acked("bob").await;
    bob.send(subscribe("subscribe", "1", "system:news")).await;
    app.until_metrics(&["palisade_shared_subscribers 2"]).await;

    drop(alice);
    app.until_metrics(&["palisade_shared_subscribers 1"]).await;
    drop(bob);
    app.until_metrics(&[
        "palisade_shared_subscriptions 0",
        "palisade_shared_subscribers 0",
    ])
    .await;
}

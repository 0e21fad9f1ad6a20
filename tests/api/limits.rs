use serde_json::json;

use crate::helpers::spawn_app_with;

const EVENTS: &str = "subscription($t: String!) { events(topic: $t) { id } }";

#[tokio::test]
async fn operations_past_max_operations_get_an_error_and_complete_frees_a_slot() {
    let app = spawn_app_with(|c| c.connections.max_operations = 2).await;
    let mut client = app.ws_acked("alice").await;
    for id in ["a", "b", "c"] {
        client.send(json!({ "id": id, "type": "subscribe", "payload": { "query": EVENTS, "variables": { "t": format!("system:{id}") } } })).await;
    }
    let refused = client.recv().await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["id"], "c");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "MAX_OPERATIONS_LIMIT"
    );
    assert_eq!(refused["payload"][0]["extensions"]["limit"], 2);

    client.send(json!({ "id": "a", "type": "complete" })).await;
    client
        .send(json!({ "id": "c", "type": "subscribe", "payload": { "query": "{ me { id } }" } }))
        .await;
    assert_eq!(
        client.recv().await["type"],
        "next",
        "the freed slot is usable"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer_without_slowing_others() {
    let app = spawn_app_with(|c| {
        c.connections.send_queue = 8;
        // The test publishes hundreds of events over HTTP from one address.
        c.operations.http.per_ip_per_second = 10_000;
        c.operations.http.burst = 10_000;
    })
    .await;
    let mut slow = app.ws_acked("slow").await;
    let mut fast = app.ws_acked("fast").await;
    let big = "x".repeat(32 * 1024);
    for client in [&mut slow, &mut fast] {
        client.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { events(topic: \"system:flood\") { payload } }" } })).await;
        client.send(json!({ "type": "ping" })).await;
        assert_eq!(client.recv().await["type"], "pong");
    }
    // The slow client reads nothing while far more than its queue and socket buffers can hold is
    // published; the fast one keeps up.
    for n in 0..400 {
        app.post_as_service("mutation($p: JSON) { publish(topic: \"system:flood\", type: \"t\", payload: $p) { id } }",
            json!({ "p": { "n": n, "pad": big } }),
        )
        .await;
        let event = fast.recv().await;
        assert_eq!(event["payload"]["data"]["events"]["payload"]["n"], n);
    }
    // A client that never reads cannot be handed a close frame either (its buffers are full); what
    // counts is that the server closed it as a slow consumer while the fast one kept up.
    drop((slow, fast));
    let rows = app.closed_connection_rows().await;
    let codes: Vec<_> = rows.iter().map(|r| (r.0.as_deref(), r.3)).collect();
    assert!(codes.contains(&(Some("slow"), Some(4503))), "{codes:?}");
}

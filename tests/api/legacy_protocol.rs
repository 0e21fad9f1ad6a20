use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_legacy_graphql_ws_protocol_can_start_receive_and_stop() {
    let app = spawn_app().await;
    let mut client = app.ws("graphql-ws").await;
    client.send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", app.token("old")) } })).await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    client.send(json!({ "id": "1", "type": "start", "payload": { "query": "subscription { events(topic: \"system:legacy\") { type } }" } })).await;
    client
        .send(json!({ "id": "2", "type": "start", "payload": { "query": "{ me { id } }" } }))
        .await;
    let data = client.recv().await;
    assert_eq!(data["type"], "data");
    assert_eq!(data["payload"]["data"]["me"]["id"], "old");
    assert_eq!(
        client.recv().await,
        json!({ "id": "2", "type": "complete" })
    );

    app.post_as_service(
        "mutation { publish(topic: \"system:legacy\", type: \"hello\") { id } }",
        json!({}),
    )
    .await;
    let event = client.recv().await;
    assert_eq!(
        (event["type"].as_str(), event["id"].as_str()),
        (Some("data"), Some("1"))
    );
    assert_eq!(event["payload"]["data"]["events"]["type"], "hello");
    client.send(json!({ "id": "1", "type": "stop" })).await;
    assert_eq!(
        client.recv().await,
        json!({ "id": "1", "type": "complete" })
    );
}

#[tokio::test]
async fn the_legacy_protocol_gets_connection_error_before_a_4403_close() {
    let app = spawn_app().await;
    let mut client = app.ws("graphql-ws").await;
    client
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(client.recv().await["type"], "connection_error");
    assert_eq!(client.closed().await.0, 4403);
}

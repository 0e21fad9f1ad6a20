use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::spawn_app;

const EVENTS: &str = "subscription($topic: String!, $after: ID) { events(topic: $topic, after: $after) { id topic type payload } }";
const PUBLISH: &str = "mutation($topic: String!, $payload: JSON) { publish(topic: $topic, type: \"note\", payload: $payload) { id } }";

#[tokio::test]
async fn a_subscriber_gets_acked_receives_published_events_and_can_complete() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    client.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": EVENTS, "variables": { "topic": "system:demo" } } })).await;
    // The subscription is registered once the server has processed the message; a ping round trip
    // on the same connection proves that.
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");

    let published = app
        .post_as_service(
            PUBLISH,
            json!({ "topic": "system:demo", "payload": { "n": 1 } }),
        )
        .await;
    let next = client.recv().await;
    assert_eq!(next["type"], "next");
    assert_eq!(next["id"], "1");
    assert_eq!(
        next["payload"]["data"]["events"]["payload"],
        json!({ "n": 1 })
    );
    assert_eq!(
        next["payload"]["data"]["events"]["id"],
        published["data"]["publish"]["id"]
    );

    client.send(json!({ "id": "1", "type": "complete" })).await;
    app.post_as_service(
        PUBLISH,
        json!({ "topic": "system:demo", "payload": { "n": 2 } }),
    )
    .await;
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(
        client.recv().await["type"],
        "pong",
        "no event arrives after complete"
    );
}

#[tokio::test]
async fn a_query_over_the_socket_yields_next_then_complete() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    client
        .send(json!({ "id": "q", "type": "subscribe", "payload": { "query": "{ me { id } }" } }))
        .await;
    let next = client.recv().await;
    assert_eq!(next["payload"]["data"]["me"]["id"], "alice");
    assert_eq!(
        client.recv().await,
        json!({ "id": "q", "type": "complete" })
    );
}

#[tokio::test]
async fn an_invalid_operation_gets_an_error_message_and_the_connection_stays_open() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    client
        .send(json!({ "id": "bad", "type": "subscribe", "payload": { "query": "{ nope }" } }))
        .await;
    let error = client.recv().await;
    assert_eq!(error["type"], "error");
    assert!(
        error["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope")
    );
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
}

#[tokio::test]
async fn resuming_with_after_replays_missed_events_in_order() {
    let app = spawn_app().await;
    let first = app
        .post_as_service(PUBLISH, json!({ "topic": "system:t", "payload": 1 }))
        .await;
    for n in 2..=3 {
        app.post_as_service(PUBLISH, json!({ "topic": "system:t", "payload": n }))
            .await;
    }
    let mut client = app.ws_acked("alice").await;
    let after = first["data"]["publish"]["id"].clone();
    client.send(json!({ "id": "r", "type": "subscribe", "payload": { "query": EVENTS, "variables": { "topic": "system:t", "after": after } } })).await;
    for n in 2..=3 {
        assert_eq!(
            client.recv().await["payload"]["data"]["events"]["payload"],
            n
        );
    }
}

#[tokio::test]
async fn a_malformed_message_closes_with_4400() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    client
        .send_raw(tokio_tungstenite::tungstenite::Message::text("{not json"))
        .await;
    assert_eq!(client.closed().await.0, 4400);
}

#[tokio::test]
async fn subscribing_before_the_ack_closes_with_4401() {
    let app = spawn_app().await;
    let mut client = app.ws("graphql-transport-ws").await;
    client
        .send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { id } }" } }))
        .await;
    assert_eq!(client.closed().await, (4401, "Unauthorized".into()));
}

#[tokio::test]
async fn bad_or_missing_credentials_close_with_4403_and_the_same_reason() {
    let app = spawn_app().await;
    for payload in [
        json!({}),
        json!({ "authorization": "Bearer not-a-jwt" }),
        json!({ "token": "x.y.z" }),
    ] {
        let mut client = app.ws("graphql-transport-ws").await;
        client
            .send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        assert_eq!(client.closed().await, (4403, "Forbidden".into()));
    }
}

#[tokio::test]
async fn anonymous_connections_are_accepted_when_auth_is_not_required() {
    let app = crate::helpers::spawn_app_with(|c| c.auth.required = false).await;
    let mut client = app.ws("graphql-transport-ws").await;
    client.send(json!({ "type": "connection_init" })).await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    client
        .send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { id } }" } }))
        .await;
    assert_eq!(client.recv().await["payload"]["data"]["me"], json!(null));
}

#[tokio::test]
async fn a_client_that_never_initialises_is_closed_with_4408() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.auth.connection_init_timeout = "200ms".parse().unwrap()
    })
    .await;
    let mut client = app.ws("graphql-transport-ws").await;
    assert_eq!(
        client.closed().await,
        (4408, "Connection initialisation timeout".into())
    );
}

#[tokio::test]
async fn reusing_a_running_operation_id_closes_with_4409() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    let subscribe = json!({ "id": "dup", "type": "subscribe", "payload": { "query": EVENTS, "variables": { "topic": "system:t" } } });
    client.send(subscribe.clone()).await;
    client.send(subscribe).await;
    assert_eq!(
        client.closed().await,
        (4409, "Subscriber for dup already exists".into())
    );
}

#[tokio::test]
async fn an_id_can_be_reused_once_its_operation_completed() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    for _ in 0..3 {
        client.send(json!({ "id": "same", "type": "subscribe", "payload": { "query": "{ me { id } }" } })).await;
        assert_eq!(client.recv().await["type"], "next");
        assert_eq!(client.recv().await["type"], "complete");
    }
}

#[tokio::test]
async fn a_second_connection_init_closes_with_4429() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    client.send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", app.token("alice")) } })).await;
    assert_eq!(client.closed().await.0, 4429);
}

#[tokio::test]
async fn a_message_over_max_message_bytes_closes_with_1009() {
    let app =
        crate::helpers::spawn_app_with(|c| c.payload.max_message_bytes = "4KiB".parse().unwrap())
            .await;
    let mut client = app.ws_acked("alice").await;
    let query = format!("{{ me {{ id }} }} # {}", "x".repeat(5000));
    client
        .send(json!({ "id": "big", "type": "subscribe", "payload": { "query": query } }))
        .await;
    assert_eq!(client.closed().await.0, 1009);
}

#[tokio::test]
async fn a_client_ping_gets_a_pong_with_its_payload() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    client
        .send(json!({ "type": "ping", "payload": { "t": 1 } }))
        .await;
    assert_eq!(
        client.recv().await,
        json!({ "type": "pong", "payload": { "t": 1 } })
    );
}

#[tokio::test]
async fn the_server_pings_and_closes_a_client_that_does_not_answer() {
    use tokio_tungstenite::tungstenite::Message;
    let app = crate::helpers::spawn_app_with(|c| {
        c.connections.ping_interval = "100ms".parse().unwrap();
        c.connections.pong_timeout = "300ms".parse().unwrap();
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    // Reading answers pings (tungstenite queues the pong), so the connection stays healthy.
    assert!(matches!(client.next_frame().await, Message::Ping(_)));
    assert!(matches!(client.next_frame().await, Message::Ping(_)));
    // Not reading means not answering: the server gives up after pong_timeout.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(client.closed().await, (4504, "Pong timeout".into()));
}

#[tokio::test]
async fn an_upgrade_without_a_graphql_subprotocol_is_refused_before_the_handshake() {
    let app = spawn_app().await;
    for protocol in [None, Some("chat")] {
        let mut request = format!("ws://{}/graphql", app.addr)
            .into_client_request()
            .unwrap();
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400)
            }
            other => panic!(
                "expected HTTP 400, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
}

#[tokio::test]
async fn a_client_close_is_answered_so_the_client_sees_a_clean_close() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    let frame = CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    };
    client
        .stream
        .send(Message::Close(Some(frame)))
        .await
        .unwrap();
    match client.next_frame().await {
        Message::Close(Some(reply)) => assert_eq!(u16::from(reply.code), 1000),
        other => panic!("expected the server's close reply, got {other:?}"),
    }
}

#[tokio::test]
async fn after_a_server_close_the_server_waits_for_the_clients_answer() {
    let app = spawn_app().await;
    let mut client = app.ws("graphql-transport-ws").await;
    client
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(client.closed().await.0, 4403);
    // Reading on lets tungstenite send our answering close frame; the server then ends the
    // connection cleanly, so the stream ends without a reset.
    use futures_util::StreamExt;
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), client.stream.next())
        .await
        .expect("the server ends the connection");
    assert!(
        end.is_none()
            || matches!(
                end,
                Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))
            ),
        "{end:?}"
    );
}

use serde_json::{Map, Value, json};

use crate::helpers::{TestApp, WsClient, spawn_app, spawn_app_with};

const CONVERSATION: &str = "6f1c7e0a-3b5d-4c9e-8a2f-0d1e2f3a4b5c";
const SEND: &str = "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id conversationId senderId content replyToId } }";

fn member_token(app: &TestApp, sub: &str) -> String {
    app.token_with(
        sub,
        Map::from_iter([("conversations".to_string(), json!([CONVERSATION]))]),
    )
}

async fn send(app: &TestApp, token: &str, content: &str) -> Value {
    app.post_with_token(
        token,
        SEND,
        json!({ "input": { "conversationId": CONVERSATION, "content": content } }),
    )
    .await
}

async fn member_ws(app: &TestApp, sub: &str) -> WsClient {
    app.ws_acked_with(&member_token(app, sub)).await
}

#[tokio::test]
async fn members_send_and_receive_messages_and_can_resume_after_a_known_id() {
    let app = spawn_app().await;
    let mut bob = member_ws(&app, "bob").await;
    bob.send(json!({ "id": "m", "type": "subscribe", "payload": { "query": "subscription($c: UUID!) { messages(conversationId: $c) { id senderId content } }", "variables": { "c": CONVERSATION } } })).await;
    bob.send(json!({ "type": "ping" })).await;
    assert_eq!(bob.recv().await["type"], "pong");

    let alice = member_token(&app, "alice");
    let first = send(&app, &alice, "hello").await;
    assert_eq!(first["data"]["sendMessage"]["senderId"], "alice", "{first}");
    let received = bob.recv().await;
    assert_eq!(received["payload"]["data"]["messages"]["content"], "hello");
    assert_eq!(
        received["payload"]["data"]["messages"]["id"],
        first["data"]["sendMessage"]["id"]
    );

    send(&app, &alice, "second").await;
    let mut late = member_ws(&app, "carol").await;
    late.send(json!({ "id": "r", "type": "subscribe", "payload": { "query": "subscription($c: UUID!, $a: ID) { messages(conversationId: $c, after: $a) { content } }", "variables": { "c": CONVERSATION, "a": first["data"]["sendMessage"]["id"] } } })).await;
    assert_eq!(
        late.recv().await["payload"]["data"]["messages"]["content"],
        "second"
    );
}

#[tokio::test]
async fn non_members_can_neither_send_nor_follow_a_conversation() {
    let app = spawn_app().await;
    let stranger = app.token("mallory");
    assert_eq!(
        send(&app, &stranger, "hi").await["errors"][0]["extensions"]["code"],
        "FORBIDDEN"
    );
    let mut client = app.ws_acked("mallory").await;
    client.send(json!({ "id": "m", "type": "subscribe", "payload": { "query": "subscription($c: UUID!) { messages(conversationId: $c) { id } }", "variables": { "c": CONVERSATION } } })).await;
    assert_eq!(
        client.recv().await["payload"][0]["extensions"]["code"],
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn invalid_input_gets_bad_user_input_with_per_field_messages() {
    let app = spawn_app().await;
    let token = member_token(&app, "alice");
    for (content, message) in [
        (String::new(), "must be 1 to 5000 characters"),
        ("x".repeat(5001), "must be 1 to 5000 characters"),
        (
            "bell\u{7}".to_string(),
            "must not contain control characters",
        ),
    ] {
        let answer = send(&app, &token, &content).await;
        let ext = &answer["errors"][0]["extensions"];
        assert_eq!(ext["code"], "BAD_USER_INPUT", "{answer}");
        assert_eq!(ext["fields"]["content"][0], message, "{answer}");
    }
    let longest = send(&app, &token, &"é".repeat(5000)).await;
    assert!(
        longest["data"]["sendMessage"]["id"].is_string(),
        "5000 characters pass: {longest}"
    );
    let malformed = app
        .post_with_token(
            &token,
            SEND,
            json!({ "input": { "conversationId": "not-a-uuid", "content": "x" } }),
        )
        .await;
    assert!(
        malformed["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("UUID")
            || malformed["errors"].is_array(),
        "{malformed}"
    );
}

#[tokio::test]
async fn strip_html_removes_tags_when_configured() {
    let app = spawn_app_with(|c| c.payload.content.strip_html = true).await;
    let answer = send(&app, &member_token(&app, "alice"), "<b>bold</b> move").await;
    assert_eq!(answer["data"]["sendMessage"]["content"], "bold move");
}

#[tokio::test]
async fn send_message_is_limited_to_30_per_minute_per_user() {
    let app = spawn_app().await;
    let token = member_token(&app, "alice");
    for n in 1..=30 {
        assert!(
            send(&app, &token, &format!("m{n}")).await["data"]["sendMessage"]["id"].is_string(),
            "message {n}"
        );
    }
    let refused = send(&app, &token, "one too many").await;
    let ext = &refused["errors"][0]["extensions"];
    assert_eq!(
        (
            ext["code"].as_str(),
            ext["limit"].as_u64(),
            ext["windowSeconds"].as_u64()
        ),
        (Some("RATE_LIMITED"), Some(30), Some(60))
    );
}

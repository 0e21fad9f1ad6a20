//! The operation budget and the per-operation limits: counting order, exemption, fragments; and
//! chat messages, which only `sendMessage` (and so its budget) can produce.

use palisade::config::{LimitScope, OnExceed, OperationLimit};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::helpers::{PUBLISH_KEY, TestApp, WsClient, spawn_app, spawn_app_with};

const WARNINGS: &str = "subscription { rateLimitWarning { current limit final } }";
const CONVERSATION: &str = "6f1c7e0a-3b5d-4c9e-8a2f-0d1e2f3a4b5c";

/// Sends operation `id` and returns its first answer (`next` or `error`), keeping other messages.
async fn answer(client: &mut WsClient, id: &str, payload: Value, others: &mut Vec<Value>) -> Value {
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": payload }))
        .await;
    loop {
        let message = client.recv().await;
        if message["id"] == id && message["type"] != "complete" {
            return message;
        }
        others.push(message);
    }
}

/// Every message until the server's close frame, and the close code.
async fn until_close(client: &mut WsClient) -> (Vec<Value>, u16) {
    let mut messages = Vec::new();
    loop {
        match client.next_frame().await {
            Message::Text(text) => messages.push(serde_json::from_str(&text).unwrap()),
            Message::Close(frame) => return (messages, frame.map_or(1005, |f| f.code.into())),
            _ => {}
        }
    }
}

fn code(answer: &Value) -> Option<&str> {
    answer["payload"][0]["extensions"]["code"].as_str()
}

// Several workers, so the operations' tasks really do run in whatever order they are scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_is_refused_exactly_from_the_101st_message_with_one_final_warning_and_4420() {
    let app = spawn_app_with(|c| {
        c.operations.rate_limit.limit = 100;
        c.operations.rate_limit.window = "1h".parse().unwrap();
        c.operations.rate_limit.on_exceed = OnExceed::Disconnect;
    })
    .await;
    for run in 0..4 {
        let mut client = app.ws_acked("alice").await;
        let mut others = Vec::new();
        // Message 1 watches the warnings; message 2 is answered before the burst, so the
        // warnings subscription is in place.
        client
            .send(json!({ "id": "w", "type": "subscribe", "payload": { "query": WARNINGS } }))
            .await;
        let second = answer(
            &mut client,
            "q2",
            json!({ "query": "{ me { id } }" }),
            &mut others,
        );
        assert_eq!(second.await["type"], "next", "run {run}");
        // Messages 3 to 103 in one burst; odd ones are far bigger, so they take longer to parse.
        let padding = format!("# {}\n", "x".repeat(12_000));
        for n in 3..=103 {
            let query = if n % 2 == 1 {
                format!("{padding}{{ me {{ id }} }}")
            } else {
                "{ me { id } }".to_string()
            };
            client
                .send(json!({ "id": format!("q{n}"), "type": "subscribe", "payload": { "query": query } }))
                .await;
        }
        let (messages, close) = until_close(&mut client).await;
        others.extend(messages);
        let refused: Vec<_> = others
            .iter()
            .filter(|m| m["type"] == "error")
            .map(|m| (m["id"].as_str().unwrap().to_string(), code(m)))
            .collect();
        let expected: Vec<_> = (101..=103)
            .map(|n| (format!("q{n}"), Some("RATE_LIMITED")))
            .collect();
        let mut sorted = refused.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "run {run}: refused {refused:?}");
        let answered = others
            .iter()
            .filter(|m| m["type"] == "next" && m["id"] != "w");
        assert_eq!(
            answered.count(),
            98,
            "run {run}: messages 3 to 100 answered"
        );
        let finals: Vec<_> = others
            .iter()
            .filter(|m| m["id"] == "w")
            .map(|m| m["payload"]["data"]["rateLimitWarning"]["final"].as_bool())
            .collect();
        assert_eq!(finals, [Some(false), Some(true)], "run {run}");
        assert_eq!(close, 4420, "run {run}");
    }
}

#[tokio::test]
async fn an_operation_named_after_an_exempt_field_is_still_counted() {
    let app = spawn_app_with(|c| {
        c.operations.rate_limit.limit = 3;
        c.operations.rate_limit.window = "1h".parse().unwrap();
        c.operations.rate_limit.on_exceed = OnExceed::Reject;
        c.operations.rate_limit.exempt_operations = vec!["refreshAuth".into()];
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    let mut others = Vec::new();
    let named =
        json!({ "query": "query refreshAuth { me { id } }", "operationName": "refreshAuth" });
    for n in 1..=3 {
        let answer = answer(&mut client, &format!("n{n}"), named.clone(), &mut others).await;
        assert_eq!(answer["payload"]["extensions"]["rateLimit"]["current"], n);
    }
    let refused = answer(&mut client, "n4", named, &mut others).await;
    assert_eq!(code(&refused), Some("RATE_LIMITED"), "{refused}");
    // A real refreshAuth stays exempt, through a fragment too (its bad token is its own error) ...
    let refresh =
        "mutation { ...R } fragment R on Mutation { refreshAuth(token: \"x\") { expiresAt } }";
    let exempt = answer(&mut client, "r", json!({ "query": refresh }), &mut others).await;
    assert_eq!(code(&exempt), Some("UNAUTHENTICATED"), "{exempt}");
    // ... but not once it selects another field beside it.
    let mixed = "mutation refreshAuth { refreshAuth(token: \"x\") { expiresAt } \
                 ... on Mutation { publish(topic: \"user:alice\", type: \"t\") { id } } }";
    let payload = json!({ "query": mixed, "operationName": "refreshAuth" });
    let counted = answer(&mut client, "m", payload, &mut others).await;
    assert_eq!(code(&counted), Some("RATE_LIMITED"), "{counted}");
}

fn member_token(app: &TestApp, sub: &str) -> String {
    let claims = Map::from_iter([("conversations".to_string(), json!([CONVERSATION]))]);
    app.token_with(sub, claims)
}

/// Three sendMessage calls, none of them a plain root field.
const THREE_SENDS: &str = "mutation($i: SendMessageInput!) { \
    ... on Mutation { a1: sendMessage(input: $i) { id } a2: sendMessage(input: $i) { id } } \
    ...Send } fragment Send on Mutation { a3: sendMessage(input: $i) { id } }";

fn three_sends() -> Value {
    json!({ "query": THREE_SENDS, "variables": { "i": { "conversationId": CONVERSATION, "content": "hi" } } })
}

async fn spawn_with_send_limit() -> TestApp {
    spawn_app_with(|c| {
        let limit = OperationLimit {
            limit: 4,
            window: "1h".parse().unwrap(),
            scope: LimitScope::User,
        };
        c.operations
            .per_operation
            .insert("sendMessage".into(), limit);
    })
    .await
}

#[tokio::test]
async fn send_message_through_fragments_and_aliases_is_limited_over_websocket() {
    let app = spawn_with_send_limit().await;
    let mut client = app.ws_acked_with(&member_token(&app, "alice")).await;
    let mut others = Vec::new();
    let first = answer(&mut client, "1", three_sends(), &mut others).await;
    assert_eq!(first["type"], "next", "{first}");
    assert!(first["payload"]["data"]["a3"]["id"].is_string(), "{first}");
    // Calls four and five: the fifth is over the limit of four.
    let second = answer(&mut client, "2", three_sends(), &mut others).await;
    let ext = &second["payload"][0]["extensions"];
    assert_eq!(
        (ext["code"].as_str(), ext["limit"].as_u64()),
        (Some("RATE_LIMITED"), Some(4))
    );
}

#[tokio::test]
async fn send_message_through_fragments_and_aliases_is_limited_over_http() {
    let app = spawn_with_send_limit().await;
    let token = member_token(&app, "bob");
    let (query, variables) = (THREE_SENDS, three_sends()["variables"].clone());
    let first = app.post_with_token(&token, query, variables.clone()).await;
    assert!(first["data"]["a1"]["id"].is_string(), "{first}");
    let second = app.post_with_token(&token, query, variables).await;
    let ext = &second["errors"][0]["extensions"];
    assert_eq!(
        (ext["code"].as_str(), ext["limit"].as_u64()),
        (Some("RATE_LIMITED"), Some(4))
    );
}

#[tokio::test]
async fn fields_wrapped_in_fragments_get_no_introspection_depth_allowance() {
    let app = spawn_app_with(|c| {
        c.payload.introspection = true;
        c.payload.max_depth = 5;
    })
    .await;
    // Depth 7 once `T` is spread: past max_depth, within the introspection allowance. (Each
    // fragment's own text is within max_depth, so only the measured depth decides.)
    let deep = "__schema { types { ...T } }";
    let t = "fragment T on __Type { fields { type { ofType { ofType { name } } } } }";
    let allowed = app
        .post("alice", &format!("{{ {deep} }} {t}"), json!({}))
        .await;
    assert!(allowed["data"]["__schema"].is_object(), "{allowed}");
    for query in [
        format!("{{ {deep} ... on Query {{ me {{ id }} }} }} {t}"),
        format!("{{ ...F }} fragment F on Query {{ {deep} me {{ id }} }} {t}"),
    ] {
        let refused = app.post("alice", &query, json!({})).await;
        let ext = &refused["errors"][0]["extensions"];
        assert_eq!(
            (ext["code"].as_str(), ext["limit"].as_u64()),
            (Some("MAX_DEPTH_LIMIT"), Some(5)),
            "{query}: {refused}"
        );
    }
}

#[tokio::test]
async fn subscribing_to_system_topics_costs_budget_like_any_operation() {
    let app = spawn_app_with(|c| {
        c.operations.rate_limit.limit = 6;
        c.operations.rate_limit.window = "1h".parse().unwrap();
        c.operations.rate_limit.on_exceed = OnExceed::Reject;
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    let mut others = Vec::new();
    let events = "subscription($t: String!) { events(topic: $t) { id } }";
    let subscribe =
        |n: u64| json!({ "query": events, "variables": { "t": format!("system:churn-{n}") } });
    // Subscribe, then complete once the subscription has been counted: the query behind it is
    // answered only after it (operations are counted in arrival order).
    for n in 1..=3 {
        client
            .send(json!({ "id": format!("s{n}"), "type": "subscribe", "payload": subscribe(n) }))
            .await;
        let query = json!({ "query": "{ __typename }" });
        let answer = answer(&mut client, &format!("q{n}"), query, &mut others).await;
        assert_eq!(
            answer["payload"]["extensions"]["rateLimit"]["current"],
            2 * n
        );
        client
            .send(json!({ "id": format!("s{n}"), "type": "complete" }))
            .await;
    }
    let refused = answer(&mut client, "s4", subscribe(4), &mut others).await;
    assert_eq!(code(&refused), Some("RATE_LIMITED"), "{refused}");
}

/// A payload that would pass for another user's message, were it delivered.
fn forged() -> Value {
    json!({ "conversationId": CONVERSATION, "senderId": "ceo", "content": "wire the money",
            "replyToId": null, "sentAt": "2020-01-01T00:00:00Z" })
}

async fn watch_messages(app: &TestApp, sub: &str) -> WsClient {
    let mut client = app.ws_acked_with(&member_token(app, sub)).await;
    let query = "subscription($c: UUID!) { messages(conversationId: $c) { senderId content } }";
    client
        .send(json!({ "id": "m", "type": "subscribe", "payload": { "query": query, "variables": { "c": CONVERSATION } } }))
        .await;
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
    client
}

async fn send_real_message(app: &TestApp, sub: &str) {
    let send = "mutation($i: SendMessageInput!) { sendMessage(input: $i) { id } }";
    let variables = json!({ "i": { "conversationId": CONVERSATION, "content": "the real one" } });
    let sent = app
        .post_with_token(&member_token(app, sub), send, variables)
        .await;
    assert!(sent["data"]["sendMessage"]["id"].is_string(), "{sent}");
}

#[tokio::test]
async fn a_member_cannot_forge_a_chat_message_through_publish() {
    let app = spawn_app().await;
    let mut bob = watch_messages(&app, "bob").await;
    let publish = "mutation($t: String!, $k: String!, $p: JSON) { publish(topic: $t, type: $k, payload: $p) { id } }";
    let topic = format!("conversation:{CONVERSATION}");
    for kind in ["message", "Message", "GAP"] {
        let variables = json!({ "t": topic, "k": kind, "p": forged() });
        let answer = app
            .post_with_token(&member_token(&app, "alice"), publish, variables)
            .await;
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "FORBIDDEN",
            "{kind}: {answer}"
        );
    }
    // Nor with the publish key, on a topic it may publish on.
    let response = reqwest::Client::new()
        .post(app.url("/api/publish"))
        .bearer_auth(PUBLISH_KEY)
        .json(&json!({ "topic": "system:news", "type": "message", "payload": forged() }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    // The first message bob receives is the one sent with sendMessage.
    send_real_message(&app, "alice").await;
    let received = &bob.recv().await["payload"]["data"]["messages"];
    assert_eq!(
        (received["senderId"].as_str(), received["content"].as_str()),
        (Some("alice"), Some("the real one"))
    );
}

#[tokio::test]
async fn messages_delivers_only_events_that_send_message_could_have_written() {
    let app = spawn_app().await;
    let mut bob = watch_messages(&app, "bob").await;
    let topic = format!("conversation:{CONVERSATION}");
    let other = "00000000-0000-4000-8000-000000000000";
    let mut wrong_conversation = forged();
    wrong_conversation["conversationId"] = json!(other);
    let mut control_character = forged();
    control_character["content"] = json!("bell\u{7}");
    let mut too_long = forged();
    too_long["content"] = json!("x".repeat(6029));
    let mut extra_field = forged();
    extra_field["admin"] = json!(true);
    // Written past the publish checks, as an event stored before them would be replayed.
    for payload in [wrong_conversation, control_character, too_long, extra_field] {
        app.state
            .bus
            .publish(topic.clone(), "message".into(), payload)
            .await
            .unwrap();
    }
    send_real_message(&app, "alice").await;
    let received = &bob.recv().await["payload"]["data"]["messages"];
    assert_eq!(received["content"], "the real one", "{received}");
}

#[tokio::test]
async fn root_fields_repeated_through_spreads_count_against_max_root_fields() {
    let app = spawn_app().await;
    let fields: Vec<_> = (0..11).map(|n| format!("a{n}: me {{ id }}")).collect();
    let query = format!(
        "{{ ...F ...F }} fragment F on Query {{ {} }}",
        fields.join(" ")
    );
    let refused = app.post("alice", &query, json!({})).await;
    let ext = &refused["errors"][0]["extensions"];
    assert_eq!(
        (
            ext["code"].as_str(),
            ext["limit"].as_u64(),
            ext["measured"].as_u64()
        ),
        (Some("MAX_ROOT_FIELDS_LIMIT"), Some(20), Some(22)),
        "{refused}"
    );
}

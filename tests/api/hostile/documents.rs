//! Hostile documents: each must get a clean error, quickly, and leave the server serving. A stack
//! overflow here aborts the whole test binary, which is exactly what these tests guard against.
//!
//! The bound on time is generous on purpose: it catches a stall (exponential or quadratic work), not
//! a slow machine. Each test also says which code the document checks (`limits::document`) give
//! the input at the app's limits, so what the server answers once they run in front of
//! async-graphql is pinned down here.

use std::time::{Duration, Instant};

use async_graphql::parser::parse_query;
use palisade::config::{Config, Payload};
use palisade::limits::document::{check_document, check_variables, scan_query};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::helpers::{TestApp, WsClient, spawn_app, spawn_app_with};

const BOUND: Duration = Duration::from_secs(2);

/// Room for big documents, so they get past the size and token counts to the parser and the
/// checks after it.
fn roomy(config: &mut Config) {
    config.payload.max_query_bytes = "60KiB".parse().unwrap();
    config.payload.max_message_bytes = "64KiB".parse().unwrap();
    config.payload.max_tokens = 100_000;
}

/// Posts a raw JSON body as alice; the JSON answer and how long it took.
async fn post_raw(app: &TestApp, body: String) -> (Value, Duration) {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(app.url("/graphql"))
        .bearer_auth(app.token("alice"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the server answers");
    let answer = response.json().await.expect("the answer is JSON");
    (answer, started.elapsed())
}

async fn post_query(app: &TestApp, query: &str) -> (Value, Duration) {
    post_raw(app, json!({ "query": query }).to_string()).await
}

/// The body of a request whose `variables` is raw JSON text (too deep to build as a `Value`).
fn body_with_variables(query: &str, variables: &str) -> String {
    format!(r#"{{"query":{},"variables":{variables}}}"#, json!(query))
}

/// Sends a raw `subscribe` and waits for the first answer: a message or a close.
async fn ws_raw(client: &mut WsClient, payload: &str) -> (Answer, Duration) {
    let started = Instant::now();
    let message = format!(r#"{{"id":"h","type":"subscribe","payload":{payload}}}"#);
    client.send_raw(Message::text(message)).await;
    let answer = loop {
        match client.next_frame().await {
            Message::Text(text) => break Answer::Message(serde_json::from_str(&text).unwrap()),
            Message::Close(frame) => break Answer::Closed(frame.map_or(1005, |f| f.code.into())),
            _ => continue,
        }
    };
    (answer, started.elapsed())
}

async fn ws_query(client: &mut WsClient, query: &str) -> (Answer, Duration) {
    ws_raw(client, &json!({ "query": query }).to_string()).await
}

#[derive(Debug)]
enum Answer {
    Message(Value),
    Closed(u16),
}

/// An HTTP answer that is an error: a non-empty `errors` and no data.
fn assert_http_error(answer: &Value, took: Duration) {
    assert!(
        answer["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "an error, got {answer}"
    );
    assert!(answer["data"].is_null(), "no data, got {answer}");
    assert!(took < BOUND, "answered in {took:?}");
}

/// A WebSocket answer that is an error: an `error` message, a `next` carrying errors, or (for a
/// message that is not even valid JSON) the protocol's close 4400.
fn assert_ws_error(answer: &Answer, took: Duration) {
    match answer {
        Answer::Message(message) => assert!(
            message["type"] == "error"
                || message["payload"]["errors"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty()),
            "an error, got {message}"
        ),
        Answer::Closed(code) => assert_eq!(*code, 4400, "only a malformed message may close"),
    }
    assert!(took < BOUND, "answered in {took:?}");
}

/// The server still serves: `/healthz` answers, and a connection answers a ping.
async fn assert_alive(app: &TestApp, client: &mut WsClient) {
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
}

/// The code the document checks give `query` at the app's limits.
fn checks_refuse(app: &TestApp, query: &str) -> &'static str {
    let limits = &app.state.config.payload;
    let checked = scan_query(query, limits).and_then(|()| {
        let doc = parse_query(query).expect("what passes the scan parses");
        check_document(&doc, None, limits)
    });
    checked.expect_err("the document checks refuse it").code
}

/// Runs `query` over HTTP and over WebSocket (on `client`), and checks that both are refused
/// quickly and the server still serves.
async fn refused_both_ways(app: &TestApp, client: &mut WsClient, query: &str) {
    let (answer, took) = post_query(app, query).await;
    assert_http_error(&answer, took);
    let (answer, took) = ws_query(client, query).await;
    assert_ws_error(&answer, took);
    assert_alive(app, client).await;
}

fn nested(open: &str, inner: &str, close: &str, levels: usize) -> String {
    format!("{}{inner}{}", open.repeat(levels), close.repeat(levels))
}

/// Without the scan in front, pest's own stack guard ("stack limit reached") refuses this depth.
#[tokio::test]
async fn five_thousand_nested_lists_in_an_argument() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    let query = format!("{{ me(x: {}) {{ id }} }}", nested("[", "1", "]", 5_000));
    assert_eq!(checks_refuse(&app, &query), "MAX_INPUT_NESTING_LIMIT");
    refused_both_ways(&app, &mut client, &query).await;
}

/// Shallow enough to pass pest's stack guard, deep enough for the recursion after it: the window
/// that overflows a 2 MiB stack (a tokio worker's) in a debug build, without the scan in front.
#[tokio::test]
async fn hundreds_of_nested_lists_and_objects_in_an_argument() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    for levels in [300, 400, 500, 600, 700] {
        for (open, close) in [("[", "]"), ("{a:", "}")] {
            let query = format!("{{ me(x: {}) {{ id }} }}", nested(open, "1", close, levels));
            assert_eq!(checks_refuse(&app, &query), "MAX_INPUT_NESTING_LIMIT");
            refused_both_ways(&app, &mut client, &query).await;
        }
    }
}

/// The same in places other than a field's arguments: a variable's default value and list type.
#[tokio::test]
async fn hundreds_of_nested_lists_in_variable_definitions() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    for levels in [300, 500, 700] {
        let default = nested("[", "1", "]", levels);
        let list_type = nested("[", "Int", "]", levels);
        for query in [
            format!("query($v: JSON = {default}) {{ me {{ id }} }}"),
            format!("query($v: {list_type}) {{ me {{ id }} }}"),
        ] {
            assert_eq!(checks_refuse(&app, &query), "MAX_INPUT_NESTING_LIMIT");
            refused_both_ways(&app, &mut client, &query).await;
        }
    }
}

#[tokio::test]
async fn five_thousand_nested_objects_in_a_variable_over_http() {
    let app = spawn_app().await;
    let query = "query($v: JSON) { me(x: $v) { id } }";
    // Past serde_json's own recursion limit (128): refused while reading the body.
    let deep = format!(r#"{{"v":{}}}"#, nested(r#"{"a":"#, "1", "}", 5_000));
    let (answer, took) = post_raw(&app, body_with_variables(query, &deep)).await;
    assert_http_error(&answer, took);
    // Within it: the request reaches async-graphql.
    let deep = format!(r#"{{"v":{}}}"#, nested(r#"{"a":"#, "1", "}", 100));
    let variables = serde_json::from_str(&deep).unwrap();
    let checked = check_variables(&variables, &app.state.config.payload);
    assert_eq!(checked.unwrap_err().code, "MAX_INPUT_NESTING_LIMIT");
    let (answer, took) = post_raw(&app, body_with_variables(query, &deep)).await;
    assert_http_error(&answer, took);
    let mut client = app.ws_acked("alice").await;
    assert_alive(&app, &mut client).await;
}

#[tokio::test]
async fn five_thousand_nested_objects_in_a_variable_over_websocket() {
    let app = spawn_app().await;
    let query = json!("query($v: JSON) { me(x: $v) { id } }");
    for (user, levels) in [("mallory", 5_000), ("trent", 100)] {
        let deep = nested(r#"{"a":"#, "1", "}", levels);
        let payload = format!(r#"{{"query":{query},"variables":{{"v":{deep}}}}}"#);
        assert!(payload.len() < 64 * 1024, "within the message size limit");
        let mut client = app.ws_acked(user).await;
        let (answer, took) = ws_raw(&mut client, &payload).await;
        assert_ws_error(&answer, took);
        if let Answer::Message(_) = answer {
            assert_alive(&app, &mut client).await;
        }
    }
    let mut client = app.ws_acked("alice").await;
    assert_alive(&app, &mut client).await;
}

#[tokio::test]
async fn three_thousand_aliases() {
    let app = spawn_app_with(roomy).await;
    let mut client = app.ws_acked("mallory").await;
    let aliases: String = (0..3_000).map(|n| format!("a{n}:me{{id}}")).collect();
    let query = format!("{{{aliases}}}");
    assert_eq!(checks_refuse(&app, &query), "MAX_ALIASES_LIMIT");
    refused_both_ways(&app, &mut client, &query).await;
}

#[tokio::test]
async fn three_thousand_directives() {
    let app = spawn_app_with(roomy).await;
    let mut client = app.ws_acked("mallory").await;
    let directives = "@skip(if:false)".repeat(3_000);
    let query = format!("{{me{directives}{{id}}}}");
    assert_eq!(checks_refuse(&app, &query), "MAX_DIRECTIVES_LIMIT");
    refused_both_ways(&app, &mut client, &query).await;
}

#[tokio::test]
async fn a_fragment_cycle() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    // Not the checks' business: async-graphql refuses cycles, and in linear time.
    let query = "fragment A on Query { ...B } fragment B on Query { ...A } { ...A }";
    refused_both_ways(&app, &mut client, query).await;
}

/// Each fragment spreads the next twice: small to send, 2^depth selections once expanded. Every
/// walk of async-graphql expands spreads in place: at 24, its `limit_recursive_depth` check alone
/// (part of its parse step) takes 10 s in a debug build, its validators and execution minutes,
/// and each fragment more doubles that. Spread below the root: at the root, the root-field count
/// (one per spread) would refuse it first.
fn fragment_fan_out(depth: usize) -> String {
    let mut query = String::from("{ me { ...F0 } }");
    for n in 0..depth {
        query.push_str(&format!(
            " fragment F{n} on Me {{ ...F{m} ...F{m} }}",
            m = n + 1
        ));
    }
    query.push_str(&format!(" fragment F{depth} on Me {{ id }}"));
    query
}

#[tokio::test]
async fn fragments_that_fan_out_exponentially() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    let query = fragment_fan_out(24);
    assert_eq!(checks_refuse(&app, &query), "MAX_COMPLEXITY_LIMIT");
    refused_both_ways(&app, &mut client, &query).await;
}

#[tokio::test]
async fn fragments_that_fan_out_in_a_cycle() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    // async-graphql stops at its recursion limit on the first way round the cycle.
    let query = "fragment A on Query { ...B ...B } fragment B on Query { ...A ...A } { ...A }";
    refused_both_ways(&app, &mut client, query).await;
}

#[tokio::test]
async fn five_thousand_nested_selections() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("mallory").await;
    let query = nested("{a", "", "}", 5_000);
    assert_eq!(checks_refuse(&app, &query), "MAX_DEPTH_LIMIT");
    refused_both_ways(&app, &mut client, &query).await;
}

#[tokio::test]
async fn five_thousand_nested_inline_fragments() {
    let app = spawn_app_with(roomy).await;
    let mut client = app.ws_acked("mallory").await;
    let query = format!("{{{}}}", nested("...{", "me{id}", "}", 5_000));
    assert_eq!(checks_refuse(&app, &query), "MAX_DEPTH_LIMIT");
    refused_both_ways(&app, &mut client, &query).await;
}

#[tokio::test]
async fn fifty_thousand_tokens() {
    // Only the size is raised: the token count is what must stop it.
    let app = spawn_app_with(|c| c.payload.max_query_bytes = "200KiB".parse().unwrap()).await;
    let query = format!("{{ me {{ {}}} }}", "id ".repeat(50_000));
    assert_eq!(checks_refuse(&app, &query), "MAX_TOKENS_LIMIT");
    let (answer, took) = post_query(&app, &query).await;
    assert_http_error(&answer, took);
    let mut client = app.ws_acked("alice").await;
    assert_alive(&app, &mut client).await;
}

/// At every default limit at once, across two requests: a query 10 deep with 15 aliases, 20 root
/// fields and 50 directives, and a mutation of 2000 tokens and 16 KiB with lists and objects 32
/// deep in an argument and in a variable.
#[tokio::test]
async fn the_largest_legal_requests_are_accepted() {
    let app = spawn_app().await;
    let limits = &app.state.config.payload;
    let with = |field: &str| format!("{field} @include(if: true) @skip(if: false)");
    // __type, fields, type, six ofType and name: ten fields deep.
    let path = [
        "fields", "type", "ofType", "ofType", "ofType", "ofType", "ofType", "ofType",
    ];
    let mut deep = "name".to_string();
    for (n, field) in path.iter().enumerate().rev() {
        let field = if n < 6 {
            with(field)
        } else {
            field.to_string()
        };
        deep = format!("{field} {{ {deep} }}");
    }
    let mut roots = vec![format!("{} {{ {deep} }}", with("__type(name: \"Query\")"))];
    roots.extend((0..15).map(|n| format!("{} {{ id }}", with(&format!("a{n}: me")))));
    roots.extend((0..3).map(|_| format!("{} {{ id }}", with("me"))));
    roots.push("serverInfo { version }".to_string());
    assert_eq!(roots.len(), limits.max_root_fields as usize);
    let query = format!("{{ {} }}", roots.join(" "));
    assert_eq!(query.matches('@').count(), limits.max_directives as usize);
    scan_query(&query, limits).expect("within every limit");
    check_document(&parse_query(&query).unwrap(), None, limits).expect("within every limit");
    for tighten in [
        |l: &mut Payload| l.max_depth -= 1,
        |l: &mut Payload| l.max_aliases -= 1,
        |l: &mut Payload| l.max_root_fields -= 1,
        |l: &mut Payload| l.max_directives -= 1,
    ] {
        let mut tighter = limits.clone();
        tighten(&mut tighter);
        let checked = scan_query(&query, &tighter)
            .and_then(|()| check_document(&parse_query(&query).unwrap(), None, &tighter));
        assert!(checked.is_err(), "at the limit");
    }
    let (answer, took) = post_query(&app, &query).await;
    assert!(answer["errors"].is_null(), "accepted, got {answer}");
    assert_eq!(answer["data"]["a14"]["id"], "alice");
    assert!(answer["data"]["__type"]["fields"].is_array(), "{answer}");
    assert!(took < BOUND, "answered in {took:?}");

    let deepest = nested("[", "1", "]", limits.max_input_nesting as usize - 1);
    let wide = " 1".repeat(1_892);
    let mut mutation = format!(
        "mutation($p: JSON) {{ a: publish(topic: \"system:x\", type: \"t\", payload: $p) {{ id }} \
         b: publish(topic: \"system:x\", type: \"t\", payload: [{deepest}{wide}]) {{ id }} }}\n#"
    );
    mutation.push_str(&"x".repeat(limits.max_query_bytes.bytes() - mutation.len()));
    scan_query(&mutation, limits).expect("within every limit");
    check_document(&parse_query(&mutation).unwrap(), None, limits).expect("within every limit");
    let mut tighter = limits.clone();
    tighter.max_tokens -= 1;
    assert!(scan_query(&mutation, &tighter).is_err(), "at max_tokens");
    tighter = limits.clone();
    tighter.max_query_bytes.0 -= 1;
    assert!(
        scan_query(&mutation, &tighter).is_err(),
        "at max_query_bytes"
    );
    tighter = limits.clone();
    tighter.max_input_nesting -= 1;
    assert!(
        scan_query(&mutation, &tighter).is_err(),
        "at max_input_nesting"
    );

    let variables = format!(r#"{{"p":{}}}"#, nested(r#"{"a":"#, "1", "}", 32));
    let parsed = serde_json::from_str(&variables).unwrap();
    check_variables(&parsed, limits).expect("within every limit");
    let mut tighter = limits.clone();
    tighter.max_input_nesting -= 1;
    assert!(
        check_variables(&parsed, &tighter).is_err(),
        "at max_input_nesting"
    );
    let started = Instant::now();
    let answer = app
        .post_as_service(&mutation, serde_json::from_str(&variables).unwrap())
        .await;
    assert!(answer["errors"].is_null(), "accepted, got {answer}");
    assert!(answer["data"]["b"]["id"].is_string(), "{answer}");
    assert!(started.elapsed() < BOUND);
}

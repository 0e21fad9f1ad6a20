use palisade::config::OnExceed;
use serde_json::{Value, json};

use crate::helpers::{WsClient, spawn_app_with};

/// Runs `{ me { id } }` as operation `id` and returns its first answer (`next` or `error`).
/// Messages of other operations that arrive meanwhile (warnings) are kept in `others`.
async fn query_keeping(client: &mut WsClient, id: &str, others: &mut Vec<Value>) -> Value {
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": { "query": "{ me { id } }" } }))
        .await;
    let mut answer = None;
    loop {
        let message = client.recv().await;
        if message["id"] != id {
            others.push(message);
            continue;
        }
        match message["type"].as_str() {
            Some("next") => answer = Some(message),
            Some("complete") => return answer.expect("next before complete"),
            _ => return message,
        }
    }
}

async fn query(client: &mut WsClient, id: &str) -> Value {
    let mut others = Vec::new();
    let answer = query_keeping(client, id, &mut others).await;
    assert!(others.is_empty(), "unexpected messages: {others:?}");
    answer
}

async fn watch_warnings(client: &mut WsClient) {
    client
        .send(json!({ "id": "w", "type": "subscribe", "payload": { "query": "subscription { rateLimitWarning { current limit windowSeconds retryAfterSeconds message final } }" } }))
        .await;
}

#[tokio::test]
async fn the_warning_comes_exactly_at_the_80th_operation_and_the_101st_is_refused() {
    // A long window: GCRA gives a unit back every window/limit, and the count must not move while
    // the test runs.
    let app = spawn_app_with(|c| {
        c.operations.rate_limit.on_exceed = OnExceed::Reject;
        c.operations.rate_limit.window = "1h".parse().unwrap();
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    watch_warnings(&mut client).await; // operation 1
    let mut warnings = Vec::new();
    for n in 2..=100 {
        let answer = query_keeping(&mut client, &format!("q{n}"), &mut warnings).await;
        assert_eq!(answer["type"], "next", "operation {n}: {answer}");
        let standing = &answer["payload"]["extensions"]["rateLimit"];
        assert_eq!(
            (standing["current"].as_u64(), standing["limit"].as_u64()),
            (Some(n), Some(100))
        );
        if n < 80 {
            assert!(
                warnings.is_empty(),
                "warned early, at operation {n}: {warnings:?}"
            );
        }
    }
    let refused = query_keeping(&mut client, "q101", &mut warnings).await;
    assert_eq!(refused["type"], "error");
    let ext = &refused["payload"][0]["extensions"];
    assert_eq!(
        (
            ext["code"].as_str(),
            ext["limit"].as_u64(),
            ext["windowSeconds"].as_u64()
        ),
        (Some("RATE_LIMITED"), Some(100), Some(3600))
    );
    assert!(ext["retryAfterSeconds"].as_u64().unwrap() >= 1);
    client.send(json!({ "type": "ping" })).await;
    loop {
        let message = client.recv().await;
        if message["type"] == "pong" {
            break;
        }
        warnings.push(message);
    }
    // Exactly one warning in the window, for the 80th operation.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0]["payload"]["data"]["rateLimitWarning"];
    assert_eq!(
        (
            w["current"].as_u64(),
            w["limit"].as_u64(),
            w["windowSeconds"].as_u64(),
            w["final"].as_bool()
        ),
        (Some(80), Some(100), Some(3600), Some(false))
    );
}

#[tokio::test]
async fn with_disconnect_a_final_warning_precedes_a_retryable_close() {
    let app = spawn_app_with(|c| {
        c.operations.rate_limit.limit = 5;
        c.operations.rate_limit.window = "1h".parse().unwrap();
        c.operations.rate_limit.on_exceed = OnExceed::Disconnect;
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    watch_warnings(&mut client).await;
    let mut warnings = Vec::new();
    for n in 2..=5 {
        assert_eq!(
            query_keeping(&mut client, &format!("q{n}"), &mut warnings).await["type"],
            "next"
        );
    }
    let over = query_keeping(&mut client, "over", &mut warnings).await;
    assert_eq!(over["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    while warnings.len() < 2 {
        warnings.push(client.recv().await);
    }
    let finals: Vec<_> = warnings
        .iter()
        .map(|w| w["payload"]["data"]["rateLimitWarning"]["final"].as_bool())
        .collect();
    assert_eq!(finals, [Some(false), Some(true)]);
    assert_eq!(client.closed().await, (4420, "Rate limit exceeded".into()));

    // A new connection starts with a fresh budget.
    let mut again = app.ws_acked("alice").await;
    assert_eq!(query(&mut again, "fresh").await["type"], "next");
}

#[tokio::test]
async fn with_reject_the_connection_stays_and_operations_pass_once_the_window_frees() {
    let app = spawn_app_with(|c| {
        c.operations.rate_limit.limit = 4;
        c.operations.rate_limit.window = "1s".parse().unwrap();
        c.operations.rate_limit.on_exceed = OnExceed::Reject;
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    for n in 1..=4 {
        assert_eq!(query(&mut client, &format!("q{n}")).await["type"], "next");
    }
    assert_eq!(
        query(&mut client, "over").await["payload"][0]["extensions"]["code"],
        "RATE_LIMITED"
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(query(&mut client, "later").await["type"], "next");
}

#[tokio::test]
async fn operations_running_only_exempt_fields_are_not_counted() {
    let app = spawn_app_with(|c| {
        c.operations.rate_limit.limit = 2;
        c.operations.rate_limit.on_exceed = OnExceed::Reject;
        c.operations.rate_limit.exempt_operations = vec!["me".into()];
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    for n in 0..5 {
        let answer = query(&mut client, &format!("exempt{n}")).await;
        assert_eq!(answer["type"], "next", "{answer}");
        assert!(
            answer["payload"]["extensions"]["rateLimit"].is_null(),
            "exempt operations carry no standing"
        );
    }
    client.send(json!({ "id": "counted", "type": "subscribe", "payload": { "query": "{ serverInfo { version } }" } })).await;
    assert_eq!(
        client.recv().await["payload"]["extensions"]["rateLimit"]["current"],
        1
    );
}

#[tokio::test]
async fn http_requests_do_not_use_a_connection_budget() {
    let app = spawn_app_with(|c| c.operations.rate_limit.limit = 1).await;
    for _ in 0..3 {
        let body = app.post("alice", "{ me { id } }", json!({})).await;
        assert_eq!(body["data"]["me"]["id"], "alice");
    }
}

#[tokio::test]
async fn warnings_and_violations_are_counted_and_audited() {
    let app = spawn_app_with(|c| {
        c.operations.rate_limit.limit = 2;
        c.operations.rate_limit.on_exceed = OnExceed::Reject;
    })
    .await;
    let mut client = app.ws_acked("alice").await;
    for n in 0..3 {
        query(&mut client, &format!("q{n}")).await;
    }
    app.assert_metrics(&[
        "palisade_rate_limit_warnings_total 1",
        "palisade_rate_limit_violations_total 1",
    ])
    .await;
    app.state.audit.flush().await;
    let rows: Vec<(String, Option<String>, Option<String>, String)> = palisade::on_pool!(
        &app.state.db,
        |pool| {
            sqlx::query_as("SELECT action, user_id, connection_id, CAST(metadata AS TEXT) FROM audit_log WHERE action LIKE 'rate_limit.%' ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
        }
    );
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(actions, ["rate_limit.warning", "rate_limit.exceeded"]);
    assert!(
        rows.iter()
            .all(|r| r.1.as_deref() == Some("alice") && r.2.is_some())
    );
    assert!(rows[1].3.contains("\"limit\":2"), "{}", rows[1].3);
}

mod per_operation {
    use palisade::config::{LimitScope, OperationLimit};
    use serde_json::json;

    use crate::helpers::{TestApp, spawn_app_with, spawn_app_with_redis};

    const PUBLISH: &str = "mutation { publish(topic: \"user:alice\", type: \"x\") { id } }";

    fn publish_limit(c: &mut palisade::config::Config) {
        let limit = OperationLimit {
            limit: 2,
            window: "1h".parse().unwrap(),
            scope: LimitScope::User,
        };
        c.operations.per_operation.insert("publish".into(), limit);
    }

    async fn publish(app: &TestApp) -> serde_json::Value {
        app.post_as_service(PUBLISH, json!({})).await
    }

    #[tokio::test]
    async fn a_per_operation_limit_spans_all_of_a_users_connections() {
        let app = spawn_app_with(publish_limit).await;
        // One call over HTTP, one over a WebSocket, both as user `svc`.
        assert!(publish(&app).await["data"]["publish"]["id"].is_string());
        let token = app.token_with(
            "svc",
            serde_json::Map::from_iter([("roles".to_string(), json!(["service"]))]),
        );
        let mut client = app.ws("graphql-transport-ws").await;
        client
            .send(json!({ "type": "connection_init", "payload": { "token": token } }))
            .await;
        assert_eq!(client.recv().await["type"], "connection_ack");
        client
            .send(json!({ "id": "p", "type": "subscribe", "payload": { "query": PUBLISH } }))
            .await;
        assert_eq!(client.recv().await["type"], "next");
        assert_eq!(client.recv().await["type"], "complete");
        // The third, on either path, is refused.
        let refused = publish(&app).await;
        let ext = &refused["errors"][0]["extensions"];
        assert_eq!(
            (
                ext["code"].as_str(),
                ext["limit"].as_u64(),
                ext["windowSeconds"].as_u64()
            ),
            (Some("RATE_LIMITED"), Some(2), Some(3600))
        );
        // Another user has their own budget.
        let other = app.token_with(
            "svc2",
            serde_json::Map::from_iter([("roles".to_string(), json!(["service"]))]),
        );
        assert!(
            app.post_with_token(&other, PUBLISH, json!({})).await["data"]["publish"]["id"]
                .is_string()
        );
    }

    #[tokio::test]
    async fn with_redis_two_instances_share_one_budget_per_user() {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let tweak = |c: &mut palisade::config::Config| {
            publish_limit(c);
            c.streams.key_prefix = prefix.clone();
        };
        let redis = crate::helpers::redis_url();
        let a = spawn_app_with_redis(&redis, tweak).await;
        let b = spawn_app_with_redis(&redis, tweak).await;
        assert!(publish(&a).await["data"]["publish"]["id"].is_string());
        assert!(publish(&b).await["data"]["publish"]["id"].is_string());
        assert_eq!(
            publish(&a).await["errors"][0]["extensions"]["code"],
            "RATE_LIMITED"
        );
        assert_eq!(
            publish(&b).await["errors"][0]["extensions"]["code"],
            "RATE_LIMITED"
        );
    }
}

#[tokio::test]
async fn a_new_limit_stored_in_the_live_configuration_applies_to_an_open_connection() {
    let app = spawn_app_with(|c| c.operations.rate_limit.on_exceed = OnExceed::Reject).await;
    let mut client = app.ws_acked("alice").await;
    assert_eq!(
        query(&mut client, "before").await["payload"]["extensions"]["rateLimit"]["limit"],
        100
    );
    // What a reload of hardening.yaml does: store the new version.
    let mut stricter = (**app.state.live.load()).clone();
    stricter.operations.rate_limit.limit = 1;
    stricter.operations.rate_limit.window = "1h".parse().unwrap();
    app.state.live.store(std::sync::Arc::new(stricter));
    assert_eq!(
        query(&mut client, "first").await["payload"]["extensions"]["rateLimit"]["limit"],
        1
    );
    let mut others = Vec::new();
    let refused = query_keeping(&mut client, "second", &mut others).await;
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED");
}

use serde_json::{Value, json};

use crate::helpers::{TestApp, redis_url, spawn_app};

/// `/readyz` as an admin, who is shown each dependency's check on the public port.
pub async fn readyz_as_admin(app: &TestApp) -> reqwest::Response {
    let roles = serde_json::Map::from_iter([("roles".to_string(), json!(["admin"]))]);
    reqwest::Client::new()
        .get(app.url("/readyz"))
        .bearer_auth(app.token_with("ops", roles))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_query_over_http_post_answers_with_server_info() {
    let app = spawn_app().await;
    let body = app
        .post(
            "alice",
            "{ serverInfo { version instanceId uptimeSeconds } me { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"]["serverInfo"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        body["data"]["serverInfo"]["instanceId"],
        app.state.instance.id
    );
    assert_eq!(body["data"]["me"]["id"], "alice");
}

#[tokio::test]
async fn a_query_over_http_get_works_too() {
    let app = spawn_app().await;
    let body: Value = reqwest::Client::new()
        .get(app.url("/graphql?query=%7B%20me%20%7B%20id%20%7D%20%7D"))
        .bearer_auth(app.token("bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["me"]["id"], "bob");
}

#[tokio::test]
async fn http_without_valid_credentials_is_refused_with_401_and_a_code() {
    let app = spawn_app().await;
    for token in [None, Some("garbage")] {
        let mut request = reqwest::Client::new()
            .post(app.url("/graphql"))
            .json(&json!({ "query": "{ me { id } }" }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn a_browser_gets_graphiql_with_its_assets_served_locally() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let page = client
        .get(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("/graphiql/graphiql.min.js"));
    assert!(!html.contains("__GRAPHQL_PATH__"));
    assert!(
        !html.contains("unpkg.com") && !html.contains("cdn.jsdelivr"),
        "no CDN"
    );
    for asset in [
        "graphiql.min.js",
        "graphiql.min.css",
        "react.min.js",
        "react-dom.min.js",
        "graphql-ws.min.js",
    ] {
        let response = client
            .get(app.url(&format!("/graphiql/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(
            response.bytes().await.unwrap().len() > 1000,
            "{asset} has content"
        );
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    let response = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn readyz_reports_the_database_as_ready() {
    let app = spawn_app().await;
    let response = readyz_as_admin(&app).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["checks"]["database"],
        json!({ "ok": true, "backend": "sqlite" })
    );
}

#[tokio::test]
async fn metrics_count_connections_and_operations() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    client
        .send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { id } }" } }))
        .await;
    client.recv().await;
    app.post_as_service(
        "mutation { publish(topic: \"system:t\", type: \"x\") { id } }",
        json!({}),
    )
    .await;
    app.assert_metrics(&[
        "palisade_connections_active 1",
        "palisade_connections_total{outcome=\"accepted\"} 1",
        "palisade_operations_total{outcome=\"ok\",type=\"query\"} 1",
        "palisade_operations_total{outcome=\"ok\",type=\"mutation\"} 1",
    ])
    .await;
}

#[tokio::test]
async fn admin_endpoints_move_to_admin_listen_when_it_is_set() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.server.admin_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    assert_eq!(
        reqwest::get(app.url("/metrics")).await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn readyz_checks_redis_when_it_is_configured() {
    let app = crate::helpers::spawn_app_with_redis(&redis_url(), |_| {}).await;
    let body: Value = readyz_as_admin(&app).await.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["redis"]["ok"], true);
}

#[tokio::test]
async fn readyz_fails_with_503_naming_redis_when_it_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let app =
        crate::helpers::spawn_app_with_redis(&format!("redis://127.0.0.1:{port}"), |_| {}).await;
    let response = readyz_as_admin(&app).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["database"]["ok"], true);
    assert_eq!(body["checks"]["redis"]["ok"], false);
}

#[tokio::test]
async fn introspection_and_suggestions_follow_the_payload_switches() {
    let open = spawn_app().await;
    let schema = open
        .post("alice", "{ __schema { queryType { name } } }", json!({}))
        .await;
    assert_eq!(schema["data"]["__schema"]["queryType"]["name"], "Query");

    let closed = crate::helpers::spawn_app_with(|c| {
        c.payload.introspection = false;
        c.payload.field_suggestions = false;
    })
    .await;
    let schema = closed
        .post("alice", "{ __schema { queryType { name } } }", json!({}))
        .await;
    // async-graphql answers disabled introspection with no schema rather than an error.
    assert!(schema["data"]["__schema"].is_null(), "{schema}");
    let typo = closed
        .post("alice", "{ serverInfoo { version } }", json!({}))
        .await;
    assert!(
        !typo["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Did you mean"),
        "{typo}"
    );

    let suggesting = crate::helpers::spawn_app_with(|c| c.payload.field_suggestions = true).await;
    let typo = suggesting
        .post("alice", "{ serverInfoo { version } }", json!({}))
        .await;
    assert!(
        typo["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Did you mean"),
        "{typo}"
    );
}

#[tokio::test]
async fn an_http_body_over_max_message_bytes_is_refused_with_413() {
    let app =
        crate::helpers::spawn_app_with(|c| c.payload.max_message_bytes = "4KiB".parse().unwrap())
            .await;
    let query = format!("{{ me {{ id }} }} # {}", "x".repeat(8 * 1024));
    let response = reqwest::Client::new()
        .post(app.url("/graphql"))
        .bearer_auth(app.token("alice"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn payload_refusals_name_the_limit_and_are_counted_by_limit() {
    let app = crate::helpers::spawn_app_with(|c| c.payload.max_depth = 2).await;
    let refused = app.post("alice", "{ me { id } }", json!({})).await;
    assert!(
        refused["data"]["me"]["id"].is_string(),
        "depth 2 is allowed: {refused}"
    );
    let refused = app.post("alice", "{ a: me { id } b: serverInfo { version } c: me { claims } d: me { id } e: me { id } f: me { id } g: me { id } h: me { id } i: me { id } j: me { id } k: me { id } l: me { id } m: me { id } n: me { id } o: me { id } p: me { id } }", json!({})).await;
    let ext = &refused["errors"][0]["extensions"];
    assert_eq!(
        (
            ext["code"].as_str(),
            ext["limit"].as_u64(),
            ext["measured"].as_u64()
        ),
        (Some("MAX_ALIASES_LIMIT"), Some(15), Some(16)),
        "{refused}"
    );
    let deep = app
        .post(
            "alice",
            "{ me { id } serverInfo { version } __schema { types { fields { name } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        deep["errors"][0]["extensions"]["code"], "MAX_DEPTH_LIMIT",
        "{deep}"
    );
    app.assert_metrics(&[
        "palisade_payload_rejections_total{limit=\"MAX_ALIASES_LIMIT\"} 1",
        "palisade_payload_rejections_total{limit=\"MAX_DEPTH_LIMIT\"} 1",
    ])
    .await;
}

#[tokio::test]
async fn graphiqls_introspection_query_passes_the_default_limits() {
    let app = spawn_app().await;
    let query = include_str!("../fixtures/introspection.graphql");
    let body = app.post("alice", query, json!({})).await;
    assert!(body["errors"].is_null(), "{}", body["errors"]);
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
}

#[tokio::test]
async fn metrics_follow_messages_auth_failures_publishes_and_connection_lifetimes() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    client.send(json!({ "type": "ping" })).await;
    client.recv().await;
    drop(client);
    let mut refused = app.ws("graphql-transport-ws").await;
    refused
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    refused.closed().await;
    app.post_as_service(
        "mutation { publish(topic: \"user:alice\", type: \"x\") { id } }",
        json!({}),
    )
    .await;
    app.closed_connection_rows().await;
    let text = app.metrics_text().await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    // Two connection_init messages and one ping.
    assert_eq!(
        value("palisade_websocket_messages_total{direction=\"in\"}"),
        3.0,
        "{text}"
    );
    assert!(value("palisade_websocket_messages_total{direction=\"out\"}") >= 2.0);
    assert!(value("palisade_websocket_bytes_total{direction=\"in\"}") > 50.0);
    assert_eq!(
        value("palisade_auth_failures_total{reason=\"missing\"}"),
        1.0
    );
    assert_eq!(value("palisade_bus_publishes_total{result=\"ok\"}"), 1.0);
    assert_eq!(value("palisade_connection_duration_seconds_count"), 2.0);
}

#[tokio::test]
async fn the_unguarded_benchmark_switch_takes_the_per_operation_guard_out_and_nothing_else() {
    let sixteen_aliases = (0..16)
        .map(|i| format!("a{i}: me {{ id }}"))
        .collect::<Vec<_>>()
        .join(" ");
    let query = format!("{{ {sixteen_aliases} }}");
    let guarded = crate::helpers::spawn_app().await;
    let refused = guarded.post("alice", &query, json!({})).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "MAX_ALIASES_LIMIT",
        "{refused}"
    );

    let unguarded = crate::helpers::spawn_unguarded().await;
    let answered = unguarded.post("alice", &query, json!({})).await;
    assert!(answered["data"]["a15"]["id"].is_string(), "{answered}");
    let response = reqwest::Client::new()
        .post(unguarded.url("/graphql"))
        .bearer_auth(unguarded.token("alice"))
        .json(&json!({ "query": format!("{{ me {{ id }} }} # {}", "x".repeat(2 << 20)) }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "the message-size bound stays on");
}

//! HTTP endpoints: the per-IP limiter, IPv6 prefixes, and strings written to the database.

use palisade::audit::FAILED_ATTEMPT_BURST;
use palisade::writer::MAX_TEXT_BYTES;
use serde_json::{Value, json};

use crate::helpers::{
    PrivateRedis, TestApp, redis_url, spawn_app_with, spawn_instance, unique_prefix,
};

/// `POST path` with a bearer credential and a JSON body, from `forwarded_for` when given (only
/// believed when the test trusts loopback as a proxy).
async fn post(
    app: &TestApp,
    path: &str,
    bearer: &str,
    body: Value,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(app.url(path))
        .bearer_auth(bearer)
        .json(&body);
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap()
}

async fn wrong_publish_key(app: &TestApp, forwarded_for: &str) -> reqwest::Response {
    let body = json!({ "topic": "system:announcements", "type": "note", "payload": {} });
    post(
        app,
        "/api/publish",
        "guessed-key",
        body,
        Some(forwarded_for),
    )
    .await
}

async fn query_from(app: &TestApp, forwarded_for: &str) -> u16 {
    let body = json!({ "query": "{ me { id } }" });
    let token = app.token("alice");
    post(app, "/graphql", &token, body, Some(forwarded_for))
        .await
        .status()
        .as_u16()
}

async fn code_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["errors"][0]["extensions"]["code"].clone())
}

/// The audit rows of `action`: (ip, metadata as JSON text).
async fn audit_rows(app: &TestApp, action: &str) -> Vec<(Option<String>, String)> {
    app.state.audit.flush().await;
    palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query_as(
            "SELECT ip, CAST(metadata AS TEXT) FROM audit_log WHERE action = $1 ORDER BY id",
        )
        .bind(action)
        .fetch_all(pool)
        .await
        .unwrap()
    })
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn guessing_the_publish_key_gets_429_past_the_burst_and_writes_a_bounded_audit_trail() {
    let burst = 30;
    // The guesser comes through a trusted proxy, so reading /metrics from loopback has a budget
    // of its own.
    let guesser = "198.51.100.66";
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = burst;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    for attempt in 0..burst {
        let (status, code) = code_of(wrong_publish_key(&app, guesser).await).await;
        assert_eq!((status, code), (401, json!("UNAUTHENTICATED")), "{attempt}");
    }
    for _ in 0..10 {
        let (status, code) = code_of(wrong_publish_key(&app, guesser).await).await;
        assert_eq!((status, code), (429, json!("HTTP_RATE_LIMITED")));
    }

    let written = audit_rows(&app, "publish_key_refused").await.len() as u64;
    let burst = u64::from(burst);
    let audit_burst = u64::from(FAILED_ATTEMPT_BURST);
    // One more row may have been earned if the loop outlasted a failed-attempt period.
    assert!(
        (audit_burst..=audit_burst + 1).contains(&written),
        "{written} rows for {burst} refused keys"
    );
    let text = app.metrics_text().await;
    assert_eq!(
        metric(&text, "palisade_audit_throttled_total"),
        burst - written
    );
}

#[tokio::test]
async fn admin_revoke_shares_the_per_ip_limit_and_audits_refused_tokens() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 3;
    })
    .await;
    let body = json!({ "user_id": "alice" });
    for _ in 0..3 {
        let refused = post(&app, "/admin/revoke", "not-a-jwt", body.clone(), None).await;
        assert_eq!(code_of(refused).await, (401, json!("UNAUTHENTICATED")));
    }
    let limited = post(&app, "/admin/revoke", "not-a-jwt", body, None).await;
    assert_eq!(code_of(limited).await, (429, json!("HTTP_RATE_LIMITED")));
    assert_eq!(audit_rows(&app, "admin.revoke_refused").await.len(), 3);
}

#[tokio::test]
async fn ipv6_clients_of_one_prefix_share_one_http_budget_and_one_audit_address() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 1;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    assert_eq!(query_from(&app, "2001:db8:1:2::1").await, 200);
    assert_eq!(
        query_from(&app, "2001:db8:1:2:ffff:ffff:ffff:fffe").await,
        429,
        "another address of the same /64 buys no fresh budget"
    );
    assert_eq!(query_from(&app, "2001:db8:1:3::1").await, 200);

    let refused = wrong_publish_key(&app, "2001:db8:1:4::77").await;
    assert_eq!(refused.status(), 401);
    let rows = audit_rows(&app, "publish_key_refused").await;
    assert_eq!(rows[0].0.as_deref(), Some("2001:db8:1:4::/64"));
}

#[tokio::test]
async fn an_ipv6_prefix_of_128_counts_every_address_apart() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 1;
        c.connections.ipv6_prefix = 128;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    assert_eq!(query_from(&app, "2001:db8:1:2::1").await, 200);
    assert_eq!(query_from(&app, "2001:db8:1:2::2").await, 200);
    assert_eq!(query_from(&app, "2001:db8:1:2::1").await, 429);
}

#[tokio::test]
async fn ipv6_clients_of_one_prefix_share_max_per_ip_and_the_connect_rate() {
    let app = spawn_app_with(|c| {
        c.connections.max_per_ip = 1;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let xff = |ip| [("x-forwarded-for", ip)];
    let held = app
        .try_ws("/graphql", &xff("2001:db8:1:2::a"))
        .await
        .unwrap();
    assert_eq!(
        app.try_ws("/graphql", &xff("2001:db8:1:2::b")).await.err(),
        Some(429)
    );
    let _other = app
        .try_ws("/graphql", &xff("2001:db8:1:3::a"))
        .await
        .unwrap();
    drop(held);
    let rows = crate::helpers::closed_connection_rows(&app.state.db).await;
    assert_eq!(rows[0].2, "2001:db8:1:2::/64", "the log records the prefix");

    let app = spawn_app_with(|c| {
        c.connections.connects_per_minute_per_ip = 1;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let _first = app.try_ws("/graphql", &xff("2001:db8:9::1")).await.unwrap();
    assert_eq!(
        app.try_ws("/graphql", &xff("2001:db8:9::2")).await.err(),
        Some(429)
    );
}

#[tokio::test]
async fn across_instances_ipv6_clients_of_one_prefix_share_max_per_ip_in_redis() {
    let prefix = unique_prefix();
    let tweak = |c: &mut palisade::config::Config| {
        c.connections.max_per_ip = 1;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    };
    let a = spawn_instance(&redis_url(), &prefix, tweak).await;
    let b = spawn_instance(&redis_url(), &prefix, tweak).await;
    let _held = a
        .try_ws("/graphql", &[("x-forwarded-for", "2001:db8:5:6::1")])
        .await
        .unwrap();
    assert_eq!(
        b.try_ws("/graphql", &[("x-forwarded-for", "2001:db8:5:6::2")])
            .await
            .err(),
        Some(429)
    );
}

#[tokio::test]
async fn a_60_kb_user_agent_is_stored_as_at_most_512_bytes() {
    let app = spawn_app_with(|_| {}).await;
    let agent = "A".repeat(60_000);
    let mut client = app
        .try_ws("/graphql", &[("user-agent", &agent)])
        .await
        .unwrap();
    client
        .send(json!({ "type": "connection_init", "payload": { "token": app.token("alice") } }))
        .await;
    assert_eq!(client.recv().await["type"], "connection_ack");
    drop(client);
    crate::helpers::closed_connection_rows(&app.state.db).await;
    let (stored,): (String,) = palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query_as("SELECT user_agent FROM connection_log")
            .fetch_one(pool)
            .await
            .unwrap()
    });
    assert_eq!(stored.len(), MAX_TEXT_BYTES);
    assert!(agent.starts_with(&stored));
}

fn longest_string(value: &Value) -> usize {
    match value {
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(longest_string).max().unwrap_or(0),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| key.len().max(longest_string(value)))
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

#[tokio::test]
async fn the_headers_of_an_audit_row_are_cut_to_512_bytes_each() {
    let app = spawn_app_with(|_| {}).await;
    let name = format!("x-{}", "n".repeat(4_000));
    let agent = "A".repeat(60_000);
    let mut client = app
        .try_ws("/graphql", &[(&name, "value"), ("user-agent", &agent)])
        .await
        .unwrap();
    client
        .send(json!({ "type": "connection_init", "payload": { "token": "not-a-jwt" } }))
        .await;
    assert_eq!(client.closed().await.0, 4403);
    let rows = audit_rows(&app, "socket.auth_failed").await;
    let metadata: Value = serde_json::from_str(&rows[0].1).unwrap();
    assert!(metadata["headers"].as_object().unwrap().len() > 2);
    assert!(
        longest_string(&metadata) <= MAX_TEXT_BYTES,
        "{} bytes",
        longest_string(&metadata)
    );
}

/// Connections Redis has accepted since it started (`INFO stats`), read over one connection kept
/// for the whole test so that reading it opens none.
async fn redis_connections(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(connection)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn readyz_is_served_from_the_last_check_and_opens_no_redis_connection_per_request() {
    let redis = PrivateRedis::start().await;
    let app = crate::helpers::spawn_app_with_redis(&redis.url(), |_| {}).await;
    let mut watcher = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(
        reqwest::get(app.url("/readyz")).await.unwrap().status(),
        200
    );
    let before = redis_connections(&mut watcher).await;
    for _ in 0..50 {
        assert_eq!(
            reqwest::get(app.url("/readyz")).await.unwrap().status(),
            200
        );
    }
    let opened = redis_connections(&mut watcher).await - before;
    assert!(opened <= 1, "50 probes opened {opened} Redis connections");
}

fn admin_token(app: &TestApp) -> String {
    app.token_with(
        "ops",
        serde_json::Map::from_iter([("roles".to_string(), json!(["admin"]))]),
    )
}

#[tokio::test]
async fn the_public_readyz_names_no_dependency_unless_the_caller_is_an_admin() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app =
        crate::helpers::spawn_app_with_redis(&format!("redis://127.0.0.1:{closed_port}"), |_| {})
            .await;
    let public = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(public.status(), 503);
    assert_eq!(
        public.json::<Value>().await.unwrap(),
        json!({ "status": "unavailable" })
    );
    let stranger = reqwest::Client::new()
        .get(app.url("/readyz"))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stranger.json::<Value>().await.unwrap(),
        json!({ "status": "unavailable" })
    );

    let admin = reqwest::Client::new()
        .get(app.url("/readyz"))
        .bearer_auth(admin_token(&app))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 503);
    let body: Value = admin.json().await.unwrap();
    assert_eq!(body["checks"]["redis"]["ok"], false);
    assert!(body["checks"]["redis"]["error"].as_str().unwrap().len() > 5);
}

#[tokio::test]
async fn on_admin_listen_readyz_shows_every_check() {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let _app = spawn_app_with(|c| c.server.admin_listen = Some(admin_addr)).await;
    let body: Value = reqwest::get(format!("http://{admin_addr}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["ok"], true);
}

#[tokio::test]
async fn probes_and_metrics_on_the_public_port_are_behind_the_per_ip_limit() {
    let app = spawn_app_with(|c| {
        c.operations.http.per_ip_per_second = 1;
        c.operations.http.burst = 2;
    })
    .await;
    assert_eq!(
        reqwest::get(app.url("/metrics")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(app.url("/readyz")).await.unwrap().status(),
        200
    );
    for path in ["/readyz", "/metrics", "/healthz"] {
        let (status, code) = code_of(reqwest::get(app.url(path)).await.unwrap()).await;
        assert_eq!((status, code), (429, json!("HTTP_RATE_LIMITED")), "{path}");
    }
}

#[tokio::test]
async fn a_mutation_over_get_gets_405_and_is_not_executed() {
    let app = spawn_app_with(|_| {}).await;
    let service = app.token_with(
        "svc",
        serde_json::Map::from_iter([("roles".to_string(), json!(["service"]))]),
    );
    let get = |query: &str| {
        reqwest::Client::new()
            .get(app.url("/graphql"))
            .query(&[("query", query)])
            .bearer_auth(&service)
    };
    let mutation = r#"mutation { publish(topic: "system:t", type: "x") { id } }"#;
    let refused = get(mutation).send().await.unwrap();
    assert_eq!(refused.headers()["allow"], "POST");
    assert_eq!(code_of(refused).await, (405, json!("METHOD_NOT_ALLOWED")));
    // Chosen among other operations (async-graphql reads the name from `operation_name` on GET),
    // it is refused all the same.
    let named = format!(
        "query Q {{ me {{ id }} }} {}",
        mutation.replacen("mutation", "mutation M", 1)
    );
    let refused = get(&named)
        .query(&[("operation_name", "M")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);
    let query = get("{ me { id } }").send().await.unwrap();
    assert_eq!(query.status(), 200);

    let text = app.metrics_text().await;
    assert!(
        !text.contains("type=\"mutation\""),
        "no mutation ran:\n{text}"
    );
}

#[tokio::test]
async fn a_graphql_post_that_is_not_json_gets_415() {
    let app = spawn_app_with(|_| {}).await;
    let body = json!({ "query": "{ me { id } }" }).to_string();
    let send = |content_type: Option<&'static str>| {
        let mut request = reqwest::Client::new()
            .post(app.url("/graphql"))
            .bearer_auth(app.token("alice"))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    for refused in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let response = send(refused).await.unwrap();
        assert_eq!(
            code_of(response).await,
            (415, json!("UNSUPPORTED_MEDIA_TYPE")),
            "{refused:?}"
        );
    }
    for accepted in [
        "application/json",
        "application/json; charset=utf-8",
        "application/graphql-response+json",
    ] {
        let response = send(Some(accepted)).await.unwrap();
        assert_eq!(response.status(), 200, "{accepted}");
    }
}

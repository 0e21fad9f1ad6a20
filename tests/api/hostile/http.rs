//! HTTP endpoints: the per-IP limiter (publish and revoke included) and IPv6 prefixes here;
//! strings written to the database, the probes, and GraphQL over HTTP's method and media-type
//! rules in the submodules.

mod methods;
mod probes;
mod strings;

use palisade::audit::FAILED_ATTEMPT_BURST;
use serde_json::{Value, json};

use crate::helpers::{TestApp, redis_url, spawn_app_with, spawn_instance, unique_prefix};

/// `POST path` with a bearer credential and a JSON body, from `forwarded_for` when given (only
/// believed when the test trusts loopback as a proxy).
pub(super) async fn post(
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

pub(super) async fn code_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["errors"][0]["extensions"]["code"].clone())
}

/// The audit rows of `action`: (ip, metadata as JSON text).
pub(super) async fn audit_rows(app: &TestApp, action: &str) -> Vec<(Option<String>, String)> {
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
    let rows = app.closed_connection_rows().await;
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

use std::time::Duration;

use serde_json::json;

use crate::helpers::spawn_app_from_file;

const BEFORE: &str = "operations:\n  rate_limit:\n    limit: 100\n    on_exceed: reject\n";
const AFTER: &str =
    "operations:\n  rate_limit:\n    limit: 2\n    window: 1h\n    on_exceed: reject\n";
const BROKEN: &str = "operations:\n  rate_limit:\n    warn_at: 1.5\n";

/// Waits until `/metrics` shows `line`, i.e. until the watcher handled the change.
async fn until_metric(app: &crate::helpers::TestApp, line: &str) {
    for _ in 0..100 {
        let text = app.metrics_text().await;
        if text.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("`{line}` never appeared");
}

async fn me(client: &mut crate::helpers::WsClient, id: &str) -> serde_json::Value {
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": { "query": "{ me { id } }" } }))
        .await;
    let answer = client.recv().await;
    if answer["type"] == "next" {
        assert_eq!(client.recv().await["type"], "complete");
    }
    answer
}

#[tokio::test]
async fn editing_the_file_changes_the_rate_limit_of_an_open_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hardening.yaml");
    std::fs::write(&path, BEFORE).unwrap();
    let app = spawn_app_from_file(&path).await;
    let mut client = app.ws_acked("alice").await;
    assert_eq!(
        me(&mut client, "a").await["payload"]["extensions"]["rateLimit"]["limit"],
        100
    );

    std::fs::write(&path, AFTER).unwrap();
    until_metric(&app, "palisade_config_reloads_total{result=\"ok\"} 1").await;
    assert_eq!(
        me(&mut client, "b").await["payload"]["extensions"]["rateLimit"]["limit"],
        2
    );
    me(&mut client, "c").await;
    assert_eq!(
        me(&mut client, "d").await["payload"][0]["extensions"]["code"],
        "RATE_LIMITED"
    );
}

#[tokio::test]
async fn an_invalid_file_keeps_the_running_configuration_and_counts_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hardening.yaml");
    std::fs::write(&path, BEFORE).unwrap();
    let app = spawn_app_from_file(&path).await;
    std::fs::write(&path, BROKEN).unwrap();
    until_metric(&app, "palisade_config_reloads_total{result=\"rejected\"} 1").await;
    assert_eq!(app.state.live.load().operations.rate_limit.limit, 100);
    let mut client = app.ws_acked("alice").await;
    assert_eq!(
        me(&mut client, "a").await["payload"]["extensions"]["rateLimit"]["limit"],
        100
    );
}

const HITS: &str = "palisade_document_cache_lookups_total{outcome=\"hit\"}";

#[tokio::test]
async fn a_document_served_from_the_cache_is_judged_by_the_limits_of_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hardening.yaml");
    std::fs::write(&path, "payload:\n  max_depth: 10\n").unwrap();
    let app = spawn_app_from_file(&path).await;
    let mut client = app.ws_acked("alice").await;
    assert_eq!(me(&mut client, "a").await["type"], "next");
    assert_eq!(me(&mut client, "b").await["type"], "next");
    assert_eq!(
        app.sample(HITS).await.unwrap(),
        1.0,
        "the second one was a hit"
    );

    // `{ me { id } }` is two deep.
    std::fs::write(&path, "payload:\n  max_depth: 1\n").unwrap();
    until_metric(&app, "palisade_config_reloads_total{result=\"ok\"} 1").await;
    let refused = me(&mut client, "c").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "MAX_DEPTH_LIMIT"
    );
    assert_eq!(
        app.sample(HITS).await.unwrap(),
        2.0,
        "refused although cached"
    );
}

#[tokio::test]
async fn distinct_documents_past_the_bound_only_churn_the_cache() {
    let app = crate::helpers::spawn_app_with(|c| c.payload.document_cache.entries = 3).await;
    let mut client = app.ws_acked("alice").await;
    for n in 0..10 {
        let query = format!("{{ a{n}: me {{ id }} }}");
        client
            .send(
                json!({ "id": n.to_string(), "type": "subscribe", "payload": { "query": query } }),
            )
            .await;
        assert_eq!(client.recv().await["type"], "next");
        assert_eq!(client.recv().await["type"], "complete");
    }
    assert_eq!(
        app.sample("palisade_document_cache_entries").await.unwrap(),
        3.0
    );
    let bytes = app.sample("palisade_document_cache_bytes").await.unwrap();
    assert_eq!(bytes, 3.0 * 256.0 * "{ a0: me { id } }".len() as f64);
}

//! Ops mistakes that must not widen access or crash the server: reloads of a truncated or
//! half-written hardening.yaml and a reload's retention change (here), settings that passed
//! `check-config` and then crashed the server or locked everyone out (`schema_configs`), and a
//! weak or planted JWT secret (`secret`).
//!
//! The reload tests run the real binary on a real file and send it a real SIGHUP: a signal sent
//! to the test process would reach every in-process server of the suite at once.

mod schema_configs;
mod secret;
mod server;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use palisade::db::Database;
use serde_json::{Value, json};

use crate::helpers::WsClient;
use server::Server;

const RULES_WITHOUT_SYSTEM: &str = "server:\n  listen: 127.0.0.1:0\nlogging:\n  format: json\ntopics:\n  rules:\n    - pattern: 'user:{user}'\n      subscribe: [{ subject: user }]\n";

const EVENTS: &str = "subscription($t: String!) { events(topic: $t) { type } }";

/// How long an accepted subscription stays silent before it counts as accepted: a refusal is an
/// `error` message, sent as soon as the operation's guard and resolver have run, and a
/// `ping` cannot serve as a marker because the connection answers it before operations finish.
const ACCEPTED_AFTER: Duration = Duration::from_secs(2);

/// The server's answer to subscribing to `topic`: `None` when accepted, else the error code.
async fn subscribe(client: &mut WsClient, id: &str, topic: &str) -> Option<Value> {
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": { "query": EVENTS, "variables": { "t": topic } } }))
        .await;
    let reply = tokio::time::timeout(ACCEPTED_AFTER, client.recv())
        .await
        .ok()?;
    assert_eq!(reply["id"], id, "{reply}");
    assert_eq!(reply["type"], "error", "{reply}");
    Some(reply["payload"][0]["extensions"]["code"].clone())
}

fn refused_reload(entry: &Value, reason: &str) -> bool {
    entry["fields"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("configuration reload refused"))
        && entry["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(reason))
}

#[tokio::test]
async fn an_empty_or_half_written_file_is_refused_on_sighup_and_the_running_topic_rules_stay() {
    let server = Server::start(RULES_WITHOUT_SYSTEM).await;
    let mut alice = server.client("alice").await;
    assert_eq!(
        subscribe(&mut alice, "1", "system:alerts").await,
        Some(json!("FORBIDDEN"))
    );

    // Truncated, as an editor does before writing in place.
    std::fs::write(server.config_path(), "").unwrap();
    server.hangup();
    server
        .until_metric("palisade_config_reloads_total{result=\"rejected\"} 1")
        .await;
    server
        .until_logged(|e| refused_reload(e, "the file is empty"))
        .await;
    assert_eq!(
        subscribe(&mut alice, "2", "system:alerts").await,
        Some(json!("FORBIDDEN"))
    );

    // Cut off before the `topics` section.
    let half = &RULES_WITHOUT_SYSTEM[..RULES_WITHOUT_SYSTEM.find("topics:").unwrap()];
    std::fs::write(server.config_path(), half).unwrap();
    server.hangup();
    server
        .until_metric("palisade_config_reloads_total{result=\"rejected\"} 2")
        .await;
    server
        .until_logged(|e| refused_reload(e, "[\"topics\"]"))
        .await;
    let mut bob = server.client("bob").await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(
            subscribe(client, "3", "system:alerts").await,
            Some(json!("FORBIDDEN"))
        );
    }
    assert_eq!(
        server
            .counter("palisade_config_reloads_total{result=\"ok\"}")
            .await,
        0
    );
}

#[tokio::test]
async fn saving_through_a_temporary_file_and_rename_reloads_once_with_the_finished_file() {
    let server = Server::start(RULES_WITHOUT_SYSTEM).await;
    let with_system = format!(
        "{RULES_WITHOUT_SYSTEM}    - pattern: 'system:{{name}}'\n      subscribe: [authenticated]\n"
    );
    server.save_through_rename(&with_system).await;
    server
        .until_metric("palisade_config_reloads_total{result=\"ok\"} 1")
        .await;
    // The operator signals after saving, as `systemctl reload` does.
    server.hangup();
    // Long enough for the signal to be handled, the file's settling included.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server
            .counter("palisade_config_reloads_total{result=\"ok\"}")
            .await,
        1
    );
    assert_eq!(
        server
            .counter("palisade_config_reloads_total{result=\"rejected\"}")
            .await,
        0
    );
    let mut alice = server.client("alice").await;
    assert_eq!(subscribe(&mut alice, "1", "system:alerts").await, None);
}

async fn audit_row(db: &Database, action: &str, age: TimeDelta) {
    palisade::on_pool!(db, |pool| sqlx::query(
        "INSERT INTO audit_log (action, severity, metadata, created_at) VALUES ($1, 'INFO', $2, $3)"
    )
    .bind(action)
    .bind(sqlx::types::Json(json!({})))
    .bind(Utc::now() - age)
    .execute(pool)
    .await
    .map(drop))
    .unwrap();
}

async fn audit_rows(db: &Database, action: &str) -> i64 {
    palisade::on_pool!(db, |pool| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM audit_log WHERE action = $1"
    )
    .bind(action)
    .fetch_one(pool)
    .await)
    .unwrap()
}

fn logged_list(entry: &Value, field: &str) -> String {
    entry["fields"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_reload_that_shortens_retention_deletes_nothing_itself_and_says_it_applies_at_the_next_cleanup()
 {
    let base = "server:\n  listen: 127.0.0.1:0\nlogging:\n  format: json\nretention:\n";
    let server = Server::start(&format!("{base}  audit_logs: 3650d\n  cleanup_every: 1h\n")).await;
    let url = format!("sqlite://{}", server.dir.path().join("p.db").display());
    let db = Database::connect(&url).await.unwrap();
    audit_row(&db, "200 days old", TimeDelta::days(200)).await;

    server
        .save_through_rename(&format!("{base}  audit_logs: 90d\n  cleanup_every: 3s\n"))
        .await;
    server.hangup();
    let reloaded = server
        .until_logged(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("configuration reloaded"))
        })
        .await;
    assert!(
        logged_list(&reloaded, "at_next_cleanup").contains("retention.audit_logs"),
        "{reloaded}"
    );
    assert!(
        !logged_list(&reloaded, "needs_restart").contains("retention"),
        "{reloaded}"
    );
    server
        .until_logged(|e| {
            e["fields"]["message"]
                == "retention changed by a reload; it applies at the next scheduled cleanup"
        })
        .await;
    assert_eq!(
        audit_rows(&db, "200 days old").await,
        1,
        "deleted by the reload"
    );

    server
        .until_metric("palisade_retention_deleted_total{table=\"audit_log\"} 1")
        .await;
    assert_eq!(audit_rows(&db, "200 days old").await, 0);
    db.close().await;
}

use futures_util::SinkExt;
use palisade::connlog::{ConnectionLog, Opened};
use palisade::db::Database;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_connection_writes_a_log_row_with_who_how_and_how_it_ended() {
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
    let mut refused = app.ws("graphql-ws").await;
    refused
        .send(serde_json::json!({ "type": "connection_init" }))
        .await;
    refused.closed().await;

    let rows = app.closed_connection_rows().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        (
            Some("alice".into()),
            "graphql-transport-ws".into(),
            "127.0.0.1".into(),
            Some(1000),
            Some("Closed by client: bye".into())
        )
    );
    assert_eq!(
        rows[1],
        (
            None,
            "graphql-ws".into(),
            "127.0.0.1".into(),
            Some(4403),
            Some("Forbidden".into())
        )
    );
}

#[tokio::test]
async fn authentication_outcomes_are_audited_without_the_token() {
    let app = spawn_app().await;
    app.ws_acked("alice").await;
    let mut refused = app.ws("graphql-transport-ws").await;
    refused.send(serde_json::json!({ "type": "connection_init", "payload": { "token": "secret-looking-token" } })).await;
    refused.closed().await;
    app.state.audit.flush().await;
    let rows: Vec<(String, String, Option<String>, String)> = palisade::on_pool!(
        &app.state.db,
        |pool| {
            sqlx::query_as("SELECT action, severity, user_id, CAST(metadata AS TEXT) FROM audit_log ORDER BY id").fetch_all(pool).await.unwrap()
        }
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_deref()),
        ("socket.authenticated", "INFO", Some("alice"))
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str()),
        ("socket.auth_failed", "WARN")
    );
    assert!(!rows[1].3.contains("secret-looking-token"));
}

#[tokio::test]
async fn audit_rows_that_cannot_be_written_are_counted_as_dropped_and_connections_still_work() {
    let app = spawn_app().await;
    // Break the audit table the way an outage would: inserts fail from now on.
    palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query("DROP TABLE audit_log")
            .execute(pool)
            .await
            .map(drop)
            .unwrap()
    });
    let mut client = app.ws_acked("alice").await;
    client.send(serde_json::json!({ "type": "ping" })).await;
    assert_eq!(client.recv().await["type"], "pong");
    app.state.audit.flush().await;
    app.assert_metrics(&["palisade_audit_dropped_total 1"])
        .await;
}

/// (id, user_id, close_code, reason).
type LoggedRow = (String, Option<String>, Option<i32>, Option<String>);

/// Writes one connection's row and ending in one batch (a single insert) and another's in two
/// (an insert, then an update), on `db`, and reads both back.
async fn log_rows_survive_both_write_paths(db: Database) {
    let log = ConnectionLog::start(db.clone(), prometheus::IntCounter::new("d", "d").unwrap());
    let opened = |id: &str, user: Option<&str>| Opened {
        id: id.into(),
        ip: "127.0.0.1".into(),
        user_agent: Some("agent".into()),
        instance_id: "i".into(),
        subprotocol: "graphql-transport-ws",
        connected_at: chrono::Utc::now(),
        user_id: user.map(Into::into),
    };
    log.opened(opened("together", Some("alice")));
    log.closed("together", 1000, "Closed by client: bye");
    log.opened(opened("apart", None));
    log.flush().await;
    log.closed("apart", 4403, "Forbidden");
    log.flush().await;
    let rows: Vec<LoggedRow> = palisade::on_pool!(&db, |pool| {
        sqlx::query_as("SELECT id, user_id, close_code, reason FROM connection_log ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    assert_eq!(
        rows,
        [
            ("apart".into(), None, Some(4403), Some("Forbidden".into())),
            (
                "together".into(),
                Some("alice".into()),
                Some(1000),
                Some("Closed by client: bye".into())
            ),
        ]
    );
}

#[tokio::test]
async fn connection_rows_are_written_whole_or_completed_later_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    log_rows_survive_both_write_paths(Database::connect(&url).await.unwrap()).await;
}

#[sqlx::test(migrations = false)]
async fn connection_rows_are_written_whole_or_completed_later_on_postgres(pool: sqlx::PgPool) {
    log_rows_survive_both_write_paths(Database::from_pg_pool(pool).await.unwrap()).await;
}

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::helpers::{closed_connection_rows, spawn_app};

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

    let rows = closed_connection_rows(&app.state.db).await;
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

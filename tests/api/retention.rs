use chrono::{DateTime, TimeDelta, Utc};
use palisade::config::Retention;
use palisade::db::Database;
use sqlx::types::Json;

use crate::helpers::{TestApp, spawn_app, spawn_app_on};

async fn audit_rows(db: &Database, action: &str, count: i64, at: DateTime<Utc>) {
    palisade::on_pool!(db, |pool| sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO audit_log (action, severity, metadata, created_at) SELECT $2, 'INFO', $3, $4 FROM n"
    )
    .bind(count)
    .bind(action)
    .bind(Json(serde_json::json!({})))
    .bind(at)
    .execute(pool)
    .await
    .map(drop))
    .unwrap();
}

async fn connection_row(
    db: &Database,
    id: &str,
    connected: DateTime<Utc>,
    disconnected: Option<DateTime<Utc>>,
) {
    palisade::on_pool!(db, |pool| sqlx::query(
        "INSERT INTO connection_log (id, ip, instance_id, subprotocol, connected_at, disconnected_at) VALUES ($1, '127.0.0.1', 'i', 'graphql-transport-ws', $2, $3)"
    )
    .bind(id)
    .bind(connected)
    .bind(disconnected)
    .execute(pool)
    .await
    .map(drop))
    .unwrap();
}

async fn remaining(db: &Database, table: &str) -> Vec<String> {
    let column = if table == "audit_log" { "action" } else { "id" };
    let sql = format!("SELECT {column} FROM {table} ORDER BY {column}");
    palisade::on_pool!(db, |pool| sqlx::query_scalar::<_, String>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .fetch_all(pool)
    .await)
    .unwrap()
}

async fn only_expired_rows_are_deleted(app: &TestApp) {
    let db = &app.state.db;
    let now = Utc::now();
    // 2,500 expired audit rows: more than one batch.
    audit_rows(db, "expired", 2_500, now - TimeDelta::days(91)).await;
    audit_rows(db, "kept", 3, now - TimeDelta::days(89)).await;
    connection_row(
        db,
        "closed-long-ago",
        now - TimeDelta::days(20),
        Some(now - TimeDelta::days(8)),
    )
    .await;
    connection_row(
        db,
        "closed-recently",
        now - TimeDelta::days(20),
        Some(now - TimeDelta::days(6)),
    )
    .await;
    connection_row(db, "never-closed-old", now - TimeDelta::days(8), None).await;
    connection_row(db, "open-now", now - TimeDelta::minutes(5), None).await;

    let removed = palisade::retention::run_once(db, &Retention::default(), &app.state.metrics)
        .await
        .unwrap();
    assert_eq!(
        removed,
        [
            ("connection_log", 2),
            ("audit_log", 2_500),
            ("presence_log", 0)
        ]
    );
    assert_eq!(
        remaining(db, "connection_log").await,
        ["closed-recently", "open-now"]
    );
    assert_eq!(remaining(db, "audit_log").await, ["kept", "kept", "kept"]);
    app.assert_metrics(&[
        "palisade_retention_deleted_total{table=\"audit_log\"} 2500",
        "palisade_retention_deleted_total{table=\"connection_log\"} 2",
    ])
    .await;
}

#[tokio::test]
async fn retention_deletes_only_expired_rows_on_sqlite() {
    only_expired_rows_are_deleted(&spawn_app().await).await;
}

#[sqlx::test(migrations = false)]
async fn retention_deletes_only_expired_rows_on_postgres(pool: sqlx::PgPool) {
    let app = spawn_app_on(Database::from_pg_pool(pool).await.unwrap(), |_| {}).await;
    only_expired_rows_are_deleted(&app).await;
}

use serde_json::{Map, Value, json};

use crate::helpers::{TestApp, WsClient, spawn_app, spawn_app_with};

const EVENTS: &str = "subscription($t: String!) { events(topic: $t) { type } }";

async fn subscribe(client: &mut WsClient, id: &str, topic: &str) {
    client
        .send(json!({ "id": id, "type": "subscribe", "payload": { "query": EVENTS, "variables": { "t": topic } } }))
        .await;
}

/// A subscribe is accepted when no error comes back before the answer to a ping.
async fn accepted(client: &mut WsClient) -> Result<(), Value> {
    client.send(json!({ "type": "ping" })).await;
    let reply = client.recv().await;
    if reply["type"] == "pong" {
        return Ok(());
    }
    assert_eq!(client.recv().await["type"], "pong");
    Err(reply)
}

async fn ws_with_claims(app: &TestApp, sub: &str, claims: Value) -> WsClient {
    let claims: Map<String, Value> = serde_json::from_value(claims).unwrap();
    app.ws_acked_with(&app.token_with(sub, claims)).await
}

#[tokio::test]
async fn a_user_may_subscribe_to_their_own_topic_but_not_to_someone_elses() {
    let app = spawn_app().await;
    let mut alice = app.ws_acked("alice").await;
    subscribe(&mut alice, "own", "user:alice").await;
    assert!(accepted(&mut alice).await.is_ok());
    subscribe(&mut alice, "other", "user:bob").await;
    let refused = accepted(&mut alice).await.unwrap_err();
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["id"], "other");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "FORBIDDEN");
    assert!(
        accepted(&mut alice).await.is_ok(),
        "the connection stays open"
    );

    app.post_as_service(
        "mutation { publish(topic: \"user:alice\", type: \"dm\") { id } }",
        json!({}),
    )
    .await;
    let event = alice.recv().await;
    assert_eq!(
        (
            event["id"].as_str(),
            event["payload"]["data"]["events"]["type"].as_str()
        ),
        (Some("own"), Some("dm"))
    );
}

#[tokio::test]
async fn workspace_members_come_from_the_workspaces_claim() {
    let app = spawn_app().await;
    let mut member = ws_with_claims(&app, "m", json!({ "workspaces": ["acme", "globex"] })).await;
    subscribe(&mut member, "1", "workspace:acme:dashboard").await;
    assert!(accepted(&mut member).await.is_ok());
    subscribe(&mut member, "2", "workspace:initech:dashboard").await;
    assert_eq!(
        accepted(&mut member).await.unwrap_err()["payload"][0]["extensions"]["code"],
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn membership_rows_in_a_database_table_grant_access() {
    let app = spawn_app_with(|c| {
        c.topics.rules = serde_yaml::from_str(
            "- pattern: 'team:{team}'\n  subscribe: [{ member: { table: team_members, key_column: team_id, placeholder: team } }]\n",
        )
        .unwrap();
    })
    .await;
    palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query("CREATE TABLE team_members (user_id TEXT, team_id TEXT)")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO team_members VALUES ('alice', 'red')")
            .execute(pool)
            .await
            .unwrap();
    });
    let mut alice = app.ws_acked("alice").await;
    subscribe(&mut alice, "1", "team:red").await;
    assert!(accepted(&mut alice).await.is_ok());
    subscribe(&mut alice, "2", "team:blue").await;
    assert!(accepted(&mut alice).await.is_err());
}

#[tokio::test]
async fn only_the_service_role_may_publish_and_denials_are_audited() {
    let app = spawn_app().await;
    let denied = app
        .post(
            "alice",
            "mutation { publish(topic: \"user:alice\", type: \"x\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(denied["errors"][0]["extensions"]["code"], "FORBIDDEN");
    let allowed = app
        .post_as_service(
            "mutation { publish(topic: \"user:alice\", type: \"x\") { id } }",
            json!({}),
        )
        .await;
    assert!(allowed["data"]["publish"]["id"].is_string(), "{allowed}");

    app.state.audit.flush().await;
    let rows: Vec<(String, Option<String>, String)> = palisade::on_pool!(&app.state.db, |pool| {
        sqlx::query_as("SELECT action, user_id, CAST(metadata AS TEXT) FROM audit_log WHERE action = 'unauthorized_topic_access'")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1.as_deref(), Some("alice"));
    assert!(
        rows[0].2.contains("publish") && rows[0].2.contains("user:alice"),
        "{}",
        rows[0].2
    );
}

#[tokio::test]
async fn a_topic_that_matches_no_rule_is_denied() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    subscribe(&mut client, "1", "random-topic").await;
    assert_eq!(
        accepted(&mut client).await.unwrap_err()["payload"][0]["extensions"]["code"],
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn anonymous_connections_are_denied_everything_but_open_grants() {
    let app = spawn_app_with(|c| c.auth.required = false).await;
    let mut anonymous = app.ws("graphql-transport-ws").await;
    anonymous.send(json!({ "type": "connection_init" })).await;
    assert_eq!(anonymous.recv().await["type"], "connection_ack");
    subscribe(&mut anonymous, "1", "system:alerts").await;
    assert!(
        accepted(&mut anonymous).await.is_err(),
        "`authenticated` does not cover anonymous"
    );
}

#[tokio::test]
async fn topic_rules_stored_by_a_reload_apply_to_open_connections() {
    let app = spawn_app().await;
    let mut client = app.ws_acked("alice").await;
    subscribe(&mut client, "before", "team:red").await;
    assert!(
        accepted(&mut client).await.is_err(),
        "no rule matches team topics yet"
    );
    let mut reloaded = (**app.state.live.load()).clone();
    reloaded.topics.rules.push(
        serde_yaml::from_str("pattern: 'team:{team}'\nsubscribe: [authenticated]\n").unwrap(),
    );
    app.state.live.store(std::sync::Arc::new(reloaded));
    subscribe(&mut client, "after", "team:red").await;
    assert!(accepted(&mut client).await.is_ok());
}

use std::time::Duration;

use serde_json::{Map, json};

use crate::helpers::spawn_app_with;

const NOTICES: &str = "subscription { connectionNotices { kind expiresAt } }";

#[tokio::test]
async fn an_expiring_token_gets_a_notice_then_the_connection_closes_at_exp() {
    let app = spawn_app_with(|c| {
        c.auth.jwt.leeway = "0s".parse().unwrap();
        c.auth.jwt.expiry_warning = "2s".parse().unwrap();
    })
    .await;
    let token = app.token_for("alice", Map::new(), Duration::from_secs(3));
    let mut client = app.ws_acked_with(&token).await;
    client
        .send(json!({ "id": "n", "type": "subscribe", "payload": { "query": NOTICES } }))
        .await;
    let notice = client.recv().await;
    assert_eq!(
        notice["payload"]["data"]["connectionNotices"]["kind"],
        "TOKEN_EXPIRING"
    );
    assert!(notice["payload"]["data"]["connectionNotices"]["expiresAt"].is_string());
    assert_eq!(client.closed().await, (4403, "Token expired".into()));
}

#[tokio::test]
async fn a_client_that_subscribes_after_the_warning_still_gets_it_until_it_refreshes() {
    let app = spawn_app_with(|c| {
        c.auth.jwt.leeway = "0s".parse().unwrap();
        c.auth.jwt.expiry_warning = "3s".parse().unwrap();
    })
    .await;
    // `exp` is in whole seconds, so the warning is due within the first second.
    let token = app.token_for("alice", Map::new(), Duration::from_secs(4));
    let mut client = app.ws_acked_with(&token).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .send(json!({ "id": "late", "type": "subscribe", "payload": { "query": NOTICES } }))
        .await;
    let notice = client.recv().await;
    assert_eq!(notice["id"], "late");
    assert_eq!(
        notice["payload"]["data"]["connectionNotices"]["kind"],
        "TOKEN_EXPIRING"
    );

    let fresh = app.token_for("alice", Map::new(), Duration::from_secs(600));
    client.send(json!({ "id": "r", "type": "subscribe", "payload": { "query": "mutation($t: String!) { refreshAuth(token: $t) { expiresAt } }", "variables": { "t": fresh } } })).await;
    assert_eq!(client.recv().await["id"], "r");
    assert_eq!(client.recv().await["type"], "complete");
    // The refreshed connection has nothing standing: the next frame is the query's answer.
    client
        .send(json!({ "id": "after", "type": "subscribe", "payload": { "query": NOTICES } }))
        .await;
    client
        .send(json!({ "id": "q", "type": "subscribe", "payload": { "query": "{ __typename }" } }))
        .await;
    assert_eq!(client.recv().await["id"], "q");
}

#[tokio::test]
async fn refresh_auth_keeps_the_connection_and_its_subscriptions_past_the_old_expiry() {
    let app = spawn_app_with(|c| {
        c.auth.jwt.leeway = "0s".parse().unwrap();
        c.auth.jwt.expiry_warning = "1s".parse().unwrap();
    })
    .await;
    let short = app.token_for("alice", Map::new(), Duration::from_secs(2));
    let mut client = app.ws_acked_with(&short).await;
    client.send(json!({ "id": "events", "type": "subscribe", "payload": { "query": "subscription { events(topic: \"user:alice\") { type } }" } })).await;

    let fresh = app.token_for("alice", Map::new(), Duration::from_secs(600));
    let refresh = json!({ "id": "r", "type": "subscribe", "payload": { "query": "mutation($t: String!) { refreshAuth(token: $t) { expiresAt } }", "variables": { "t": fresh } } });
    client.send(refresh).await;
    let refreshed = client.recv().await;
    assert!(
        refreshed["payload"]["data"]["refreshAuth"]["expiresAt"].is_string(),
        "{refreshed}"
    );
    assert_eq!(client.recv().await["type"], "complete");

    tokio::time::sleep(Duration::from_secs(3)).await;
    app.post_as_service(
        "mutation { publish(topic: \"user:alice\", type: \"still-here\") { id } }",
        json!({}),
    )
    .await;
    let event = client.recv().await;
    assert_eq!(event["id"], "events");
    assert_eq!(event["payload"]["data"]["events"]["type"], "still-here");
}

#[tokio::test]
async fn refresh_auth_refuses_a_token_for_another_user_or_an_invalid_one() {
    let app = spawn_app_with(|_| {}).await;
    let mut client = app.ws_acked("alice").await;
    for (token, code) in [
        (app.token("mallory"), "FORBIDDEN"),
        ("garbage".to_string(), "UNAUTHENTICATED"),
    ] {
        let refresh = json!({ "id": "r", "type": "subscribe", "payload": { "query": "mutation($t: String!) { refreshAuth(token: $t) { expiresAt } }", "variables": { "t": token } } });
        client.send(refresh).await;
        // A non-null field that failed: the operation produced no data, so it ends in `error`.
        let answer = client.recv().await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["payload"][0]["extensions"]["code"], code, "{answer}");
    }
}

#[tokio::test]
async fn refresh_auth_and_notices_are_websocket_only() {
    let app = spawn_app_with(|_| {}).await;
    let answer = app
        .post(
            "alice",
            "mutation { refreshAuth(token: \"x\") { expiresAt } }",
            json!({}),
        )
        .await;
    assert_eq!(answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
}

mod session_cookie {
    use chrono::{NaiveDateTime, Utc};
    use serde_json::json;

    use crate::helpers::{SESSION_SECRET, TestApp, insert_session, spawn_app_with};

    const ORIGIN: (&str, &str) = ("origin", "http://localhost:5173");

    fn cookie(sid: &str) -> String {
        let signed = palisade::auth::session::sign(sid, SESSION_SECRET);
        let encoded =
            percent_encoding::utf8_percent_encode(&signed, percent_encoding::NON_ALPHANUMERIC);
        format!("connect.sid={encoded}")
    }

    async fn logged_in(app: &TestApp, sid: &str) -> String {
        let sess =
            json!({ "cookie": { "originalMaxAge": 3_600_000 }, "passport": { "user": "alice" } });
        insert_session(&app.state.db, sid, &sess, 30).await;
        cookie(sid)
    }

    #[tokio::test]
    async fn an_express_session_cookie_authenticates_the_connection() {
        let app = spawn_app_with(|_| {}).await;
        let cookie = logged_in(&app, "sid-accepted").await;
        let mut client = app
            .try_ws("/graphql", &[("cookie", &cookie), ORIGIN])
            .await
            .unwrap();
        client.send(json!({ "type": "connection_init" })).await;
        assert_eq!(client.recv().await["type"], "connection_ack");
        client
            .send(
                json!({ "id": "me", "type": "subscribe", "payload": { "query": "{ me { id } }" } }),
            )
            .await;
        assert_eq!(client.recv().await["payload"]["data"]["me"]["id"], "alice");
    }

    #[tokio::test]
    async fn a_valid_cookie_from_a_foreign_or_missing_origin_is_refused() {
        let app = spawn_app_with(|_| {}).await;
        let cookie = logged_in(&app, "sid-origin").await;
        assert_eq!(
            app.try_ws(
                "/graphql",
                &[("cookie", &cookie), ("origin", "https://evil.example")]
            )
            .await
            .err(),
            Some(403)
        );
        assert_eq!(
            app.try_ws("/graphql", &[("cookie", &cookie)]).await.err(),
            Some(403)
        );
    }

    #[tokio::test]
    async fn a_session_without_a_user_or_with_a_bad_signature_is_refused() {
        let app = spawn_app_with(|_| {}).await;
        insert_session(&app.state.db, "sid-anon", &json!({ "cookie": {} }), 30).await;
        let tampered =
            cookie("sid-accepted-elsewhere").replace("connect.sid=s%3A", "connect.sid=s%3AX");
        for cookie in [cookie("sid-anon"), tampered] {
            let mut client = app
                .try_ws("/graphql", &[("cookie", &cookie), ORIGIN])
                .await
                .unwrap();
            client.send(json!({ "type": "connection_init" })).await;
            assert_eq!(client.closed().await, (4403, "Forbidden".into()));
        }
    }

    #[tokio::test]
    async fn logging_out_closes_the_connection_within_one_revalidation() {
        let app =
            spawn_app_with(|c| c.auth.session.revalidate_every = "300ms".parse().unwrap()).await;
        let cookie = logged_in(&app, "sid-logout").await;
        let mut client = app
            .try_ws("/graphql", &[("cookie", &cookie), ORIGIN])
            .await
            .unwrap();
        client.send(json!({ "type": "connection_init" })).await;
        assert_eq!(client.recv().await["type"], "connection_ack");
        client.send(json!({ "id": "n", "type": "subscribe", "payload": { "query": "subscription { connectionNotices { kind } }" } })).await;
        client.send(json!({ "type": "ping" })).await;
        assert_eq!(client.recv().await["type"], "pong");

        palisade::on_pool!(&app.state.db, |pool| {
            sqlx::query("DELETE FROM session WHERE sid = 'sid-logout'")
                .execute(pool)
                .await
                .map(drop)
                .unwrap()
        });
        assert_eq!(
            client.recv().await["payload"]["data"]["connectionNotices"]["kind"],
            "SESSION_EXPIRED"
        );
        assert_eq!(client.closed().await, (4403, "Session expired".into()));
    }

    #[tokio::test]
    async fn a_live_session_near_its_expiry_is_extended_by_its_original_lifetime() {
        let app = spawn_app_with(|c| {
            c.auth.session.revalidate_every = "200ms".parse().unwrap();
            c.auth.session.refresh_within = "1h".parse().unwrap();
        })
        .await;
        let cookie = logged_in(&app, "sid-sliding").await;
        let mut client = app
            .try_ws("/graphql", &[("cookie", &cookie), ORIGIN])
            .await
            .unwrap();
        client.send(json!({ "type": "connection_init" })).await;
        assert_eq!(client.recv().await["type"], "connection_ack");
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let expire: NaiveDateTime = palisade::on_pool!(&app.state.db, |pool| {
            sqlx::query_scalar("SELECT expire FROM session WHERE sid = 'sid-sliding'")
                .fetch_one(pool)
                .await
                .unwrap()
        });
        let left = expire - Utc::now().naive_utc();
        assert!(
            left > chrono::TimeDelta::minutes(55),
            "expire moved to about an hour from now, got {left}"
        );
    }
}

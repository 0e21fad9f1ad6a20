//! The HTTP side: GraphQL over HTTP, GraphiQL, and the probes and metrics ops rely on.

use std::net::SocketAddr;

use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::audit::{Entry, Severity};
use crate::error::Error;
use crate::graphql::Caller;
use crate::startup::AppState;
use crate::transport;

/// `POST <graphql_path>`: queries and mutations.
pub async fn graphql_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    execute(state, peer, request).await
}

/// `GET <graphql_path>`: a WebSocket upgrade, GraphiQL for a browser, or a query in the URL.
pub async fn graphql_get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if parts
        .headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(ws) => transport::upgrade(state, peer, parts.headers, parts.uri.query(), ws).await,
            Err(rejection) => rejection.into_response(),
        };
    }
    let wants_html = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html && parts.uri.query().is_none() {
        return graphiql_page(&state);
    }
    execute(state, peer, Request::from_parts(parts, body)).await
}

async fn execute(state: AppState, peer: SocketAddr, request: Request) -> Response {
    let client = state.client_ip.resolve(peer.ip(), request.headers());
    let identity = match state.auth.http(request.headers()) {
        Ok(identity) => identity,
        Err(failure) => {
            state
                .metrics
                .auth_failures
                .with_label_values(&[failure.cause()])
                .inc();
            state.audit.record(Entry {
                action: "http.auth_failed",
                severity: Severity::Warn,
                user_id: None,
                connection_id: None,
                ip: Some(client.to_string()),
                metadata: json!({ "cause": failure.to_string() }),
            });
            return Error::Unauthenticated.into_response();
        }
    };
    // The GraphQL extractor streams the body and ignores axum's body limit, so the body is read
    // here, bounded by `payload.max_message_bytes`, before it is parsed.
    let (parts, body) = request.into_parts();
    let limit = state.config.payload.max_message_bytes.bytes();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Error::PayloadTooLarge(limit).into_response();
    };
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let request =
        match GraphQLRequest::<async_graphql_axum::rejection::GraphQLRejection>::from_request(
            request, &state,
        )
        .await
        {
            Ok(request) => request.into_inner(),
            Err(rejection) => return Error::BadUserInput(rejection.0.to_string()).into_response(),
        };
    let caller = Caller {
        identity: identity.map(std::sync::Arc::new),
        connection_id: None,
        ip: Some(client.to_string()),
        connection: None,
    };
    GraphQLResponse::from(state.schema.execute(request.data(caller)).await).into_response()
}

macro_rules! assets {
    ($($name:literal => $mime:literal),* $(,)?) => {
        /// GraphiQL's files, compiled into the binary: the page works with no internet access.
        fn asset(name: &str) -> Option<(&'static [u8], &'static str)> {
            match name {
                $($name => Some((include_bytes!(concat!("../assets/graphiql/", $name)), $mime)),)*
                _ => None,
            }
        }
    };
}

assets! {
    "graphiql.min.js" => "text/javascript",
    "graphiql.min.css" => "text/css",
    "react.min.js" => "text/javascript",
    "react-dom.min.js" => "text/javascript",
    "graphql-ws.min.js" => "text/javascript",
}

fn graphiql_page(state: &AppState) -> Response {
    let page = include_str!("../assets/graphiql/index.html")
        .replace("__GRAPHQL_PATH__", &state.config.server.graphql_path);
    Html(page).into_response()
}

/// `GET /graphiql/{file}`.
pub async fn graphiql_asset(Path(file): Path<String>) -> Response {
    match asset(&file) {
        Some((bytes, mime)) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: every dependency answers; otherwise 503 naming what failed.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = serde_json::Map::new();
    let database = state.db.ping().await;
    checks.insert(
        "database".into(),
        check_result(&database, state.db.backend()),
    );
    let mut ready = database.is_ok();
    if let Some(client) = &state.redis {
        let redis = ping_redis(client).await;
        ready &= redis.is_ok();
        checks.insert("redis".into(), check_result(&redis, "redis"));
    }
    state.metrics.ready.set(i64::from(ready));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if ready { "ready" } else { "unavailable" }, "checks": checks });
    (status, Json(body)).into_response()
}

fn check_result(result: &anyhow::Result<()>, backend: &str) -> serde_json::Value {
    match result {
        Ok(()) => json!({ "ok": true, "backend": backend }),
        // The cause chain helps the operator; probes are not public, and no secrets are in it.
        Err(error) => json!({ "ok": false, "backend": backend, "error": format!("{error:#}") }),
    }
}

async fn ping_redis(client: &redis::Client) -> anyhow::Result<()> {
    use anyhow::Context;
    let probe = async {
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .context("connecting to Redis")?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .context("PING")
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), probe)
        .await
        .context("Redis did not answer in time")??;
    Ok(())
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

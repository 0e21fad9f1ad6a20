//! The HTTP side: GraphQL over HTTP, GraphiQL, and the probes and metrics ops rely on.

use std::net::SocketAddr;

use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::audit::{Entry, Severity};
use crate::error::Error;
use crate::graphql::Caller;
use crate::startup::AppState;
use crate::transport;

/// Media types a GraphQL POST may carry (GraphQL over HTTP). Anything else, `text/plain` and
/// form encodings above all, is what a cross-site form or a "simple" `fetch` sends without a
/// CORS preflight, so it is refused before any credential is looked at.
const POST_MEDIA_TYPES: [&str; 2] = ["application/json", "application/graphql-response+json"];

/// `POST <graphql_path>`: queries and mutations, as JSON only (415 otherwise).
pub async fn graphql_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let media_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|m| POST_MEDIA_TYPES.iter().any(|t| t.eq_ignore_ascii_case(m))) {
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "POST a GraphQL request as application/json",
        );
    }
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
    let max_query = state.live.load().payload.max_query_bytes.bytes();
    if parts
        .uri
        .query()
        .is_some_and(|query| selects_mutation(query, max_query))
    {
        let mut refused = refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "Mutations must be sent with POST",
        );
        refused
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return refused;
    }
    execute(state, peer, Request::from_parts(parts, body)).await
}

/// Whether a GET's query string selects a mutation. GraphQL over HTTP forbids them on GET (405):
/// a link or an image can make a browser send a GET cross-site with its cookies, and caches and
/// logs treat GETs as safe. A query string that does not parse, or whose operation cannot be
/// chosen, is left to the executor, which refuses it without running anything; so is a query
/// over `payload.max_query_bytes`, which the document limits refuse before parsing.
fn selects_mutation(query_string: &str, max_query_bytes: usize) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let Ok(request) = async_graphql::http::parse_query_string(query_string) else {
        return false;
    };
    if request.query.len() > max_query_bytes {
        return false;
    }
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        return false;
    };
    let operation = match (&document.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(operation), _) => Some(operation),
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next()
        }
        (DocumentOperations::Multiple(_), None) => None,
    };
    operation.is_some_and(|o| o.node.ty == OperationType::Mutation)
}

/// A refusal in the shape of a GraphQL error, so GraphQL clients show its code like any other.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
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
            state.audit.record_failure(Entry {
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
        .replace("__GRAPHQL_PATH__", &state.config.server.graphql_path)
        .replace("__DEV_HEADERS__", &crate::devtoken::graphiql_headers());
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

/// `GET /readyz` on the public port: 200 `{"status":"ready"}` when the last check found every
/// dependency answering, else 503 `{"status":"unavailable"}`. Which dependency failed, and why,
/// only for a caller with `auth.admin_role`.
pub async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let admin = state
        .auth
        .http(&headers)
        .ok()
        .flatten()
        .is_some_and(|identity| crate::admin::is_admin(&state.config, &identity));
    readiness(&state, admin)
}

/// `GET /readyz` on `server.admin_listen`: the status with every dependency's check.
pub async fn readyz_detailed(State(state): State<AppState>) -> Response {
    readiness(&state, true)
}

fn readiness(state: &AppState, detailed: bool) -> Response {
    let report = state.readiness.last();
    let (status, word) = if report.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let body = if detailed {
        json!({ "status": word, "checks": report.checks })
    } else {
        json!({ "status": word })
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

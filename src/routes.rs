//! The HTTP routes: the public router (GraphQL, GraphiQL assets, publish, admin revocation) and
//! the admin router (metrics and probes). Without a separate admin listener, the probes and
//! metrics are served on the public port, behind the per-IP limit, and `/readyz` there shows
//! dependency details only to an admin.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::limits::http::HttpLimiter;
use crate::startup::AppState;
use crate::{admin, http, publish};

/// The public router, and the admin router when admin endpoints have their own listener.
pub fn routers(
    state: &AppState,
    http_limiter: &HttpLimiter,
    separate_admin: bool,
) -> (Router, Option<Router>) {
    let config = &state.config;
    let probes = Router::new()
        .route("/metrics", get(http::metrics))
        .route("/healthz", get(http::healthz));
    let origins: Vec<HeaderValue> = config
        .server
        .cors
        .allowed_origins
        .iter()
        .filter_map(|o| o.parse().ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    // One per-IP budget covers every endpoint that runs work or checks a credential: GraphQL
    // queries, WebSocket upgrades, the key and token checks of publish and revoke (which would
    // otherwise let a key be guessed at full speed), the development sign-in, the web app's
    // files, and on the public port the probes and metrics. Only GraphiQL's static files are free.
    let limited = Router::new()
        .route(
            &config.server.graphql_path,
            get(http::graphql_get).post(http::graphql_post),
        )
        .route("/admin/revoke", post(admin::revoke))
        .route("/api/publish", post(publish::publish))
        .merge(crate::webapp::router())
        .merge(crate::devlogin::router());
    let limited = if separate_admin {
        limited
    } else {
        limited
            .merge(probes.clone())
            .route("/readyz", get(http::readyz))
    }
    .layer(http_limiter.layer());
    let main = Router::new()
        .merge(limited)
        .route("/graphiql/{file}", get(http::graphiql_asset))
        .layer(DefaultBodyLimit::max(
            config.payload.max_message_bytes.bytes(),
        ))
        .layer(cors)
        .with_state(state.clone());
    let admin = separate_admin.then(|| {
        probes
            .route("/readyz", get(http::readyz_detailed))
            .with_state(state.clone())
    });
    (main, admin)
}

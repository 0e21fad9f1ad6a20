//! Per-IP limits on HTTP requests to the GraphQL endpoint (`operations.http`): tower_governor with
//! the client IP resolved behind trusted proxies. A refusal is HTTP 429 with `Retry-After` and a
//! GraphQL-shaped body, so GraphQL clients show it like any other error.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Response, StatusCode, header};
use governor::middleware::NoOpMiddleware;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::{GovernorError, GovernorLayer};

use crate::client_ip::ClientIp;
use crate::config::HttpLimit;

type Config = GovernorConfig<ClientIp, NoOpMiddleware<governor::clock::QuantaInstant>>;

#[derive(Clone)]
pub struct HttpLimiter {
    config: Arc<Config>,
}

impl HttpLimiter {
    pub fn new(limits: &HttpLimit, client_ip: ClientIp) -> Self {
        // One request comes back every 1/per_ip_per_second; `burst` may be spent at once.
        let period = std::time::Duration::from_secs(1) / limits.per_ip_per_second.max(1);
        let config = GovernorConfigBuilder::default()
            .key_extractor(client_ip)
            .period(period)
            .burst_size(limits.burst.max(1))
            .finish()
            .expect("a non-zero period and burst make a valid quota");
        Self {
            config: Arc::new(config),
        }
    }

    pub fn layer(
        &self,
    ) -> GovernorLayer<ClientIp, NoOpMiddleware<governor::clock::QuantaInstant>, Body> {
        GovernorLayer::new(self.config.clone()).error_handler(refusal)
    }

    /// Forgets idle IPs, bounding memory however many clients come and go.
    pub fn retain_recent(&self) {
        self.config.limiter().retain_recent();
    }
}

fn refusal(error: GovernorError) -> Response<Body> {
    let (status, retry_after, message) = match error {
        GovernorError::TooManyRequests { wait_time, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            wait_time.max(1),
            "Too many requests from this address",
        ),
        GovernorError::UnableToExtractKey | GovernorError::Other { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, 0, "internal error")
        }
    };
    let code = if status == StatusCode::TOO_MANY_REQUESTS {
        "HTTP_RATE_LIMITED"
    } else {
        "INTERNAL_SERVER_ERROR"
    };
    let body = serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code, "retryAfterSeconds": retry_after } }] });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if retry_after > 0 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after.into());
    }
    response
}

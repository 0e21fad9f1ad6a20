//! The one error type of request handling, mapped once to HTTP responses and GraphQL errors.
//! What a client sees names the problem but never the internals; the internals go to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is wrong; the message is safe to show.
    #[error("{0}")]
    BadUserInput(String),
    /// No valid credentials. The message is always the same, whatever the cause.
    #[error("authentication required")]
    Unauthenticated,
    /// The request body is larger than `payload.max_message_bytes` (the limit, in bytes).
    #[error("the request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// Valid credentials, not enough rights.
    #[error("{0}")]
    Forbidden(String),
    /// A limit of hardening.yaml checked by the handler itself, answered with its own code, the
    /// limit and the measured value.
    #[error("{0}")]
    Limit(crate::limits::document::Violation),
    /// The event bus cannot take the event; nothing was published.
    #[error("the event bus is unavailable")]
    BusUnavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// The machine-readable code in `extensions.code` and in HTTP error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadUserInput(_) => "BAD_USER_INPUT",
            Error::Unauthenticated => "UNAUTHENTICATED",
            Error::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Error::Forbidden(_) => "FORBIDDEN",
            Error::Limit(violation) => violation.code,
            Error::BusUnavailable(_) => "BUS_UNAVAILABLE",
            Error::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Error::BadUserInput(_) => StatusCode::BAD_REQUEST,
            Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Limit(_) => StatusCode::BAD_REQUEST,
            Error::BusUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn log(&self) {
        match self {
            Error::BusUnavailable(cause) | Error::Internal(cause) => {
                tracing::error!(error = ?cause, code = self.code(), "request failed");
            }
            _ => {}
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log();
        // GraphQL-shaped, so GraphQL clients surface the message and code like any other error.
        let mut extensions = serde_json::json!({ "code": self.code() });
        if let Error::Limit(violation) = &self {
            extensions["limit"] = violation.limit.into();
            extensions["measured"] = violation.measured.into();
        }
        let body = serde_json::json!({ "errors": [{ "message": self.to_string(), "extensions": extensions }] });
        (self.status(), Json(body)).into_response()
    }
}

/// Resolvers return `Err(error.extend())`: async-graphql's blanket `From<Display>` would drop the
/// code, so the conversion is spelled out.
impl async_graphql::ErrorExtensions for Error {
    fn extend(&self) -> async_graphql::Error {
        self.log();
        let mut error = async_graphql::Error::new(self.to_string());
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", self.code());
        if let Error::Limit(violation) = self {
            let extensions = error.extensions.get_or_insert_with(Default::default);
            extensions.set("limit", violation.limit);
            extensions.set("measured", violation.measured);
        }
        error
    }
}

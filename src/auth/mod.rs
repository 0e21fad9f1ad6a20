//! Who is on the other end: credentials presented at `connection_init` (or on an HTTP request)
//! become an [`Identity`], or a refusal whose real cause goes to the audit trail only.

mod cookie;
pub mod jwt;
pub mod keys;
pub mod secret;
pub mod session;

use axum::http::HeaderMap;
use serde_json::{Map, Value};

pub use jwt::Verifier;
pub use session::{SessionError, SessionStore};

/// How a connection proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Jwt,
    Session,
    /// The API key of `POST /api/publish`; never a WebSocket connection.
    ApiKey,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Jwt => "jwt",
            Method::Session => "session",
            Method::ApiKey => "api_key",
        }
    }
}

/// An authenticated user, visible to resolvers through the request data. A connection holds one
/// behind an `Arc` that all its operations share.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub user_id: String,
    /// The token's claims; for a session, the session's fields with `sub` set to the user.
    pub claims: Map<String, Value>,
    pub method: Method,
    /// When the credentials stop being valid (`exp`, or the session row's `expire`).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The session id, for re-validation and revocation. Never logged.
    pub session_id: Option<String>,
}

impl Identity {
    /// The claims `me { claims }` shows: a token's are the client's own and shown whole; a
    /// session's `sess` is the Express app's private state (a CSRF secret, say), so only `sub` and
    /// the fields of `auth.session.expose_claims` are shown.
    pub fn shown_claims(&self, expose: &[String]) -> Map<String, Value> {
        match self.method {
            Method::Session => self
                .claims
                .iter()
                .filter(|(name, _)| *name == "sub" || expose.contains(name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            Method::Jwt | Method::ApiKey => self.claims.clone(),
        }
    }

    /// Whether `other` is granted exactly what this identity is: same user, method and claims.
    /// Deadlines may differ.
    pub fn grants_same(&self, other: &Identity) -> bool {
        self.user_id == other.user_id && self.method == other.method && self.claims == other.claims
    }
}

/// Why credentials were refused. Clients are told only "Forbidden".
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    #[error("no credentials presented")]
    Missing,
    #[error(transparent)]
    Token(#[from] jwt::TokenError),
    #[error(transparent)]
    Session(#[from] session::SessionError),
    #[error("the session has no logged-in user")]
    AnonymousSession,
    /// The token's claims are larger than `auth.max_claims_bytes`; refused before they are
    /// decoded, so nothing holds them. (A session's are refused as [`SessionError::TooLarge`].)
    #[error("the token's claims take {bytes} bytes, over the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
}

impl AuthFailure {
    /// A short, low-cardinality cause for metrics and audit rows.
    pub fn cause(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Token(error) => error.cause(),
            AuthFailure::Session(e) => e.cause(),
            AuthFailure::AnonymousSession => "anonymous_session",
            AuthFailure::TooLarge { .. } => "claims_too_large",
        }
    }

    /// The `auth.max_claims_bytes` the credentials exceeded, if that is why they were refused.
    pub fn exceeded_limit(&self) -> Option<usize> {
        match self {
            AuthFailure::TooLarge { limit, .. }
            | AuthFailure::Session(SessionError::TooLarge { limit, .. }) => Some(*limit),
            _ => None,
        }
    }
}

/// Checks credentials against the configured keys and `auth.required`.
#[derive(Clone)]
pub struct Authenticator {
    verifier: Verifier,
    required: bool,
    /// `auth.max_claims_bytes`.
    max_claims_bytes: usize,
    /// Express session cookies; `None` when no cookie secrets are configured.
    sessions: Option<SessionStore>,
}

impl Authenticator {
    pub fn new(
        verifier: Verifier,
        config: &crate::config::Auth,
        sessions: Option<SessionStore>,
    ) -> Self {
        let max_claims_bytes = config.max_claims_bytes.bytes();
        Self {
            verifier,
            required: config.required,
            max_claims_bytes,
            sessions: sessions.map(|store| store.limit_claims(max_claims_bytes)),
        }
    }

    pub fn sessions(&self) -> Option<&SessionStore> {
        self.sessions.as_ref()
    }

    /// Authenticates a WebSocket: a token from the `connection_init` payload, else the upgrade
    /// request's `Authorization` header, else its `access_token` query parameter (passed only when
    /// `auth.jwt.allow_query_token` is on), else the upgrade's session cookie. `Ok(None)` is an
    /// accepted anonymous connection.
    pub async fn connection(
        &self,
        init_payload: Option<&Value>,
        upgrade_headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Option<Identity>, AuthFailure> {
        let token = init_payload
            .and_then(token_from_payload)
            .or_else(|| token_from_headers(upgrade_headers))
            .or_else(|| query_token.map(str::to_string));
        if let Some(token) = token {
            return self.token(&token).map(Some);
        }
        let cookie = match &self.sessions {
            Some(store) => store.authenticate_headers(upgrade_headers).await,
            None => None,
        };
        match cookie {
            Some(session) => match session?.identity() {
                Some(identity) => Ok(Some(identity)),
                None if self.required => Err(AuthFailure::AnonymousSession),
                None => Ok(None),
            },
            None if self.required => Err(AuthFailure::Missing),
            None => Ok(None),
        }
    }

    /// Authenticates a plain HTTP request by its `Authorization` header.
    pub fn http(&self, headers: &HeaderMap) -> Result<Option<Identity>, AuthFailure> {
        match token_from_headers(headers) {
            Some(token) => self.token(&token).map(Some),
            None if self.required => Err(AuthFailure::Missing),
            None => Ok(None),
        }
    }

    /// The identity a valid token carries (also used by `refreshAuth`).
    pub fn token(&self, token: &str) -> Result<Identity, AuthFailure> {
        let bytes = payload_bytes(token);
        if bytes > self.max_claims_bytes {
            return Err(AuthFailure::TooLarge {
                bytes,
                limit: self.max_claims_bytes,
            });
        }
        let verified = self.verifier.verify(token)?;
        let user_id = verified
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(Identity {
            user_id,
            claims: verified.claims,
            method: Method::Jwt,
            expires_at: Some(verified.expires_at),
            session_id: None,
        })
    }
}

/// How many bytes a token's claims decode to, from the length of its payload segment alone, so an
/// oversized token is refused before anything is decoded or verified.
fn payload_bytes(token: &str) -> usize {
    // Unpadded base64url carries 3 bytes in every 4 characters (exact for a well-formed segment).
    token.split('.').nth(1).unwrap_or_default().len() * 3 / 4
}

fn token_from_payload(payload: &Value) -> Option<String> {
    let object = payload.as_object()?;
    let field = |name: &str| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    };
    field("authorization")
        .map(strip_bearer)
        .or_else(|| field("token").map(str::to_string))
}

fn token_from_headers(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()
        .map(strip_bearer)
}

fn strip_bearer(value: &str) -> String {
    let value = value.trim();
    match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => value[7..].trim().to_string(),
        _ => value.to_string(),
    }
}

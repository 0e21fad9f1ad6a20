//! The `server` and `auth` sections of hardening.yaml.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::units::{ByteSize, Duration};

/// Where Palisade listens and how it shuts down.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// Address of the public listener (HTTP, GraphQL and WebSocket). Default `0.0.0.0:8080`.
    /// Changing it needs a restart.
    pub listen: SocketAddr,
    /// Path of the GraphQL endpoint: `POST`/`GET` queries, the WebSocket upgrade, and GraphiQL for
    /// browsers. Default `/graphql`. Plain segments only (letters, digits, `-._~`; no `{…}`, `:…`
    /// or `*…` parameters), and not under the server's own `/metrics`, `/healthz`, `/readyz`,
    /// `/graphiql`, `/admin`, `/api`, `/app` or `/auth`.
    #[validate(custom(function = "super::checks::graphql_path"))]
    pub graphql_path: String,
    /// Separate listener for `/metrics`, `/healthz` and `/readyz`, so they can stay off the public
    /// port. Unset (the default): they are served on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// How many connections the kernel may hold for `listen` (and `admin_listen`) whose TCP
    /// handshake is done but which the server has not accepted yet. Default `4096`, from `1` to
    /// `65535`. When it is full the kernel drops further handshakes, and each client waits for its
    /// own SYN retry (1 s, then 3, 7, 15 s later): after a deploy cuts 10k clients off at once,
    /// a short queue turns a one-second reconnect into a twenty-second one. Linux silently caps it
    /// at `net.core.somaxconn` (4096 by default since 5.4); the server logs a warning at startup
    /// when the setting is above that cap. Read at startup.
    #[validate(range(min = 1, max = 65535))]
    pub listen_backlog: u32,
    /// How long a shutdown (SIGTERM, ctrl-c) waits for in-flight HTTP requests and for WebSocket
    /// close frames and connection-log rows to be written. Default `30s`; whatever is still running
    /// after it is dropped.
    #[validate(range(max = Duration::mins(10)))]
    pub shutdown_grace: Duration,
    /// Over how long a shutdown spreads the closing of WebSockets: each connection closes with
    /// 1001 at its own random moment within the period, so the clients of a stopping instance
    /// reconnect to the others a few at a time instead of all in the same second. Default `10s`;
    /// `0s` closes them all at once. The spread counts against `shutdown_grace`, so at most half
    /// of it is used (a `shutdown_grace: 2s` spreads over 1s), leaving the last connections time
    /// to send their close and write their rows. Read at startup.
    #[validate(range(max = Duration::mins(10)))]
    pub drain_period: Duration,
    /// Reverse proxies (addresses like `10.0.0.5` or networks like `10.0.0.0/8`) whose
    /// `X-Forwarded-For` hops are believed. Default `[]`: the client IP is always the socket's peer,
    /// and the header is ignored (a client can write anything into it). With proxies listed, a
    /// request from one of them is attributed to the rightmost hop that is not a listed proxy.
    #[validate(custom(function = "super::checks::networks"))]
    pub trusted_proxies: Vec<String>,
    /// Cross-origin rules for the HTTP endpoints.
    #[validate(nested)]
    pub cors: Cors,
    /// Native TLS (wss:// and https://) on `listen`. Unset (the default): plain TCP, for use behind
    /// a TLS-terminating proxy. SIGHUP reloads the certificate and key from the same files;
    /// turning TLS on or off needs a restart.
    pub tls: Option<Tls>,
}

/// PEM files for native TLS.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Server {
    /// The period closes are actually spread over: `drain_period`, but at most half of
    /// `shutdown_grace`.
    pub fn drain(&self) -> std::time::Duration {
        self.drain_period.get().min(self.shutdown_grace.get() / 2)
    }
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            graphql_path: "/graphql".into(),
            admin_listen: None,
            listen_backlog: 4096,
            shutdown_grace: Duration::secs(30),
            drain_period: Duration::secs(10),
            trusted_proxies: Vec::new(),
            tls: None,
            cors: Cors::default(),
        }
    }
}

/// CORS for the HTTP endpoints.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Cors {
    /// Origins (scheme://host[:port], exact match) whose browser pages may call the HTTP endpoints.
    /// Default `[http://localhost:5173, http://localhost:8080]`. Other origins get no CORS headers,
    /// so the browser blocks the response.
    #[validate(custom(function = "super::checks::origins"))]
    pub allowed_origins: Vec<String>,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            allowed_origins: vec![
                "http://localhost:5173".into(),
                "http://localhost:8080".into(),
            ],
        }
    }
}

/// Who may connect, and how credentials are checked at `connection_init`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Whether a connection must present valid credentials. Default `true`. When `false`, a
    /// connection without credentials is accepted as anonymous; invalid credentials are still
    /// refused (close 4403).
    pub required: bool,
    /// How long a client has, after the upgrade, to send `connection_init`. Default `10s`; a client
    /// that is later is closed with 4408.
    #[validate(range(min = Duration::secs(1), max = Duration::mins(5)))]
    pub connection_init_timeout: Duration,
    /// Origins allowed to open a WebSocket (exact match). Unset (the default): the same list as
    /// `server.cors.allowed_origins`. An upgrade from another origin gets HTTP 403 before the
    /// handshake, and is audited as `origin_rejected`.
    #[validate(custom(function = "super::checks::origins"))]
    pub allowed_origins: Option<Vec<String>>,
    /// Which upgrades must come from an allowed origin. Default `with_cookie`: every upgrade that
    /// carries a cookie (cross-site WebSocket hijacking rides on cookies). `always`: token-only
    /// clients too, so a client without an `Origin` header is refused.
    pub check_origin: OriginCheck,
    /// Role (in the roles claim, `topics.roles_claim`) allowed to call `POST /admin/revoke`.
    /// Default `admin`.
    #[validate(length(min = 1))]
    pub admin_role: String,
    /// JSON Web Tokens.
    #[validate(nested)]
    pub jwt: Jwt,
    /// Express-style signed session cookies, looked up in the session table.
    #[validate(nested)]
    pub session: Session,
    /// Name of the environment variable holding the API key of `POST /api/publish` (sent as
    /// `Authorization: Bearer <key>`). Default `PALISADE_PUBLISH_KEY`. When it is unset, that
    /// endpoint answers 403 and backends publish with a service token or a plain `XADD`. The
    /// key acts as a caller with the role `service` under the topic rules. Read at startup.
    #[validate(length(min = 1))]
    pub publish_key_env: String,
    /// Development sign-in for the web app: `POST /auth/dev-token` mints a JWT for any user, and
    /// `POST /auth/dev-login` writes a session row and sets the signed session cookie (needs the
    /// secrets of `auth.session.secrets_env`). Default `false`. Anyone who reaches the server can
    /// then act as anyone, so `check-config` refuses it together with `server.tls` or
    /// `server.admin_listen` (a configuration that looks like production).
    pub dev_login: bool,
    /// Largest claim set a connection or request may authenticate with: a token's decoded payload,
    /// or a session's `sess` as stored. Default `16KiB`, from `1KiB` to `1MiB`. Larger credentials
    /// are refused before they are parsed (close 4400 `Credentials too large` at
    /// `connection_init`, `UNAUTHENTICATED` over HTTP), and a session that grows past it closes
    /// its connections at the next re-check. Read at startup.
    #[validate(range(min = ByteSize::kib(1), max = ByteSize::mib(1)))]
    pub max_claims_bytes: ByteSize,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            required: true,
            connection_init_timeout: Duration::secs(10),
            allowed_origins: None,
            check_origin: OriginCheck::WithCookie,
            admin_role: "admin".into(),
            jwt: Jwt::default(),
            session: Session::default(),
            publish_key_env: "PALISADE_PUBLISH_KEY".into(),
            dev_login: false,
            max_claims_bytes: ByteSize::kib(16),
        }
    }
}

/// Which WebSocket upgrades are held to `auth.allowed_origins`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OriginCheck {
    /// Upgrades that carry a cookie.
    WithCookie,
    /// Every upgrade.
    Always,
}

/// JWT verification.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Jwt {
    /// Accepted signing algorithms. Default `[HS256]`. `none` is never accepted; a token signed with
    /// any other algorithm is refused (close 4403).
    #[validate(length(min = 1), custom(function = "super::checks::algorithms"))]
    pub algorithms: Vec<String>,
    /// Name of the environment variable holding the HMAC secret. Default `PALISADE_JWT_SECRET`. A
    /// value that is blank or shorter than 32 bytes is refused at startup. When it is unset, a
    /// development-only secret is generated and kept in `.palisade/dev-secret` (mode 600); an
    /// existing one is refused at startup when others may read it, it is not a regular file (a
    /// symlink, say), or it holds fewer than 32 bytes.
    pub secret_env: String,
    /// PEM file with a public key (RS256, ES256, EdDSA). Unset by default.
    pub public_key_file: Option<PathBuf>,
    /// JWKS file whose keys are selected by `kid`. Unset by default.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim. Unset (the default): not checked.
    pub issuer: Option<String>,
    /// Required `aud` claim. Unset (the default): not checked.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`. Default `30s`.
    #[validate(range(max = Duration::mins(10)))]
    pub leeway: Duration,
    /// How long before `exp` a live connection is told its token is expiring (a `TOKEN_EXPIRING`
    /// notice). Default `60s`. Without a `refreshAuth`, the connection is closed with 4403 at
    /// `exp` + `leeway`.
    #[validate(range(max = Duration::hours(1)))]
    pub expiry_warning: Duration,
    /// Whether a WebSocket may pass its token as the `access_token` query parameter. Default
    /// `false`: URLs end up in proxy and access logs.
    pub allow_query_token: bool,
}

impl Default for Jwt {
    fn default() -> Self {
        Self {
            algorithms: vec!["HS256".into()],
            secret_env: "PALISADE_JWT_SECRET".into(),
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::secs(30),
            expiry_warning: Duration::secs(60),
            allow_query_token: false,
        }
    }
}

/// Express session cookies (express-session + connect-pg-simple).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Session {
    /// Name of the session cookie. Default `connect.sid`.
    #[validate(length(min = 1))]
    pub cookie_name: String,
    /// Name of the environment variable holding the cookie secrets, comma-separated, newest first
    /// (every one is tried, for rotation). Default `PALISADE_SESSION_SECRETS`. Unset variable:
    /// cookie authentication is off.
    pub secrets_env: String,
    /// Session table (connect-pg-simple shape). Default `session`.
    #[validate(custom(function = "super::checks::sql_identifier"))]
    pub table: String,
    /// JSON pointer to the user id inside the session's `sess` column. Default `/passport/user`.
    #[validate(custom(function = "super::checks::json_pointer"))]
    pub user_pointer: String,
    /// How often a live connection's session is re-checked. Default `5m`; a session found deleted or
    /// expired closes the connection with 4403.
    #[validate(range(min = Duration::secs(1), max = Duration::days(1)))]
    pub revalidate_every: Duration,
    /// A live session closer than this to its expiry is extended by its original lifetime.
    /// Default `5m`.
    #[validate(range(max = Duration::days(30)))]
    pub refresh_within: Duration,
    /// Top-level fields of the session's `sess` object that `me { claims }` shows to a session
    /// connection, besides `sub` (the user id). Default `[]`: nothing else, because `sess` is the
    /// Express app's own state and may hold secrets (a CSRF secret, say). At most 64 names. Topic
    /// rules still see every field. Token connections always see their token's claims.
    #[validate(length(max = 64))]
    pub expose_claims: Vec<String>,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            cookie_name: "connect.sid".into(),
            secrets_env: "PALISADE_SESSION_SECRETS".into(),
            table: "session".into(),
            user_pointer: "/passport/user".into(),
            revalidate_every: Duration::secs(300),
            refresh_within: Duration::secs(300),
            expose_claims: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_over_the_drain_period_but_at_most_half_the_shutdown_grace() {
        let mut server = Server::default();
        assert_eq!(server.drain(), std::time::Duration::from_secs(10));
        server.shutdown_grace = Duration::secs(2);
        assert_eq!(server.drain(), std::time::Duration::from_secs(1));
        server.drain_period = Duration::secs(0);
        assert_eq!(server.drain(), std::time::Duration::ZERO);
    }
}

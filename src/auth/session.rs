//! Express session cookies (express-session + connect-pg-simple), accepted as the Express app
//! issues them.
//!
//! The cookie (default `connect.sid`) holds `encodeURIComponent('s:' + sid + '.' + sig)`, where
//! `sig` is HMAC-SHA256(secret, sid) in standard base64 without `=` padding (cookie-signature).
//! The value is percent-decoded, must start with `s:`, and is split at its last `.`. Every secret
//! from the `auth.session.secrets_env` variable (comma-separated, newest first) is tried, so a
//! rotated secret keeps working while it is still listed; tags are compared in constant time.
//!
//! The session itself is the connect-pg-simple row `(sid, sess json, expire timestamp)` in
//! `auth.session.table`. `expire` has no time zone and is UTC. A row that is missing or whose
//! `expire` is in the past is refused. The user is the string or number at `auth.session.user_pointer`
//! (default `/passport/user`) inside `sess`; with nothing there the session is anonymous (passport
//! removes the user on logout), and the caller decides whether that is acceptable. A `sess` larger
//! than `auth.max_claims_bytes` is refused before it is parsed.
//!
//! Live connections re-check their session with [`SessionStore::recheck`], whose `sess` replaces
//! the connection's claims, and slide it forward with
//! [`SessionStore::extend`], which writes only `expire`, exactly as express-session's `touch` through
//! connect-pg-simple does: now + `sess.cookie.originalMaxAge` (ms), or connect-pg-simple's default
//! of one day when the cookie has no max age.
//!
//! Cookies, session ids, session contents and secrets never appear in errors or logs: errors reach
//! audit rows, so they carry only a low-cardinality [`SessionError::cause`].

use std::fmt;
use std::sync::Arc;

use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDateTime, SubsecRound, TimeDelta, Utc};
use serde_json::{Map, Value};
use sqlx::AssertSqlSafe;

use super::cookie::unsign;
pub use super::cookie::{cookie_value, sign};
use super::{Identity, Method};
use crate::config::Session as SessionConfig;
use crate::db::Database;
use crate::on_pool;

/// connect-pg-simple's `ttl` when the session cookie has no max age (a browser-session cookie).
pub const DEFAULT_TTL: TimeDelta = TimeDelta::seconds(86_400);

/// Why a session cookie was refused. The messages never contain the cookie, the session id, the
/// session's contents or a secret.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Not a signed express-session cookie: bad encoding, no `s:` prefix, no signature.
    #[error("session cookie is malformed")]
    Malformed,
    /// Well formed, but no configured secret produced its signature.
    #[error("session cookie signature matches no configured secret")]
    BadSignature,
    /// No session row with that id (never existed, destroyed, or pruned).
    #[error("session not found")]
    Missing,
    /// The session row's `expire` is in the past.
    #[error("session expired")]
    Expired,
    /// The row exists but `sess` is not a JSON object, or its lifetime is out of range.
    #[error("session row is corrupt")]
    Corrupt,
    /// `sess` is larger than `auth.max_claims_bytes`; refused before it is parsed.
    #[error("the session takes {bytes} bytes, over the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    /// The session table could not be read or written.
    #[error("session store query failed: {0}")]
    Database(#[source] sqlx::Error),
}

impl SessionError {
    /// A short, low-cardinality cause for metrics and audit rows.
    pub fn cause(&self) -> &'static str {
        match self {
            SessionError::Malformed => "malformed_cookie",
            SessionError::BadSignature => "bad_signature",
            SessionError::Missing => "session_missing",
            SessionError::Expired => "session_expired",
            SessionError::Corrupt => "session_corrupt",
            SessionError::TooLarge { .. } => "claims_too_large",
            SessionError::Database(_) => "database",
        }
    }
}

/// A live session row, as found by [`SessionStore::authenticate`], [`SessionStore::lookup`] or
/// [`SessionStore::recheck`].
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id (the cookie's unsigned value). Never logged.
    pub sid: String,
    /// The user at the configured pointer; `None` for an anonymous (or logged-out) session.
    pub user_id: Option<String>,
    /// The row's `expire`.
    pub expire: DateTime<Utc>,
    /// How far [`SessionStore::extend`] moves `expire`: the cookie's `originalMaxAge`, else one day.
    pub lifetime: TimeDelta,
    /// The `sess` object.
    pub data: Map<String, Value>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("expire", &self.expire)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn is_anonymous(&self) -> bool {
        self.user_id.is_none()
    }

    /// The identity of a logged-in session: the `sess` fields with `sub` set to the user.
    /// `None` when the session is anonymous.
    pub fn identity(&self) -> Option<Identity> {
        let user_id = self.user_id.clone()?;
        let mut claims = self.data.clone();
        claims.insert("sub".into(), Value::String(user_id.clone()));
        Some(Identity {
            user_id,
            claims,
            method: Method::Session,
            expires_at: Some(self.expire),
            session_id: Some(self.sid.clone()),
        })
    }
}

/// What a re-check of a live connection's session found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Still valid, with a user: the row as it is now, whose `sess` replaces the connection's
    /// claims. The caller compares its user with the connection's.
    Active(Session),
    /// The row is gone: the user logged out (`req.session.destroy()`) or it was pruned.
    Missing,
    /// The row's `expire` is in the past.
    Expired,
    /// The row exists but the user pointer is gone (`req.logout()` keeping the session).
    LoggedOut,
}

impl Status {
    /// A short, low-cardinality cause for metrics, audit rows and close reasons.
    pub fn cause(&self) -> &'static str {
        match self {
            Status::Active(_) => "active",
            Status::Missing => "session_missing",
            Status::Expired => "session_expired",
            Status::LoggedOut => "session_logged_out",
        }
    }
}

/// Verifies session cookies and reads, re-checks and extends session rows.
#[derive(Clone)]
pub struct SessionStore {
    db: Database,
    secrets: Arc<[Vec<u8>]>,
    cookie_name: String,
    user_pointer: String,
    /// `auth.max_claims_bytes`: the largest `sess` read.
    max_sess_bytes: usize,
    select_sql: Arc<str>,
    touch_sql: Arc<str>,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("cookie_name", &self.cookie_name)
            .field("secrets", &self.secrets.len())
            .field("user_pointer", &self.user_pointer)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    /// The cookie secrets from the environment variable named by `secrets_env`, newest first;
    /// empty when it is unset, not UTF-8 or blank (cookie authentication is then off).
    pub fn secrets_from_env(config: &SessionConfig) -> Vec<String> {
        match std::env::var(&config.secrets_env) {
            Ok(raw) => parse_secrets(&raw),
            Err(std::env::VarError::NotPresent) => Vec::new(),
            Err(std::env::VarError::NotUnicode(_)) => {
                tracing::warn!(
                    variable = %config.secrets_env,
                    "session secrets are not valid UTF-8; cookie authentication is off"
                );
                Vec::new()
            }
        }
    }

    /// The store with explicit secrets, newest first. With no secret every cookie is refused.
    pub fn with_secrets<S: AsRef<[u8]>>(
        config: &SessionConfig,
        db: Database,
        secrets: impl IntoIterator<Item = S>,
    ) -> Self {
        // The table name is checked as a plain identifier by the config; quote it anyway (and
        // escape quotes) so it is always one identifier. connect-pg-simple quotes it the same way.
        let table = format!("\"{}\"", config.table.replace('"', "\"\""));
        Self {
            db,
            secrets: secrets.into_iter().map(|s| s.as_ref().to_vec()).collect(),
            cookie_name: config.cookie_name.clone(),
            user_pointer: config.user_pointer.clone(),
            max_sess_bytes: crate::config::Auth::default().max_claims_bytes.bytes(),
            select_sql: format!("SELECT CAST(sess AS TEXT), expire FROM {table} WHERE sid = $1")
                .into(),
            touch_sql: format!("UPDATE {table} SET expire = $1 WHERE sid = $2").into(),
        }
    }

    /// Refuses sessions whose `sess` takes more than `bytes` (`auth.max_claims_bytes`).
    pub fn limit_claims(mut self, bytes: usize) -> Self {
        self.max_sess_bytes = bytes;
        self
    }

    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The session id inside a cookie value (URL-encoded, as sent by the browser), when its
    /// signature matches one of the secrets.
    pub fn unsign(&self, cookie_value: &str) -> Result<String, SessionError> {
        unsign(cookie_value, &self.secrets)
    }

    /// Verifies the session cookie in `headers` and loads its session. `None` when the request
    /// carries no such cookie.
    pub async fn authenticate_headers(
        &self,
        headers: &HeaderMap,
    ) -> Option<Result<Session, SessionError>> {
        let value = cookie_value(headers, &self.cookie_name)?;
        Some(self.authenticate(&value).await)
    }

    /// Verifies a cookie value and loads its session: refused when the signature does not match,
    /// the row is missing or it has expired. An anonymous session is returned as such.
    pub async fn authenticate(&self, cookie_value: &str) -> Result<Session, SessionError> {
        let sid = self.unsign(cookie_value)?;
        self.lookup(&sid).await
    }

    /// Loads the live session `sid`.
    #[tracing::instrument(skip_all)]
    pub async fn lookup(&self, sid: &str) -> Result<Session, SessionError> {
        let (sess, expire) = self.fetch(sid).await?.ok_or(SessionError::Missing)?;
        let expire = expire.and_utc();
        if expire < Utc::now() {
            return Err(SessionError::Expired);
        }
        self.read(sid, &sess, expire)
    }

    /// Re-checks a live connection's session. Only a failed query, a corrupt row or a `sess` over
    /// the size limit is an error.
    #[tracing::instrument(skip_all)]
    pub async fn recheck(&self, sid: &str) -> Result<Status, SessionError> {
        let Some((sess, expire)) = self.fetch(sid).await? else {
            return Ok(Status::Missing);
        };
        let expire = expire.and_utc();
        if expire < Utc::now() {
            return Ok(Status::Expired);
        }
        let session = self.read(sid, &sess, expire)?;
        Ok(match session.user_id {
            Some(_) => Status::Active(session),
            None => Status::LoggedOut,
        })
    }

    /// A live row as a [`Session`]; its size is checked before it is parsed.
    fn read(&self, sid: &str, sess: &str, expire: DateTime<Utc>) -> Result<Session, SessionError> {
        if sess.len() > self.max_sess_bytes {
            return Err(SessionError::TooLarge {
                bytes: sess.len(),
                limit: self.max_sess_bytes,
            });
        }
        let data = parse_sess(sess)?;
        Ok(Session {
            sid: sid.to_string(),
            user_id: user_id(&data, &self.user_pointer),
            expire,
            lifetime: lifetime(&data),
            data,
        })
    }

    /// Slides a live session forward as express-session's `touch` through connect-pg-simple does:
    /// `expire` becomes now + `lifetime` ([`Session::lifetime`])
    /// and nothing else changes. Returns the new `expire` (whole microseconds, as stored).
    /// `Missing` when the row is gone. Call it only for a session just found live: like
    /// connect-pg-simple, it does not check whether the row has expired meanwhile.
    #[tracing::instrument(skip_all)]
    pub async fn extend(
        &self,
        sid: &str,
        lifetime: TimeDelta,
    ) -> Result<DateTime<Utc>, SessionError> {
        let expire = Utc::now()
            .trunc_subsecs(6)
            .checked_add_signed(lifetime)
            .ok_or(SessionError::Corrupt)?;
        let sql = AssertSqlSafe(self.touch_sql.clone());
        let updated = on_pool!(&self.db, |pool| {
            sqlx::query(sql)
                .bind(expire.naive_utc())
                .bind(sid)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(SessionError::Database)?;
        if updated == 0 {
            return Err(SessionError::Missing);
        }
        Ok(expire)
    }

    async fn fetch(&self, sid: &str) -> Result<Option<(String, NaiveDateTime)>, SessionError> {
        let sql = AssertSqlSafe(self.select_sql.clone());
        on_pool!(&self.db, |pool| {
            sqlx::query_as::<_, (String, NaiveDateTime)>(sql)
                .bind(sid)
                .fetch_optional(pool)
                .await
        })
        .map_err(SessionError::Database)
    }
}

/// Splits the secrets variable: comma-separated, each trimmed, empty entries ignored.
fn parse_secrets(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_sess(sess: &str) -> Result<Map<String, Value>, SessionError> {
    match serde_json::from_str(sess) {
        Ok(Value::Object(data)) => Ok(data),
        _ => Err(SessionError::Corrupt),
    }
}

/// The user at `pointer`: a non-empty string, or a number written out. Anything else (absent,
/// null, an object) is no user.
fn user_id(data: &Map<String, Value>, pointer: &str) -> Option<String> {
    let rest = pointer.strip_prefix('/')?;
    let (first, rest) = match rest.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (rest, None),
    };
    let first = first.replace("~1", "/").replace("~0", "~");
    let top = data.get(&first)?;
    let value = match rest {
        Some(rest) => top.pointer(&format!("/{rest}"))?,
        None => top,
    };
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The session's original lifetime: `cookie.originalMaxAge` milliseconds when it is a positive
/// number, else connect-pg-simple's default ttl (a cookie without max age, or a value Express
/// would never have produced a live row for).
fn lifetime(data: &Map<String, Value>) -> TimeDelta {
    let max_age = data
        .get("cookie")
        .and_then(|cookie| cookie.get("originalMaxAge"))
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)));
    match max_age {
        Some(ms) if ms > 0 => TimeDelta::try_milliseconds(ms).unwrap_or(TimeDelta::MAX),
        _ => DEFAULT_TTL,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

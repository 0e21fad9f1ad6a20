//! Development sign-in for the web app (`auth.dev_login`, off by default; `check-config` refuses
//! it next to `server.tls` or `server.admin_listen`). `POST /auth/dev-token` mints a JWT for any
//! user with the configured HMAC secret. `POST /auth/dev-login` signs in as an Express app would:
//! it writes a connect-pg-simple session row and sets the signed `connect.sid` cookie, so the
//! cookie path of the WebSocket is exercised exactly as in production. `GET /auth/dev` tells the
//! app which of the two are available; with `dev_login` off all three answer 404.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{SubsecRound, TimeDelta, Utc};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::AssertSqlSafe;

use crate::auth::jwt;
use crate::auth::secret::HmacSecret;
use crate::auth::session;
use crate::config::Config;
use crate::db::Database;
use crate::error::Error;
use crate::startup::AppState;

/// How long a development token or session lasts.
const LIFETIME: TimeDelta = TimeDelta::hours(24);

pub struct DevLogin {
    secret: HmacSecret,
    jwt: crate::config::Jwt,
    /// Present when cookie authentication is on (session secrets are set).
    cookies: Option<Cookies>,
}

struct Cookies {
    db: Database,
    /// express-session signs with the newest secret.
    secret: String,
    name: String,
    table: String,
}

impl DevLogin {
    /// `None` unless `auth.dev_login` is on.
    pub fn new(
        config: &Config,
        secret: &HmacSecret,
        session_secrets: &[String],
        db: &Database,
    ) -> Option<Arc<Self>> {
        if !config.auth.dev_login {
            return None;
        }
        tracing::warn!("auth.dev_login is on: anyone reaching this server can sign in as anyone");
        let cookies = session_secrets.first().map(|newest| Cookies {
            db: db.clone(),
            secret: newest.clone(),
            name: config.auth.session.cookie_name.clone(),
            table: format!("\"{}\"", config.auth.session.table.replace('"', "\"\"")),
        });
        Some(Arc::new(Self {
            secret: secret.clone(),
            jwt: config.auth.jwt.clone(),
            cookies,
        }))
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/dev", get(info))
        .route("/auth/dev-token", post(token))
        .route("/auth/dev-login", post(login))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Who {
    user: String,
    /// Extra JWT claims (`roles`, `conversations`…); tokens only.
    #[serde(default)]
    claims: Map<String, Value>,
}

impl Who {
    fn check(&self) -> Result<(), Error> {
        let ok = (1..=128).contains(&self.user.chars().count())
            && !self.user.chars().any(char::is_control);
        ok.then_some(())
            .ok_or_else(|| Error::BadUserInput("user must be 1 to 128 characters".into()))
    }
}

async fn info(State(state): State<AppState>) -> Response {
    match &state.dev_login {
        Some(dev) => {
            Json(json!({ "token": true, "cookie": dev.cookies.is_some() })).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn token(State(state): State<AppState>, Json(who): Json<Who>) -> Response {
    let Some(dev) = &state.dev_login else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Err(error) = who.check() {
        return error.into_response();
    }
    let ttl = Duration::from_secs(LIFETIME.num_seconds().unsigned_abs());
    match jwt::mint(&dev.secret, &dev.jwt, &who.user, who.claims, ttl) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(error) => Error::Internal(error).into_response(),
    }
}

async fn login(State(state): State<AppState>, Json(who): Json<Who>) -> Response {
    let Some(dev) = &state.dev_login else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Err(error) = who.check() {
        return error.into_response();
    }
    let Some(cookies) = &dev.cookies else {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": "cookie authentication is off: set the session secrets (auth.session.secrets_env)" })),
        )
            .into_response();
    };
    match cookies.write_session(&who.user).await {
        Ok(set_cookie) => {
            let mut response = Json(json!({ "user": who.user })).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, set_cookie);
            response
        }
        Err(error) => Error::Internal(error).into_response(),
    }
}

impl Cookies {
    /// Writes the row express-session + passport + connect-pg-simple would, and returns the
    /// `Set-Cookie` value that names it.
    async fn write_session(&self, user: &str) -> anyhow::Result<HeaderValue> {
        let mut raw = [0u8; 24];
        rand::rng().fill_bytes(&mut raw);
        let sid = URL_SAFE_NO_PAD.encode(raw);
        let expire = Utc::now().trunc_subsecs(3) + LIFETIME;
        let sess = json!({
            "cookie": {
                "originalMaxAge": LIFETIME.num_milliseconds(),
                "expires": expire.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "httpOnly": true,
                "path": "/",
                "sameSite": "lax",
            },
            "passport": { "user": user },
        })
        .to_string();
        let table = &self.table;
        // PostgreSQL's `sess` column is `json`, which a text parameter must be cast to; SQLite
        // stores the text as it is.
        let cast = match &self.db {
            Database::Postgres(_) => "::json",
            Database::Sqlite(_) => "",
        };
        let sql = format!("INSERT INTO {table} (sid, sess, expire) VALUES ($1, $2{cast}, $3)");
        crate::on_pool!(&self.db, |pool| {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(&sid)
                .bind(&sess)
                .bind(expire.naive_utc())
                .execute(pool)
                .await
                .map(drop)
        })?;
        let value = encode_uri_component(&session::sign(&sid, &self.secret));
        let cookie = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
            self.name,
            LIFETIME.num_seconds()
        );
        Ok(HeaderValue::from_str(&cookie)?)
    }
}

/// JavaScript's `encodeURIComponent`, as the `cookie` package applies it to express-session's value.
fn encode_uri_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => out.push(byte as char),
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_value_is_url_encoded_as_express_session_sends_it() {
        let signed = session::sign("2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K", "keyboard cat");
        assert_eq!(
            encode_uri_component(&signed),
            "s%3A2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K.H7WJy%2FsE4uIK5mVISsuGXt%2B0uLLzjHwg4RGYOQtYLZo"
        );
    }

    #[test]
    fn a_user_name_must_be_short_and_printable() {
        let who = |user: &str| Who {
            user: user.into(),
            claims: Map::new(),
        };
        assert!(who("alice").check().is_ok());
        assert!(who("").check().is_err());
        assert!(who("a\nb").check().is_err());
        assert!(who(&"x".repeat(129)).check().is_err());
    }
}

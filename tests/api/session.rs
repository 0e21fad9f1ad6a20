//! Express session cookies against real session tables: every scenario runs on SQLite (a temp file)
//! and on PostgreSQL (a fresh database per test from `#[sqlx::test]`).

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use palisade::auth::session::{self, DEFAULT_TTL, SessionError, SessionStore, Status};
use palisade::config::Session as SessionConfig;
use palisade::db::Database;
use palisade::on_pool;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

/// What JavaScript's `encodeURIComponent` leaves alone (the cookie package's default encoder).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The interop vector from the express-session ecosystem (stack notes).
const VECTOR_SECRET: &str = "keyboard cat";
const VECTOR_SID: &str = "2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K";
const VECTOR_SIGNED: &str =
    "s:2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K.H7WJy/sE4uIK5mVISsuGXt+0uLLzjHwg4RGYOQtYLZo";

/// Produced with real Node 20 (cookie-signature 1.2.2, cookie 0.7.2, from npm) exactly as
/// express-session sets its cookie:
/// `cookie.serialize('connect.sid', 's:' + signature.sign(sid, secret))`.
/// Each entry: (secret, sid, the `name=value` pair the browser sends back).
const NODE_VECTORS: &[(&str, &str, &str)] = &[
    (
        "keyboard cat",
        "2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K",
        "connect.sid=s%3A2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K.H7WJy%2FsE4uIK5mVISsuGXt%2B0uLLzjHwg4RGYOQtYLZo",
    ),
    (
        "pässwörd 🍪 \"quoted\";semi",
        "Zr-3_kQ9vW1xYb2Nc4Md5Pe6Rf7Sg8Th",
        "connect.sid=s%3AZr-3_kQ9vW1xYb2Nc4Md5Pe6Rf7Sg8Th.VBX9bQo4utSB3UQsnIYt90ky2LO%2Br7TU%2FAOxg3xlKec",
    ),
    (
        "7c1e0b5a-rotated-2026",
        "aB_-09zzYYxx--__QQppRRssTTuuVVww",
        "connect.sid=s%3AaB_-09zzYYxx--__QQppRRssTTuuVVww.UpCHDBVkmyMBiPF8KythV4J0JlBN8eAt7p9j0EpsrPE",
    ),
    (
        "keyboard cat",
        "sid.with.dots",
        "connect.sid=s%3Asid.with.dots.DuM6Lqsbfh5Fer8YprEO%2BEvZmDbfpn2PDcnvmoBlpSI",
    ),
];

/// A sid no other test uses, shaped like express-session's (uid-safe, 24 bytes).
fn new_sid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..24].to_string() + "_-AbCdEf"
}

/// The cookie value a browser sends for `sid` signed with `secret`.
fn cookie(sid: &str, secret: &str) -> String {
    utf8_percent_encode(&session::sign(sid, secret), URI_COMPONENT).to_string()
}

fn store(db: &Database, secrets: &[&str]) -> SessionStore {
    SessionStore::with_secrets(&SessionConfig::default(), db.clone(), secrets)
}

/// A session as express-session + passport store it, with `maxAge` in ms (`None`: no max age).
fn sess(user: Value, max_age_ms: Option<i64>) -> Value {
    let mut sess = json!({
        "cookie": {
            "originalMaxAge": max_age_ms,
            "expires": null,
            "httpOnly": true,
            "path": "/"
        }
    });
    if !user.is_null() {
        sess["passport"] = json!({ "user": user });
    }
    sess
}

/// Inserts a row into `table` as the Express app would have.
async fn insert_into(db: &Database, table: &str, sid: &str, sess: &Value, expire: DateTime<Utc>) {
    let sql = match db {
        Database::Sqlite(_) => {
            format!("INSERT INTO \"{table}\" (sid, sess, expire) VALUES ($1, $2, $3)")
        }
        Database::Postgres(_) => {
            format!("INSERT INTO \"{table}\" (sid, sess, expire) VALUES ($1, CAST($2 AS json), $3)")
        }
    };
    on_pool!(db, |pool| sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(sid)
        .bind(sess.to_string())
        .bind(expire.naive_utc())
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
}

async fn insert(db: &Database, sid: &str, sess: &Value, expire: DateTime<Utc>) {
    insert_into(db, "session", sid, sess, expire).await;
}

/// The row's (sess, expire), read back directly.
async fn row(db: &Database, sid: &str) -> Option<(Value, DateTime<Utc>)> {
    let found: Option<(String, NaiveDateTime)> = on_pool!(db, |pool| sqlx::query_as(
        "SELECT CAST(sess AS TEXT), expire FROM session WHERE sid = $1"
    )
    .bind(sid)
    .fetch_optional(pool)
    .await
    .unwrap());
    found.map(|(sess, expire)| (serde_json::from_str(&sess).unwrap(), expire.and_utc()))
}

fn in_an_hour() -> DateTime<Utc> {
    Utc::now() + TimeDelta::hours(1)
}

// ---- Scenarios, each run on both backends ----

async fn node_issued_cookies_yield_their_users(db: Database) {
    for (i, (secret, sid, pair)) in NODE_VECTORS.iter().enumerate() {
        insert(
            &db,
            sid,
            &sess(json!(format!("user-{i}")), None),
            in_an_hour(),
        )
        .await;
        let store = store(&db, &[*secret]);
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("theme=dark; {pair}; io=abc").parse().unwrap(),
        );
        let session = store
            .authenticate_headers(&headers)
            .await
            .expect("the cookie is found")
            .expect("the session is accepted");
        assert_eq!(session.user_id.as_deref(), Some(&*format!("user-{i}")));
        assert_eq!(session.sid, *sid);
        let identity = session.identity().unwrap();
        assert_eq!(identity.user_id, format!("user-{i}"));
        assert_eq!(identity.session_id.as_deref(), Some(*sid));
    }
    let none = store(&db, &[VECTOR_SECRET])
        .authenticate_headers(&axum::http::HeaderMap::new())
        .await;
    assert!(none.is_none(), "no cookie, no session");
}

async fn a_rotated_secret_is_still_accepted(db: Database) {
    let sid = new_sid();
    insert(&db, &sid, &sess(json!("alice"), Some(60_000)), in_an_hour()).await;
    let session = store(&db, &["new", "old"])
        .authenticate(&cookie(&sid, "old"))
        .await
        .unwrap();
    assert_eq!(session.user_id.as_deref(), Some("alice"));
    let session = store(&db, &["new", "old"])
        .authenticate(&cookie(&sid, "new"))
        .await
        .unwrap();
    assert_eq!(session.user_id.as_deref(), Some("alice"));
}

async fn a_removed_secret_is_refused(db: Database) {
    let sid = new_sid();
    insert(&db, &sid, &sess(json!("alice"), None), in_an_hour()).await;
    let err = store(&db, &["new"])
        .authenticate(&cookie(&sid, "old"))
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::BadSignature), "{err:?}");
    assert_eq!(err.cause(), "bad_signature");
}

async fn a_tampered_cookie_is_refused(db: Database) {
    let sid = new_sid();
    let other = new_sid();
    insert(&db, &sid, &sess(json!("alice"), None), in_an_hour()).await;
    insert(&db, &other, &sess(json!("mallory"), None), in_an_hour()).await;
    let store = store(&db, &["s3cret"]);
    let good = session::sign(&sid, "s3cret");
    let (_, signature) = good.rsplit_once('.').unwrap();

    // Another session's id under this signature.
    let swapped = format!("s:{other}.{signature}");
    // One signature character changed.
    let last = signature.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &good[..good.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    for bad in [swapped, flipped] {
        let err = store.authenticate(&bad).await.unwrap_err();
        assert_eq!(err.cause(), "bad_signature");
    }
    // Unsigned or unprefixed values.
    for bad in [sid.clone(), good[2..].to_string(), format!("s:{sid}")] {
        let err = store.authenticate(&bad).await.unwrap_err();
        assert_eq!(err.cause(), "malformed_cookie");
        assert!(!err.to_string().contains(&sid), "the sid is never shown");
    }
}

async fn an_expired_session_is_refused(db: Database) {
    let sid = new_sid();
    insert(
        &db,
        &sid,
        &sess(json!("alice"), None),
        Utc::now() - TimeDelta::seconds(1),
    )
    .await;
    let store = store(&db, &["k"]);
    let err = store.authenticate(&cookie(&sid, "k")).await.unwrap_err();
    assert!(matches!(err, SessionError::Expired), "{err:?}");
    assert_eq!(err.cause(), "session_expired");
    assert_eq!(store.recheck(&sid).await.unwrap(), Status::Expired);
}

async fn a_missing_session_is_refused(db: Database) {
    let sid = new_sid();
    let store = store(&db, &["k"]);
    let err = store.authenticate(&cookie(&sid, "k")).await.unwrap_err();
    assert!(matches!(err, SessionError::Missing), "{err:?}");
    assert_eq!(err.cause(), "session_missing");
    assert!(!err.to_string().contains(&sid));
}

async fn a_session_without_user_is_anonymous(db: Database) {
    let sid = new_sid();
    insert(&db, &sid, &sess(Value::Null, None), in_an_hour()).await;
    let logged_out = new_sid();
    insert(
        &db,
        &logged_out,
        &json!({"cookie": {}, "passport": {}}),
        in_an_hour(),
    )
    .await;
    let store = store(&db, &["k"]);
    for sid in [&sid, &logged_out] {
        let session = store.authenticate(&cookie(sid, "k")).await.unwrap();
        assert!(session.is_anonymous());
        assert!(session.identity().is_none());
        assert_eq!(store.recheck(sid).await.unwrap(), Status::LoggedOut);
    }
}

async fn a_numeric_passport_user_is_stringified(db: Database) {
    let sid = new_sid();
    insert(&db, &sid, &sess(json!(42), None), in_an_hour()).await;
    let session = store(&db, &["k"])
        .authenticate(&cookie(&sid, "k"))
        .await
        .unwrap();
    assert_eq!(session.user_id.as_deref(), Some("42"));
}

async fn extending_moves_expire_by_the_original_max_age(db: Database) {
    let store = store(&db, &["k"]);
    for (max_age, lifetime) in [
        (Some(2 * 3_600_000), TimeDelta::hours(2)),
        (None, DEFAULT_TTL),
    ] {
        let sid = new_sid();
        let data = sess(json!("alice"), max_age);
        let soon = Utc::now() + TimeDelta::minutes(2);
        insert(&db, &sid, &data, soon).await;
        let session = store.authenticate(&cookie(&sid, "k")).await.unwrap();
        assert_eq!(session.lifetime, lifetime);

        let before = Utc::now();
        let expire = store.extend(&sid, session.lifetime).await.unwrap();
        let after = Utc::now();
        assert!(
            expire >= before - TimeDelta::microseconds(1) + lifetime && expire <= after + lifetime,
            "new expire {expire} is now + {lifetime}"
        );
        let (stored_sess, stored_expire) = row(&db, &sid).await.unwrap();
        assert_eq!(
            stored_expire, expire,
            "the returned expire is what was stored"
        );
        assert_eq!(stored_sess, data, "only expire changes");

        let Status::Active(seen) = store.recheck(&sid).await.unwrap() else {
            panic!("the session is live");
        };
        assert_eq!(
            (seen.user_id.as_deref(), seen.expire, seen.lifetime),
            (Some("alice"), expire, lifetime)
        );
        assert_eq!(
            Value::Object(seen.data),
            data,
            "the re-check reads the whole sess"
        );
    }
    let gone = store.extend(&new_sid(), DEFAULT_TTL).await.unwrap_err();
    assert!(matches!(gone, SessionError::Missing), "{gone:?}");
}

async fn recheck_reports_missing_after_logout(db: Database) {
    let sid = new_sid();
    insert(&db, &sid, &sess(json!("alice"), Some(60_000)), in_an_hour()).await;
    let store = store(&db, &["k"]);
    assert!(matches!(
        store.recheck(&sid).await.unwrap(),
        Status::Active(ref session) if session.user_id.as_deref() == Some("alice")
    ));
    on_pool!(&db, |pool| sqlx::query(
        "DELETE FROM session WHERE sid = $1"
    )
    .bind(&sid)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected());
    let status = store.recheck(&sid).await.unwrap();
    assert_eq!(status, Status::Missing);
    assert_eq!(status.cause(), "session_missing");
}

async fn a_configured_table_and_pointer_are_used(db: Database) {
    let ddl = match db {
        Database::Sqlite(_) => {
            "CREATE TABLE \"Web_Sessions\" (sid TEXT PRIMARY KEY, sess TEXT NOT NULL, expire DATETIME NOT NULL)"
        }
        Database::Postgres(_) => {
            "CREATE TABLE \"Web_Sessions\" (sid varchar PRIMARY KEY, sess json NOT NULL, expire timestamp(6) NOT NULL)"
        }
    };
    on_pool!(&db, |pool| sqlx::query(ddl)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    let sid = new_sid();
    insert_into(
        &db,
        "Web_Sessions",
        &sid,
        &json!({"account": {"id": "acct-9"}}),
        in_an_hour(),
    )
    .await;
    let config = SessionConfig {
        table: "Web_Sessions".into(),
        user_pointer: "/account/id".into(),
        ..SessionConfig::default()
    };
    let store = SessionStore::with_secrets(&config, db.clone(), ["k"]);
    let session = store.authenticate(&cookie(&sid, "k")).await.unwrap();
    assert_eq!(session.user_id.as_deref(), Some("acct-9"));
    store.extend(&sid, TimeDelta::minutes(5)).await.unwrap();
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("x.db").display());
                    let db = super::Database::connect(&url).await.unwrap();
                    super::$scenario(db).await;
                }
            )*
        }

        mod postgres {
            $(
                #[sqlx::test(migrations = false)]
                async fn $scenario(pool: sqlx::PgPool) {
                    let db = super::Database::from_pg_pool(pool).await.unwrap();
                    super::$scenario(db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    node_issued_cookies_yield_their_users,
    a_rotated_secret_is_still_accepted,
    a_removed_secret_is_refused,
    a_tampered_cookie_is_refused,
    an_expired_session_is_refused,
    a_missing_session_is_refused,
    a_session_without_user_is_anonymous,
    a_numeric_passport_user_is_stringified,
    extending_moves_expire_by_the_original_max_age,
    recheck_reports_missing_after_logout,
    a_configured_table_and_pointer_are_used,
);

// ---- Single-backend checks ----

#[test]
fn sign_matches_the_interop_vector_and_its_encoded_cookie_verifies() {
    assert_eq!(session::sign(VECTOR_SID, VECTOR_SECRET), VECTOR_SIGNED);
    let encoded = cookie(VECTOR_SID, VECTOR_SECRET);
    assert_eq!(
        encoded,
        "s%3A2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K.H7WJy%2FsE4uIK5mVISsuGXt%2B0uLLzjHwg4RGYOQtYLZo"
    );
    for (secret, sid, pair) in NODE_VECTORS {
        let value = pair.strip_prefix("connect.sid=").unwrap();
        assert_eq!(
            cookie(sid, secret),
            value,
            "encoded like encodeURIComponent"
        );
    }
}

#[tokio::test]
async fn node_vectors_unsign_and_foreign_secrets_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let db = Database::connect(&url).await.unwrap();
    let all: Vec<&str> = NODE_VECTORS.iter().map(|v| v.0).collect();
    let rotation = store(&db, &all);
    for (secret, sid, pair) in NODE_VECTORS {
        let value = pair.strip_prefix("connect.sid=").unwrap();
        assert_eq!(store(&db, &[*secret]).unsign(value).unwrap(), *sid);
        assert_eq!(rotation.unsign(value).unwrap(), *sid);
        let err = store(&db, &["keyboard dog"]).unsign(value).unwrap_err();
        assert_eq!(err.cause(), "bad_signature");
    }
}

#[tokio::test]
async fn secrets_from_env_is_empty_without_the_variable() {
    let unset = SessionConfig {
        secrets_env: format!("PALISADE_TEST_UNSET_{}", uuid::Uuid::new_v4().simple()),
        ..SessionConfig::default()
    };
    assert!(SessionStore::secrets_from_env(&unset).is_empty());

    // A variable that is always set stands in for the secrets (tests never mutate the
    // environment): its whole value is one secret as long as it has no comma.
    let path = std::env::var("PATH").unwrap();
    if !path.contains(',') && !path.trim().is_empty() {
        let from_path = SessionConfig {
            secrets_env: "PATH".into(),
            ..SessionConfig::default()
        };
        assert_eq!(
            SessionStore::secrets_from_env(&from_path),
            vec![path.trim().to_string()]
        );
    }
}

/// An Express app may have created the table itself with connect-pg-simple's table.sql before
/// Palisade first migrates: the migration leaves it as it is, and rows written the way
/// connect-pg-simple writes them (`to_timestamp` of epoch seconds) are read correctly.
#[sqlx::test(migrations = false)]
async fn postgres_keeps_an_existing_connect_pg_simple_table(pool: sqlx::PgPool) {
    for statement in [
        r#"CREATE TABLE "session" ("sid" varchar NOT NULL COLLATE "default", "sess" json NOT NULL, "expire" timestamp(6) NOT NULL) WITH (OIDS=FALSE)"#,
        r#"ALTER TABLE "session" ADD CONSTRAINT "session_pkey" PRIMARY KEY ("sid") NOT DEFERRABLE INITIALLY IMMEDIATE"#,
        r#"CREATE INDEX "IDX_session_expire" ON "session" ("expire")"#,
        r#"COMMENT ON TABLE "session" IS 'made by connect-pg-simple'"#,
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let db = Database::from_pg_pool(pool.clone()).await.unwrap();
    let comment: Option<String> =
        sqlx::query_scalar("SELECT obj_description('\"session\"'::regclass, 'pg_class')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(comment.as_deref(), Some("made by connect-pg-simple"));

    // connect-pg-simple's `set`: INSERT ... SELECT $1, to_timestamp($2), $3 ON CONFLICT ...
    let sid = new_sid();
    let expire_secs = (Utc::now() + TimeDelta::hours(1)).timestamp();
    sqlx::query(
        r#"INSERT INTO "session" (sess, expire, sid) SELECT CAST($1 AS json), to_timestamp($2), $3
           ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expire = excluded.expire"#,
    )
    .bind(sess(json!("bob"), Some(86_400_000)).to_string())
    .bind(expire_secs as f64)
    .bind(&sid)
    .execute(&pool)
    .await
    .unwrap();
    let session = store(&db, &["k"])
        .authenticate(&cookie(&sid, "k"))
        .await
        .unwrap();
    assert_eq!(session.user_id.as_deref(), Some("bob"));
    assert_eq!(
        session.expire.timestamp(),
        expire_secs,
        "expire is read as UTC"
    );
}

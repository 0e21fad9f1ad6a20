//! Tests of `session`.
use axum::http::HeaderValue;
use axum::http::header::COOKIE;
use serde_json::json;

use super::*;
use crate::auth::cookie::MAX_COOKIE_BYTES;

const SID: &str = "2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K";
const SIGNED: &str =
    "s:2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K.H7WJy/sE4uIK5mVISsuGXt+0uLLzjHwg4RGYOQtYLZo";
const ENCODED: &str =
    "s%3A2h9xBtQfOq7Sx3oWcG3nT_9hS1wP0b2K.H7WJy%2FsE4uIK5mVISsuGXt%2B0uLLzjHwg4RGYOQtYLZo";

fn secrets(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn signs_the_known_express_vector() {
    assert_eq!(sign(SID, "keyboard cat"), SIGNED);
}

#[test]
fn unsigns_encoded_and_plain_values() {
    let keys = secrets(&["keyboard cat"]);
    assert_eq!(unsign(ENCODED, &keys).unwrap(), SID);
    assert_eq!(unsign(SIGNED, &keys).unwrap(), SID);
}

#[test]
fn splits_at_the_last_dot() {
    let keys = secrets(&["k"]);
    let signed = sign("a.b.c", "k");
    assert!(signed.starts_with("s:a.b.c."));
    assert_eq!(unsign(&signed, &keys).unwrap(), "a.b.c");
}

#[test]
fn tries_every_secret() {
    let cookie = sign(SID, "old");
    assert_eq!(unsign(&cookie, &secrets(&["new", "old"])).unwrap(), SID);
    assert!(matches!(
        unsign(&cookie, &secrets(&["new"])),
        Err(SessionError::BadSignature)
    ));
    assert!(matches!(
        unsign(&cookie, &[]),
        Err(SessionError::BadSignature)
    ));
}

#[test]
fn refuses_malformed_and_tampered_values() {
    let keys = secrets(&["keyboard cat"]);
    let cause = |v: &str| unsign(v, &keys).unwrap_err().cause();
    assert_eq!(cause(SID), "malformed_cookie");
    assert_eq!(cause(&SIGNED[2..]), "malformed_cookie");
    assert_eq!(cause("s:no-signature"), "malformed_cookie");
    assert_eq!(cause("s:.H7WJy"), "malformed_cookie");
    assert_eq!(cause("s%3A%FF%FE.abc"), "malformed_cookie");
    assert_eq!(cause(&"a".repeat(MAX_COOKIE_BYTES + 1)), "malformed_cookie");
    // Another sid under the same signature.
    assert_eq!(cause(&SIGNED.replace("2h9x", "2h9y")), "bad_signature");
    // A flipped signature character, padding, URL-safe alphabet, and non-zero trailing bits
    // (`LZp` decodes to the same bytes as `LZo` under a lenient decoder).
    assert_eq!(cause(&SIGNED.replace("H7WJy", "H7WJz")), "bad_signature");
    assert_eq!(cause(&format!("{SIGNED}=")), "bad_signature");
    assert_eq!(
        cause(&SIGNED.replace('/', "_").replace('+', "-")),
        "bad_signature"
    );
    assert_eq!(cause(&SIGNED.replace("LZo", "LZp")), "bad_signature");
    assert_eq!(cause(&SIGNED[..SIGNED.len() - 1]), "bad_signature");
}

#[test]
fn reads_the_cookie_like_the_cookie_package() {
    let mut headers = HeaderMap::new();
    headers.append(COOKIE, HeaderValue::from_static("theme=dark; x=1"));
    headers.append(
        COOKIE,
        HeaderValue::from_static(" connect.sid = \"s%3Afirst\" ;connect.sid=s%3Asecond"),
    );
    assert_eq!(
        cookie_value(&headers, "connect.sid").as_deref(),
        Some("s%3Afirst")
    );
    assert_eq!(cookie_value(&headers, "theme").as_deref(), Some("dark"));
    assert_eq!(cookie_value(&headers, "connect"), None);
    assert_eq!(cookie_value(&HeaderMap::new(), "connect.sid"), None);
}

#[test]
fn finds_string_and_numeric_users() {
    let data = |v: Value| v.as_object().unwrap().clone();
    let p = "/passport/user";
    assert_eq!(
        user_id(&data(json!({"passport": {"user": "u-1"}})), p).as_deref(),
        Some("u-1")
    );
    assert_eq!(
        user_id(&data(json!({"passport": {"user": 42}})), p).as_deref(),
        Some("42")
    );
    for anonymous in [
        json!({}),
        json!({"passport": {}}),
        json!({"passport": {"user": null}}),
        json!({"passport": {"user": ""}}),
        json!({"passport": {"user": {"id": 1}}}),
    ] {
        assert_eq!(user_id(&data(anonymous), p), None);
    }
    assert_eq!(
        user_id(&data(json!({"a/b": {"~": "x"}})), "/a~1b/~0").as_deref(),
        Some("x")
    );
    assert_eq!(
        user_id(&data(json!({"uid": "top"})), "/uid").as_deref(),
        Some("top")
    );
}

#[test]
fn lifetime_is_the_original_max_age_or_a_day() {
    let data = |v: Value| v.as_object().unwrap().clone();
    assert_eq!(
        lifetime(&data(json!({"cookie": {"originalMaxAge": 3_600_000}}))),
        TimeDelta::hours(1)
    );
    assert_eq!(
        lifetime(&data(json!({"cookie": {"originalMaxAge": 1500.0}}))),
        TimeDelta::milliseconds(1500)
    );
    for default in [
        json!({}),
        json!({"cookie": {}}),
        json!({"cookie": {"originalMaxAge": null}}),
        json!({"cookie": {"originalMaxAge": -5}}),
    ] {
        assert_eq!(lifetime(&data(default)), DEFAULT_TTL);
    }
}

#[test]
fn secrets_are_split_trimmed_and_never_shown() {
    assert_eq!(
        parse_secrets(" new secret , old,,"),
        vec!["new secret", "old"]
    );
    assert!(parse_secrets(" , ").is_empty());
    for error in [
        SessionError::Malformed,
        SessionError::BadSignature,
        SessionError::Missing,
        SessionError::Expired,
        SessionError::Corrupt,
    ] {
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(SID) && !shown.contains("keyboard"));
    }
    let session = Session {
        sid: SID.into(),
        user_id: Some("u".into()),
        expire: Utc::now(),
        lifetime: DEFAULT_TTL,
        data: Map::new(),
    };
    assert!(!format!("{session:?}").contains(SID));
    let identity = session.identity().unwrap();
    assert_eq!(identity.claims["sub"], "u");
    assert_eq!(identity.method, Method::Session);
}

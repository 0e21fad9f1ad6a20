//! Tests of `jwt`.
use super::*;

fn secret() -> HmacSecret {
    HmacSecret {
        bytes: b"test-secret".to_vec(),
        development: true,
    }
}

#[test]
fn a_minted_token_verifies_and_carries_its_claims() {
    let config = JwtConfig::default();
    let extra = Map::from_iter([("roles".to_string(), serde_json::json!(["service"]))]);
    let token = mint(&secret(), &config, "alice", extra, Duration::from_secs(60)).unwrap();
    let claims = Verifier::new(&config, &secret())
        .unwrap()
        .verify(&token)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"][0], "service");
}

#[test]
fn a_token_signed_with_another_secret_is_refused() {
    let config = JwtConfig::default();
    let other = HmacSecret {
        bytes: b"other".to_vec(),
        development: true,
    };
    let token = mint(
        &other,
        &config,
        "alice",
        Map::new(),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        Verifier::new(&config, &secret())
            .unwrap()
            .verify(&token)
            .is_err()
    );
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// An HS256 token with exactly `claims`, signed with the test secret.
fn signed(header: &Header, claims: serde_json::Value) -> String {
    let key = EncodingKey::from_secret(&secret().bytes);
    jsonwebtoken::encode(header, &claims, &key).unwrap()
}

fn cause(config: &JwtConfig, token: &str) -> (&'static str, String) {
    let error = Verifier::new(config, &secret())
        .unwrap()
        .verify(token)
        .unwrap_err();
    (error.cause(), error.to_string())
}

#[test]
fn each_refusal_has_its_own_cause() {
    use serde_json::json;
    let hs256 = Header::new(Algorithm::HS256);
    let config = JwtConfig {
        issuer: Some("https://issuer.example".into()),
        audience: Some("palisade".into()),
        ..JwtConfig::default()
    };
    let valid = |extra: serde_json::Value| {
        let mut claims = json!({ "sub": "alice", "exp": now() + 60, "iss": "https://issuer.example", "aud": "palisade" });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let cases = [
        (json!({ "exp": now() - 120 }), "expired"),
        (json!({ "nbf": now() + 120 }), "not_yet_valid"),
        (json!({ "iss": "https://evil.example" }), "wrong_issuer"),
        (json!({ "aud": "someone-else" }), "wrong_audience"),
        (json!({ "iss": null }), "missing_claim"),
        (json!({ "aud": null }), "missing_claim"),
        (json!({ "exp": null }), "missing_claim"),
        (json!({ "sub": null }), "missing_claim"),
        (json!({ "sub": "" }), "missing_claim"),
        (json!({ "sub": 42 }), "missing_claim"),
        (json!({ "exp": "soon" }), "malformed"),
        (json!({ "exp": [now() + 60] }), "malformed"),
        (json!({ "exp": 1.0e300 }), "malformed"),
        (json!({ "nbf": "now" }), "malformed"),
        (json!({ "nbf": true }), "malformed"),
    ];
    for (extra, expected) in cases {
        let token = signed(&hs256, valid(extra.clone()));
        assert_eq!(cause(&config, &token).0, expected, "{extra}");
    }
    let token = signed(&hs256, valid(json!({})));
    assert!(
        Verifier::new(&config, &secret())
            .unwrap()
            .verify(&token)
            .is_ok()
    );
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    signature[3] ^= 1;
    let tampered = format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature));
    assert_eq!(cause(&config, &tampered).0, "bad_signature");
    assert_eq!(cause(&config, "not-a-jwt").0, "malformed");
}

#[test]
fn leeway_tolerates_clock_skew_on_exp_and_nbf() {
    let config = JwtConfig::default();
    let verifier = Verifier::new(&config, &secret()).unwrap();
    let claims = serde_json::json!({ "sub": "a", "exp": now() - 10, "nbf": now() + 10 });
    assert!(
        verifier
            .verify(&signed(&Header::new(Algorithm::HS256), claims))
            .is_ok()
    );
}

#[test]
fn alg_none_and_unknown_algorithms_are_refused_as_not_allowed() {
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"a","exp":{}}}"#, now() + 60));
    for alg in ["none", "None", "NONE", "HS1"] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let token = format!("{header}.{claims}.");
        assert_eq!(
            cause(&JwtConfig::default(), &token).0,
            "algorithm_not_allowed"
        );
    }
    let hs512 = signed(
        &Header::new(Algorithm::HS512),
        serde_json::json!({ "sub": "a", "exp": now() + 60 }),
    );
    assert_eq!(
        cause(&JwtConfig::default(), &hs512).0,
        "algorithm_not_allowed"
    );
}

#[test]
fn a_critical_header_extension_is_refused() {
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["b64".into()]);
    let token = signed(
        &header,
        serde_json::json!({ "sub": "a", "exp": now() + 60 }),
    );
    assert_eq!(cause(&JwtConfig::default(), &token).0, "malformed");
}

#[test]
fn the_message_names_the_cause_and_never_quotes_the_token() {
    let token = signed(
        &Header::new(Algorithm::HS256),
        serde_json::json!({ "sub": "a", "exp": now() - 3600, "secret": "do-not-log" }),
    );
    let (_, message) = cause(&JwtConfig::default(), &token);
    assert_eq!(message, "token rejected: expired");
    let (_, message) = cause(&JwtConfig::default(), "eyJhbGciOiJIUzI1NiJ9.do-not-log.x");
    assert!(!message.contains("do-not-log"), "{message}");
}

#[test]
fn a_fractional_exp_is_the_deadline_validation_checked() {
    use chrono::{TimeZone, Utc};
    let config = JwtConfig {
        leeway: "0s".parse().unwrap(),
        ..JwtConfig::default()
    };
    let verifier = Verifier::new(&config, &secret()).unwrap();
    let exp = now() as f64 + 60.25;
    let verified = verifier
        .verify(&signed(
            &Header::new(Algorithm::HS256),
            serde_json::json!({ "sub": "a", "exp": exp }),
        ))
        .unwrap();
    let expected = Utc.timestamp_opt(exp.floor() as i64, 250_000_000).unwrap();
    assert_eq!(verified.expires_at, expected);
    // Half a second past: expired, with no rounding to the nearest second.
    let past = now() as f64 - 0.5;
    let token = signed(
        &Header::new(Algorithm::HS256),
        serde_json::json!({ "sub": "a", "exp": past }),
    );
    assert_eq!(cause(&config, &token).0, "expired");
}

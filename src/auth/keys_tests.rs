//! Tests of `keys`.
use std::path::PathBuf;

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt")).join(name)
}

fn load(tweak: impl FnOnce(&mut JwtConfig)) -> anyhow::Result<KeySet> {
    let mut config = JwtConfig::default();
    tweak(&mut config);
    let secret = HmacSecret {
        bytes: b"unit-test-secret".to_vec(),
        development: true,
    };
    KeySet::load(&config, &secret, &Validation::default())
}

fn pem(file: &str, algorithms: &[&str]) -> anyhow::Result<KeySet> {
    load(|c| {
        c.public_key_file = Some(fixture(file));
        c.algorithms = algorithms.iter().map(|a| a.to_string()).collect();
    })
}

fn jwks(json: &serde_json::Value, algorithms: &[&str]) -> anyhow::Result<KeySet> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), json.to_string()).unwrap();
    load(|c| {
        c.jwks_file = Some(file.path().to_path_buf());
        c.algorithms = algorithms.iter().map(|a| a.to_string()).collect();
    })
}

fn error(result: anyhow::Result<KeySet>) -> String {
    match result {
        Ok(_) => panic!("expected a startup error"),
        Err(error) => format!("{error:#}"),
    }
}

fn fixture_jwks() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap()
}

#[test]
fn each_pem_key_type_loads_with_the_algorithms_of_its_family() {
    pem(
        "rsa-public.pem",
        &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
    )
    .unwrap();
    pem("ec-public.pem", &["ES256"]).unwrap();
    pem("ec384-public.pem", &["ES384"]).unwrap();
    pem("ed-public.pem", &["EdDSA"]).unwrap();
}

#[test]
fn an_algorithm_that_does_not_fit_the_pem_key_is_a_startup_error() {
    for (file, alg) in [
        ("rsa-public.pem", "ES256"),
        ("ec-public.pem", "ES384"),
        ("ec384-public.pem", "ES256"),
        ("ed-public.pem", "RS256"),
        ("ec-public.pem", "EdDSA"),
    ] {
        let message = error(pem(file, &[alg]));
        assert!(
            message.contains(&format!("auth.jwt.algorithms: {alg} cannot be verified")),
            "{file} with {alg}: {message}"
        );
    }
}

#[test]
fn hmac_next_to_a_public_key_is_refused_as_key_confusion() {
    let message = error(pem("rsa-public.pem", &["RS256", "HS256"]));
    assert!(message.contains("HS256"), "{message}");
    assert!(
        message.contains("never accepted with public keys"),
        "{message}"
    );
    let message = error(jwks(&fixture_jwks(), &["RS256", "ES256", "HS512"]));
    assert!(message.contains("HS512"), "{message}");
}

#[test]
fn the_hmac_secret_only_fits_hmac_algorithms() {
    load(|c| c.algorithms = vec!["HS256".into(), "HS512".into()]).unwrap();
    let message = error(load(|c| c.algorithms = vec!["RS256".into()]));
    assert!(
        message.contains("RS256 cannot be verified with the HMAC secret"),
        "{message}"
    );
}

#[test]
fn unreadable_or_wrong_pem_files_are_startup_errors_naming_the_config_key() {
    for file in ["missing.pem", "rsa-private.pem", "jwks.json"] {
        let message = error(pem(file, &["RS256"]));
        assert!(
            message.starts_with("auth.jwt.public_key_file ("),
            "{file}: {message}"
        );
    }
    let message = error(pem("rsa-private.pem", &["RS256"]));
    assert!(message.contains("private keys"), "{message}");
}

#[test]
fn both_key_files_at_once_is_a_startup_error() {
    let message = error(load(|c| {
        c.public_key_file = Some(fixture("rsa-public.pem"));
        c.jwks_file = Some(fixture("jwks.json"));
        c.algorithms = vec!["RS256".into()];
    }));
    assert!(
        message.contains("auth.jwt.public_key_file and auth.jwt.jwks_file"),
        "{message}"
    );
}

#[test]
fn a_jwks_key_is_selected_by_kid_and_verifies_only_its_own_algorithm() {
    let set = jwks(&fixture_jwks(), &["RS256", "ES256"]).unwrap();
    let rsa = set.select(Some("rsa-1")).unwrap();
    assert_eq!(rsa.validation.algorithms, [Algorithm::RS256]);
    let ec = set.select(Some("ec-1")).unwrap();
    assert_eq!(ec.validation.algorithms, [Algorithm::ES256]);
    assert!(set.select(Some("nope")).is_none());
    assert!(set.select(None).is_none(), "two keys: no kid, no key");
}

#[test]
fn a_single_key_jwks_serves_tokens_without_kid() {
    let mut json = fixture_jwks();
    json["keys"].as_array_mut().unwrap().truncate(1);
    let set = jwks(&json, &["RS256"]).unwrap();
    assert!(set.select(None).is_some());
    assert!(set.select(Some("other")).is_none());
}

#[test]
fn inconsistent_jwks_files_are_startup_errors() {
    let base = fixture_jwks();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json = base.clone();
        edit(&mut json);
        json
    };
    let cases = [
        (
            with(&|j| j["keys"][1]["kid"] = "rsa-1".into()),
            "two keys have kid rsa-1",
        ),
        (
            with(&|j| _ = j["keys"][1].as_object_mut().unwrap().remove("kid")),
            "needs a kid",
        ),
        (
            with(&|j| j["keys"][0]["alg"] = "ES256".into()),
            "declares alg ES256",
        ),
        (
            with(&|j| j["keys"][1]["crv"] = "P-384".into()),
            "declares alg ES256",
        ),
        (
            with(&|j| j["keys"][1]["y"] = j["keys"][1]["x"].clone()),
            "invalid key material",
        ),
        (
            with(&|j| j["keys"][1]["use"] = "enc".into()),
            "encryption key",
        ),
        (
            with(&|j| j["keys"][0]["n"] = "AQAB".into()),
            "2048 to 4096 bits",
        ),
        (serde_json::json!({ "keys": [] }), "holds no keys"),
        (
            serde_json::json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] }),
            "symmetric secret",
        ),
        // A short Ed25519 key would make the verifier panic; it must be refused first.
        (
            serde_json::json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "AAAA" }] }),
            "32-byte",
        ),
    ];
    for (json, expected) in cases {
        let message = error(jwks(&json, &["RS256", "ES256"]));
        assert!(message.starts_with("auth.jwt.jwks_file ("), "{message}");
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message}"
        );
    }
}

#[test]
fn a_jwks_key_no_allowed_algorithm_fits_is_a_startup_error() {
    let message = error(jwks(&fixture_jwks(), &["RS256"]));
    assert!(
        message.contains("key ec-1: fits none of auth.jwt.algorithms"),
        "{message}"
    );
}

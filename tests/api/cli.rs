use std::process::Command;

fn palisade(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env_remove("PALISADE_CONFIG")
        .env("PALISADE_JWT_SECRET", "cli-test-secret-of-32-bytes-or-more")
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

fn check(yaml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hardening.yaml");
    std::fs::write(&path, yaml).unwrap();
    palisade(&["check-config", path.to_str().unwrap()])
}

#[test]
fn check_config_accepts_the_shipped_hardening_yaml_with_a_one_line_summary() {
    let (ok, stdout, stderr) = palisade(&[
        "check-config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/hardening.yaml"),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.contains(": ok: listen 0.0.0.0:8080"), "{stdout}");
}

#[test]
fn check_config_names_the_key_path_line_and_column_of_each_problem() {
    let cases = [
        // unknown key
        (
            "server:\n  listen: 0.0.0.0:8080\n  lisen: x\n",
            ":3:3: server: unknown field `lisen`",
        ),
        // wrong type
        (
            "connections:\n  max_per_user: many\n",
            ":2:17: connections.max_per_user: invalid type",
        ),
        // bad duration
        (
            "auth:\n  connection_init_timeout: 10 parsecs\n",
            "auth.connection_init_timeout: invalid duration",
        ),
        // range rule
        (
            "operations:\n  rate_limit:\n    warn_at: 1.5\n",
            ":3:14: operations.rate_limit.warn_at: must be greater than 0.0 and less than 1.0 (got 1.5)",
        ),
        // cross-field rule
        (
            "payload:\n  max_message_bytes: 8KiB\n  max_query_bytes: 16KiB\n",
            ":3:20: payload.max_query_bytes: 16KiB cannot exceed payload.max_message_bytes (8KiB)",
        ),
        // custom rule inside a list
        (
            "topics:\n  rules:\n    - pattern: 'ok:{x}'\n    - pattern: 'bad:{'\n",
            ":4:16: topics.rules[1].pattern: segment `{`",
        ),
        // never `none`
        (
            "auth:\n  jwt:\n    algorithms: [none]\n",
            ":3:17: auth.jwt.algorithms: `none` is never accepted",
        ),
    ];
    for (yaml, expected) in cases {
        let (ok, _, stderr) = check(yaml);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(
            stderr.contains(expected),
            "for\n{yaml}\nexpected `{expected}` in `{stderr}`"
        );
    }
}

#[test]
fn check_config_reports_every_problem_not_just_the_first() {
    let (ok, _, stderr) = check("connections:\n  max_per_user: 0\n  send_queue: 0\n");
    assert!(!ok);
    assert!(
        stderr.contains("connections.max_per_user") && stderr.contains("connections.send_queue"),
        "{stderr}"
    );
}

#[test]
fn config_schema_prints_a_json_schema_with_every_section_and_its_defaults() {
    let (ok, stdout, _) = palisade(&["config-schema"]);
    assert!(ok);
    let schema: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for section in [
        "server",
        "auth",
        "connections",
        "operations",
        "payload",
        "topics",
        "streams",
        "retention",
    ] {
        assert!(schema["properties"][section].is_object(), "{section}");
    }
    assert_eq!(
        schema["properties"]["payload"]["default"]["max_message_bytes"],
        "64KiB"
    );
}

#[test]
fn token_mints_a_jwt_with_the_given_subject_claims_and_ttl() {
    let (ok, stdout, stderr) = palisade(&[
        "token",
        "--sub",
        "alice",
        "--claim",
        "roles=[\"service\"]",
        "--claim",
        "team=core",
        "--ttl",
        "2h",
    ]);
    assert!(ok, "{stderr}");
    let secret = palisade::auth::secret::HmacSecret {
        bytes: b"cli-test-secret-of-32-bytes-or-more".to_vec(),
        development: false,
    };
    let verifier = palisade::auth::Verifier::new(&Default::default(), &secret).unwrap();
    let claims = verifier.verify(stdout.trim()).unwrap().claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], serde_json::json!(["service"]));
    assert_eq!(claims["team"], "core");
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 7200);
}

#[test]
fn check_config_refuses_grants_that_name_missing_placeholders_or_unsafe_tables() {
    let (ok, _, stderr) = check(
        "topics:\n  rules:\n    - pattern: 'team:{team}'\n      subscribe: [{ subject: user }]\n      publish: [{ member: { table: 'x; drop', key_column: team_id, placeholder: team } }]\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("topics.rules[0].subscribe[0]: placeholder `user` is not in the pattern"),
        "{stderr}"
    );
    assert!(
        stderr.contains("topics.rules[0].publish[0]: `x; drop` must be a plain SQL identifier"),
        "{stderr}"
    );
}

#[test]
fn check_config_loads_the_configured_key_files() {
    let (ok, _, stderr) = check(
        "auth:\n  jwt:\n    algorithms: [RS256]\n    public_key_file: /nonexistent/key.pem\n",
    );
    assert!(!ok);
    assert!(stderr.contains("auth.jwt.public_key_file"), "{stderr}");
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/rsa-public.pem"
    );
    let (ok, _, stderr) = check(&format!(
        "auth:\n  jwt:\n    algorithms: [RS256]\n    public_key_file: {key}\n"
    ));
    assert!(ok, "{stderr}");
}

#[test]
fn the_production_example_passes_check_config_with_introspection_and_suggestions_off() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/hardening.production.yaml"
    );
    let (ok, stdout, stderr) = palisade(&["check-config", path]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1);
    let config = palisade::config::Config::load(std::path::Path::new(path)).unwrap();
    assert!(!config.payload.introspection && !config.payload.field_suggestions);
}

#[test]
fn a_shutdown_grace_shorter_than_the_default_drain_period_still_loads() {
    // Files written before drain_period existed keep working: the spread is cut to half the grace.
    let (ok, _, stderr) = check("server:\n  shutdown_grace: 2s\n");
    assert!(ok, "{stderr}");
}

#[test]
fn a_listen_backlog_of_zero_is_refused_with_its_path() {
    let (ok, _, stderr) = check("server:\n  listen_backlog: 0\n");
    assert!(!ok);
    assert!(stderr.contains("server.listen_backlog"), "{stderr}");
}

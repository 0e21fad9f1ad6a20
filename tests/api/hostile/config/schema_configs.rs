//! Every configuration `check-config` accepts starts a server that serves: the settings that used
//! to pass and then crash (or refuse every token) are refused with their line and column, and
//! configurations generated from the JSON Schema's own ranges start, serve and shut down.

use std::path::Path;

use palisade::config::Config;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::helpers::spawn_app_with;

fn check_config(dir: &Path, yaml: &str) -> (bool, String) {
    let path = dir.join("hardening.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[test]
fn check_config_refuses_each_setting_that_crashed_the_server_or_locked_everyone_out() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "operations:\n  http:\n    per_ip_per_second: 2000000000\n",
            ":3:24: operations.http.per_ip_per_second: must be at least 1 and at most",
        ),
        (
            "server:\n  graphql_path: /api/:version\n",
            ":2:17: server.graphql_path: `/api/:version` must be / or /segment/",
        ),
        (
            "server:\n  graphql_path: /metrics\n",
            ":2:17: server.graphql_path: `/metrics` overlaps the server's own /metrics route",
        ),
        (
            "retention:\n  audit_logs: 300000y\n",
            ":2:15: retention.audit_logs: must be at least 1h and at most 36500d",
        ),
        (
            "auth:\n  jwt:\n    leeway: 100y\n",
            ":3:13: auth.jwt.leeway: must be at most 10m",
        ),
    ];
    for (yaml, expected) in cases {
        let (ok, stderr) = check_config(dir.path(), yaml);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(
            stderr.contains(expected),
            "for\n{yaml}\nexpected `{expected}` in `{stderr}`"
        );
    }
}

/// A key the generator sets: its path and the values the schema allows.
#[derive(Clone, Debug)]
enum Leaf {
    /// Integers, durations (seconds) and sizes (bytes), inclusive.
    Whole(Vec<String>, u64, u64),
    /// Floats strictly between two bounds.
    Fraction(Vec<String>, f64, f64),
    Flag(Vec<String>),
}

fn resolve<'a>(schema: &'a Value, defs: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => &defs[reference.rsplit('/').next().unwrap()],
        None => schema,
    }
}

/// Every numeric and boolean key under `schema`, with its range; the numeric ones must have one.
fn leaves(schema: &Value, defs: &Value, path: Vec<String>, out: &mut Vec<Leaf>) {
    let schema = resolve(schema, defs);
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, property) in properties {
            let mut path = path.clone();
            path.push(key.clone());
            leaves(property, defs, path, out);
        }
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    let name = path.join(".");
    if types.contains(&"integer") {
        let (Some(min), Some(max)) = (bound("minimum"), bound("maximum")) else {
            panic!("`{name}` has no range in the schema: {schema}");
        };
        out.push(Leaf::Whole(path, min as u64, max as u64));
    } else if types.contains(&"number") {
        let (Some(min), Some(max)) = (
            bound("exclusiveMinimum").or(bound("minimum")),
            bound("exclusiveMaximum").or(bound("maximum")),
        ) else {
            panic!("`{name}` has no range in the schema: {schema}");
        };
        out.push(Leaf::Fraction(path, min, max));
    } else if types == ["boolean"] {
        out.push(Leaf::Flag(path));
    }
}

fn schema_leaves() -> Vec<Leaf> {
    let schema = Config::json_schema();
    let mut out = Vec::new();
    leaves(&schema, &schema["$defs"], Vec::new(), &mut out);
    out
}

/// A document setting every leaf, each from a (choice, raw) pair: the bounds themselves are
/// picked as often as values between them.
fn document(leaves: &[Leaf], picks: &[(u8, u64)]) -> Value {
    let mut document = Value::Object(Map::new());
    for (leaf, (choice, raw)) in leaves.iter().zip(picks) {
        let (path, value) = match leaf {
            Leaf::Whole(path, min, max) => {
                let value = match choice % 4 {
                    0 => *min,
                    1 => *max,
                    _ => min + raw % (max - min + 1),
                };
                (path, json!(value))
            }
            Leaf::Fraction(path, low, high) => {
                let unit = (*raw % 1_000 + 1) as f64 / 1_002.0;
                (path, json!(low + (high - low) * unit))
            }
            Leaf::Flag(path) => (path, json!(raw % 2 == 0)),
        };
        let (last, parents) = path.split_last().unwrap();
        let mut node = &mut document;
        for key in parents {
            node = node
                .as_object_mut()
                .unwrap()
                .entry(key.clone())
                .or_insert_with(|| json!({}));
        }
        node[last.as_str()] = value;
    }
    document
}

#[test]
fn every_count_duration_and_size_in_the_schema_has_a_range() {
    // `leaves` refuses a numeric key without one.
    assert!(schema_leaves().len() > 40);
}

proptest! {
    // A dozen servers take a few seconds; a failing case prints its configuration, so nothing is
    // persisted under tests/.
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_configuration_within_the_schema_starts_serves_and_stops_without_a_panic(
        picks in proptest::collection::vec((any::<u8>(), any::<u64>()), 80)
    ) {
        let leaves = schema_leaves();
        prop_assert!(leaves.len() <= picks.len());
        let text = document(&leaves, &picks).to_string();
        // Rules across keys (a query no larger than a message…) are not ranges: skip what they refuse.
        let config = Config::from_yaml(&text, "generated");
        prop_assume!(config.is_ok());
        let config = config.unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let retention = config.retention.clone();
            let mut app = spawn_app_with(|c| {
                *c = config;
                c.server.listen = "127.0.0.1:0".parse().unwrap();
            })
            .await;
            drop(app.ws_acked("alice").await);
            let answer = app.post("alice", "{ me { id } }", json!({})).await;
            // Served: the query's answer, or a refusal with the server's own code (a generated
            // `max_tokens: 1` refuses any query).
            let served = answer["data"]["me"]["id"] == "alice"
                || answer["errors"][0]["extensions"]["code"].is_string();
            assert!(served, "{text}\n{answer}");
            palisade::retention::run_once(&app.state.db, &retention, &app.state.metrics)
                .await
                .unwrap();
            app.begin_shutdown();
            app.stopped().await.unwrap();
        });
    }
}

/// Every first segment the server routes besides GraphQL (src/routes.rs, src/webapp.rs,
/// src/devlogin.rs): a GraphQL path on one of them overlaps a route, which the router refuses by
/// panicking at startup.
#[test]
fn a_graphql_path_on_any_of_the_servers_own_routes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for first in [
        "metrics", "healthz", "readyz", "graphiql", "admin", "api", "app", "auth",
    ] {
        let (ok, stderr) =
            check_config(dir.path(), &format!("server:\n  graphql_path: /{first}\n"));
        assert!(!ok, "/{first} accepted");
        assert!(
            stderr.contains(&format!("overlaps the server's own /{first} route")),
            "for /{first}: {stderr}"
        );
    }
}

//! The hardening.yaml reference in Markdown, generated from the JSON Schema (and so from the doc
//! comments on the config structs). The README embeds it; a test fails when the two drift.

use serde_json::{Map, Value};

use super::Config;
use super::units::{ByteSize, Duration};

pub const BEGIN_MARKER: &str =
    "<!-- BEGIN hardening.yaml reference (generated: palisade config-docs) -->";
pub const END_MARKER: &str = "<!-- END hardening.yaml reference -->";

/// One table per top-level section, one row per key.
pub fn markdown() -> String {
    let schema = Config::json_schema();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = String::new();
    for (section, property) in properties(&schema) {
        out.push_str(&format!(
            "#### `{section}`\n\n{}\n\n",
            text(property, &defs)
        ));
        out.push_str("| key | default | range | meaning |\n|---|---|---|---|\n");
        if let Some(target) = resolve(property, &defs) {
            rows(target, &defs, section, &mut out);
        }
        out.push('\n');
    }
    out
}

fn rows(schema: &Value, defs: &Map<String, Value>, prefix: &str, out: &mut String) {
    for (key, property) in properties(schema) {
        let path = format!("{prefix}.{key}");
        // A nested section (an object with its own keys) gets its keys listed, not a JSON blob.
        match resolve(property, defs) {
            Some(target) if target.get("properties").is_some() => rows(target, defs, &path, out),
            _ => out.push_str(&format!(
                "| `{path}` | {} | {} | {} |\n",
                default_of(property),
                range_of(property),
                text(property, defs).replace('|', "\\|")
            )),
        }
    }
}

fn properties(schema: &Value) -> Vec<(&str, &Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}

fn resolve<'a>(property: &'a Value, defs: &'a Map<String, Value>) -> Option<&'a Value> {
    let reference = property.get("$ref").and_then(Value::as_str)?;
    defs.get(reference.rsplit('/').next()?)
}

fn text(property: &Value, defs: &Map<String, Value>) -> String {
    let own = property.get("description").and_then(Value::as_str);
    let fallback = resolve(property, defs)
        .and_then(|t| t.get("description"))
        .and_then(Value::as_str);
    own.or(fallback)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The bounds a validator enforces, in the unit the key is written in (`1s – 10m`, `1 – 64`).
fn range_of(property: &Value) -> String {
    let bound = |key: &str| {
        let value = property.get(key)?;
        Some(
            match (
                property.get("format").and_then(Value::as_str),
                value.as_u64(),
            ) {
                (Some("duration"), Some(secs)) => Duration::secs(secs).to_string(),
                (Some("byte-size"), Some(bytes)) => ByteSize(bytes).to_string(),
                _ => value.to_string(),
            },
        )
    };
    // Nothing here can be negative, so a lower bound of zero goes without saying.
    let low = bound("minimum")
        .filter(|_| property.get("minimum").and_then(Value::as_u64) != Some(0))
        .map(|v| format!("{v} ≤"))
        .or_else(|| bound("exclusiveMinimum").map(|v| format!("{v} <")));
    let high = bound("maximum")
        .map(|v| format!("≤ {v}"))
        .or_else(|| bound("exclusiveMaximum").map(|v| format!("< {v}")));
    match (low, high) {
        (None, None) => "—".into(),
        (low, high) => [low, Some("x".into()), high]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn default_of(property: &Value) -> String {
    match property.get("default") {
        None | Some(Value::Null) => "unset".into(),
        Some(Value::String(s)) => format!("`{s}`"),
        Some(other) => format!("`{}`", other.to_string().replace('|', "\\|")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_key_of_every_section_has_a_row_with_a_meaning() {
        let md = super::markdown();
        for key in [
            "`server.listen`",
            "`auth.jwt.leeway`",
            "`operations.rate_limit.warn_at`",
            "`retention.cleanup_every`",
        ] {
            assert!(md.contains(key), "{key} missing from\n{md}");
        }
        assert!(!md.contains("|  |"), "a key lacks its doc comment:\n{md}");
    }
}

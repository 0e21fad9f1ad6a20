//! What a reload changes, sorted by when each change takes effect. The keys are the dotted paths
//! of the leaves that differ, so the log names exactly what moved.

use std::path::Path;

use serde_json::Value;

use crate::config::Config;

/// Key paths (and their children) read from the live configuration at each operation.
const AT_NEXT_OPERATION: [&str; 11] = [
    "operations.rate_limit",
    "payload.max_query_bytes",
    "payload.max_tokens",
    "payload.max_depth",
    "payload.max_complexity",
    "payload.max_aliases",
    "payload.max_root_fields",
    "payload.max_directives",
    "payload.max_input_nesting",
    "payload.content",
    "topics",
];

/// Key paths the retention job reads when it runs: a change waits for its next scheduled cleanup.
const AT_NEXT_CLEANUP: [&str; 1] = ["retention"];

/// The changed keys of one reload, by when they apply.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub at_next_operation: Vec<String>,
    pub at_next_cleanup: Vec<String>,
    pub needs_restart: Vec<String>,
}

fn under(key: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        key == *p
            || key
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Dotted paths of the leaves that differ between two configurations.
fn changed_keys(old: &Value, new: &Value, prefix: &str, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                changed_keys(
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    &path,
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

impl Changes {
    pub fn between(old: &Config, new: &Config) -> Self {
        let mut changes = Self::default();
        let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
            return changes;
        };
        let mut changed = Vec::new();
        changed_keys(&old, &new, "", &mut changed);
        for key in changed {
            let list = if under(&key, &AT_NEXT_OPERATION) {
                &mut changes.at_next_operation
            } else if under(&key, &AT_NEXT_CLEANUP) {
                &mut changes.at_next_cleanup
            } else {
                &mut changes.needs_restart
            };
            list.push(key);
        }
        changes
    }

    /// One line saying what applies when.
    pub fn log(&self, path: &Path) {
        let path = path.display();
        let (now, cleanup, restart) = (
            &self.at_next_operation,
            &self.at_next_cleanup,
            &self.needs_restart,
        );
        if cleanup.is_empty() && restart.is_empty() {
            tracing::info!(%path, at_next_operation = ?now, "configuration reloaded");
        } else {
            tracing::warn!(
                %path,
                at_next_operation = ?now,
                at_next_cleanup = ?cleanup,
                needs_restart = ?restart,
                "configuration reloaded: at_next_operation applies now, at_next_cleanup at the next scheduled retention cleanup (none runs now), needs_restart not until a restart"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_changed_key_is_sorted_by_when_it_applies() {
        let old = Config::default();
        let mut new = old.clone();
        new.operations.rate_limit.limit = 5;
        new.payload.max_depth = 3;
        new.retention.audit_logs = "30d".parse().unwrap();
        new.server.listen = "127.0.0.1:9999".parse().unwrap();
        new.connections.max_per_user = 2;
        assert_eq!(
            Changes::between(&old, &new),
            Changes {
                at_next_operation: vec![
                    "operations.rate_limit.limit".into(),
                    "payload.max_depth".into()
                ],
                at_next_cleanup: vec!["retention.audit_logs".into()],
                needs_restart: vec!["server.listen".into(), "connections.max_per_user".into()],
            }
        );
    }
}

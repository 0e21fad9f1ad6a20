//! Hot reload of hardening.yaml: on SIGHUP, or when the file changes (polled, debounced), the file
//! is validated exactly as `check-config` does and, if valid, stored in the live configuration in
//! one step. Operation budgets, the per-operation payload limits, the content policy and the topic
//! rules read that handle on every operation, so they change on open connections; every other
//! changed key is reported as needing a restart.
//! An invalid file keeps the running configuration. Both outcomes are counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::auth::secret::HmacSecret;
use crate::config::{Config, LiveConfig, Tls};
use crate::metrics::Metrics;

/// How often the file's modification time is looked at.
const POLL: Duration = Duration::from_millis(500);

/// Key paths (and their children) read from the live configuration at each operation; a change
/// anywhere else needs a restart.
const LIVE_KEYS: [&str; 11] = [
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

/// Reads and validates a configuration file as `check-config` does: the YAML rules and the key
/// files it names. The error text names the file, line, column and key path.
pub fn load_checked(path: &Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    // The secret is irrelevant to whether the key files load.
    let no_secret = HmacSecret {
        bytes: Vec::new(),
        development: false,
    };
    Verifier::new(&config.auth.jwt, &no_secret)
        .map_err(|e| format!("{}: {e:#}", path.display()))?;
    Ok(config)
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

/// The changed keys that only a restart applies.
pub fn needing_restart(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    changed_keys(&old, &new, "", &mut changed);
    changed.retain(|key| {
        !LIVE_KEYS
            .iter()
            .any(|live| key == live || key.starts_with(&format!("{live}.")))
    });
    changed
}

/// Applies `path` to `live` if it is valid; returns whether it was applied.
pub fn reload(path: &Path, live: &LiveConfig, metrics: &Metrics) -> bool {
    match load_checked(path) {
        Ok(new) => {
            let restart = needing_restart(&live.load(), &new);
            live.store(Arc::new(new));
            metrics.config_reloads.with_label_values(&["ok"]).inc();
            if restart.is_empty() {
                tracing::info!(path = %path.display(), "configuration reloaded");
            } else {
                tracing::warn!(path = %path.display(), needs_restart = ?restart, "configuration reloaded; these changes take effect only after a restart");
            }
            true
        }
        Err(error) => {
            metrics.config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(path = %path.display(), %error, "configuration reload refused; the running configuration stays");
            false
        }
    }
}

/// Re-reads the TLS certificate and key (SIGHUP after a renewal); new connections use them, and
/// a failure keeps the current ones.
async fn reload_certificate(config: &RustlsConfig, files: &Tls) {
    match config.reload_from_pem_file(&files.cert, &files.key).await {
        Ok(()) => tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded"),
        Err(error) => {
            tracing::error!(cert = %files.cert.display(), %error, "TLS certificate reload failed; keeping the current one")
        }
    }
}

/// The file's modification time, the baseline `watch` compares against. Taken when the running
/// configuration is loaded, so an edit made before the watcher starts is still noticed.
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads on SIGHUP and when the file's modification time moves from `seen`, until `shutdown`.
pub async fn watch(
    path: PathBuf,
    mut seen: Option<SystemTime>,
    live: LiveConfig,
    tls: Option<(RustlsConfig, Tls)>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut hangup = hangup_signals();
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = next_hangup(&mut hangup) => {
                reload(&path, &live, &metrics);
                if let Some((config, files)) = &tls {
                    reload_certificate(config, files).await;
                }
                seen = modified(&path);
            }
            _ = poll.tick() => {
                let now = modified(&path);
                if now != seen {
                    // Debounce: editors write in several steps; wait until the file settles.
                    tokio::time::sleep(POLL).await;
                    seen = modified(&path);
                    reload(&path, &live, &metrics);
                }
            }
        }
    }
}

#[cfg(unix)]
fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(unix)]
async fn next_hangup(signals: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Option<()> {
    None
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_outside_the_live_keys_need_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.operations.rate_limit.limit = 5;
        new.payload.max_depth = 3;
        assert!(needing_restart(&old, &new).is_empty());
        new.server.listen = "127.0.0.1:9999".parse().unwrap();
        new.connections.max_per_user = 2;
        assert_eq!(
            needing_restart(&old, &new),
            ["server.listen", "connections.max_per_user"]
        );
    }
}

//! Hot reload of hardening.yaml: on SIGHUP, or when the file changes (polled). The file is read
//! once it has settled, validated exactly as `check-config` does, and, if valid, stored in the
//! live configuration in one step.
//!
//! What a reload applies is what [`changes::Changes`] logs: operation budgets, the per-operation
//! payload limits, the content policy and the topic rules at the next operation on open
//! connections; `retention` at the next scheduled cleanup (never within the reload itself); every
//! other changed key only after a restart.
//!
//! A reload never widens access by accident: a file that is empty, or lacks a top-level section
//! the running file has (an editor or a copy caught halfway), is refused like an invalid one, and
//! the running configuration stays. Text identical to what was last handled is not reloaded
//! again, so one save followed by a SIGHUP is one reload. Both outcomes are counted.

mod changes;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::auth::secret::HmacSecret;
use crate::config::{Config, LiveConfig, Tls};
use crate::metrics::Metrics;

/// How often the file's modification time is looked at, and how long its text must stay the same
/// before it is read as finished.
const POLL: Duration = Duration::from_millis(500);

/// Most rounds of waiting for a file that keeps changing; then the latest text is taken.
const SETTLE_ROUNDS: usize = 10;

/// Validates configuration text as `check-config` does: the YAML rules and the key files it
/// names. The error text names the file, line, column and key path.
pub fn checked(text: &str, path: &Path) -> Result<Config, String> {
    let config = Config::from_yaml(text, &path.display().to_string()).map_err(|e| e.to_string())?;
    // The secret is irrelevant to whether the key files load.
    let no_secret = HmacSecret {
        bytes: Vec::new(),
        development: false,
    };
    Verifier::new(&config.auth.jwt, &no_secret)
        .map_err(|e| format!("{}: {e:#}", path.display()))?;
    Ok(config)
}

/// Reads and validates a configuration file as `check-config` does.
pub fn load_checked(path: &Path) -> Result<Config, String> {
    checked(&read(path)?, path)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))
}

/// Top-level sections written in configuration text; `None` when the text holds no mapping at all
/// (empty, only comments, or `{}`).
fn sections(text: &str) -> Option<BTreeSet<String>> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let keys: BTreeSet<String> = value
        .as_mapping()?
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    (!keys.is_empty()).then_some(keys)
}

/// What the watcher last handled: the text of the file (applied or refused), its modification
/// time, and the sections of the file the running configuration came from.
pub struct Baseline {
    text: Option<String>,
    modified: Option<SystemTime>,
    sections: BTreeSet<String>,
}

impl Baseline {
    /// The file as the running configuration was loaded from it, so that an edit made before the
    /// watcher starts is still noticed.
    pub fn read(path: &Path) -> Self {
        let modified = modified(path);
        let text = std::fs::read_to_string(path).ok();
        let sections = text.as_deref().and_then(sections).unwrap_or_default();
        Self {
            text,
            modified,
            sections,
        }
    }
}

/// Why `text` must not replace the running configuration, or the configuration it holds.
fn admit(text: &str, path: &Path, running: &BTreeSet<String>) -> Result<Config, String> {
    let Some(written) = sections(text) else {
        // The same text at startup means "all defaults": on a live server that would silently
        // drop every rule the running file sets, which is how a truncated save widens access.
        return Err(format!(
            "{}: the file is empty; a reload never falls back to the built-in defaults (restart to run on them)",
            path.display()
        ));
    };
    let config = checked(text, path)?;
    let missing: Vec<&String> = running.difference(&written).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{}: the running configuration's section(s) {missing:?} are missing (a half-written file?); restart to remove a section",
            path.display()
        ));
    }
    Ok(config)
}

/// Handles the file's current text: applies it when it is new and admissible. `reloaded` is told
/// of every applied configuration (the retention job reschedules on it).
fn reload(
    path: &Path,
    text: Result<String, String>,
    baseline: &mut Baseline,
    live: &LiveConfig,
    metrics: &Metrics,
    reloaded: &watch::Sender<()>,
) {
    if let Ok(text) = &text
        && baseline.text.as_ref() == Some(text)
    {
        tracing::info!(path = %path.display(), "configuration file unchanged; nothing to reload");
        return;
    }
    let admitted = text.and_then(|text| {
        let config = admit(&text, path, &baseline.sections);
        baseline.text = Some(text);
        config
    });
    match admitted {
        Ok(new) => {
            let changes = changes::Changes::between(&live.load(), &new);
            live.store(Arc::new(new));
            baseline.sections = baseline
                .text
                .as_deref()
                .and_then(sections)
                .unwrap_or_default();
            metrics.config_reloads.with_label_values(&["ok"]).inc();
            changes.log(path);
            reloaded.send_replace(());
        }
        Err(reason) => {
            metrics
                .config_reloads
                .with_label_values(&["rejected"])
                .inc();
            tracing::error!(path = %path.display(), %reason, "configuration reload refused; the running configuration stays");
        }
    }
}

/// The file's text once two reads `POLL` apart agree: editors and copies write in steps.
async fn settled(path: &Path) -> Result<String, String> {
    let mut text = read(path);
    for _ in 0..SETTLE_ROUNDS {
        tokio::time::sleep(POLL).await;
        let again = read(path);
        if again == text {
            break;
        }
        text = again;
    }
    text
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

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// What the watcher needs besides the file.
pub struct Targets {
    pub live: LiveConfig,
    pub tls: Option<(RustlsConfig, Tls)>,
    pub metrics: Arc<Metrics>,
    pub reloaded: watch::Sender<()>,
}

/// Reloads on SIGHUP and when the file's modification time moves, until `shutdown`.
pub async fn watch(
    path: PathBuf,
    mut baseline: Baseline,
    targets: Targets,
    shutdown: CancellationToken,
) {
    let mut hangup = hangup_signals();
    let mut poll = tokio::time::interval(POLL);
    // One branch per trigger; both end in the same `reload`, which drops a repeat of the text it
    // last handled, so a save noticed by the poll and then signalled reloads once.
    loop {
        let signalled = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = next_hangup(&mut hangup) => true,
            _ = poll.tick() => {
                if modified(&path) == baseline.modified {
                    continue;
                }
                false
            }
        };
        // The time is taken before the read, so a write landing during it is seen next poll.
        baseline.modified = modified(&path);
        let text = settled(&path).await;
        reload(
            &path,
            text,
            &mut baseline,
            &targets.live,
            &targets.metrics,
            &targets.reloaded,
        );
        if signalled && let Some((config, files)) = &targets.tls {
            reload_certificate(config, files).await;
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

    fn running(text: &str) -> BTreeSet<String> {
        sections(text).unwrap()
    }

    #[test]
    fn an_empty_or_comment_only_file_is_refused_rather_than_read_as_the_defaults() {
        let path = Path::new("hardening.yaml");
        let was = running("topics:\n  rules: []\n");
        for text in ["", "\n  \n", "# being edited\n", "{}\n"] {
            let error = admit(text, path, &was).unwrap_err();
            assert!(error.contains("the file is empty"), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_file_missing_a_running_section_is_refused_and_names_it() {
        let path = Path::new("hardening.yaml");
        let was = running("operations:\n  rate_limit:\n    limit: 5\ntopics:\n  rules: []\n");
        let error = admit("operations:\n  rate_limit:\n    limit: 6\n", path, &was).unwrap_err();
        assert!(error.contains("[\"topics\"]"), "{error}");
        let more = "operations:\n  rate_limit:\n    limit: 6\ntopics:\n  rules: []\npayload:\n  max_depth: 5\n";
        assert_eq!(admit(more, path, &was).unwrap().payload.max_depth, 5);
    }
}

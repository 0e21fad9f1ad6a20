//! hardening.yaml: every threshold the server enforces, one section per concern.
//!
//! The structs below mirror the file section by section. Their doc comments are the reference: the
//! JSON Schema (`palisade config-schema`) and the README's reference table are generated from them.

mod checks;
mod data;
pub mod docs;
mod limits;
mod locate;
mod server;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

pub use data::{Grant, LogFormat, Logging, Retention, Streams, TopicRule, Topics};
pub use limits::{
    Connections, Content, DocumentCache, HttpLimit, LimitScope, OnExceed, OnUserLimit,
    OperationLimit, Operations, Payload, RateLimit,
};
pub use server::{Auth, Cors, Jwt, OriginCheck, Server, Session, Tls};

/// The whole of hardening.yaml. Every section and key is optional; what is left out takes the
/// default documented on it. Unknown keys are errors.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners, paths, CORS and shutdown.
    #[validate(nested)]
    pub server: Server,
    /// Credentials at `connection_init` and origin checks.
    #[validate(nested)]
    pub auth: Auth,
    /// Limits on WebSocket connections.
    #[validate(nested)]
    pub connections: Connections,
    /// Operation budgets per connection, per user and per IP.
    #[validate(nested)]
    pub operations: Operations,
    /// Size and shape limits checked before execution.
    #[validate(nested)]
    pub payload: Payload,
    /// Topic access rules.
    #[validate(nested)]
    pub topics: Topics,
    /// Event streams.
    #[validate(nested)]
    pub streams: Streams,
    /// Retention of log rows.
    #[validate(nested)]
    pub retention: Retention,
    /// Log format and filter.
    #[validate(nested)]
    pub logging: Logging,
}

/// The configuration as it is now: read at each use by what must follow a reload on live
/// connections (operation budgets and payload limits); a reload stores a new version.
pub type LiveConfig = std::sync::Arc<arc_swap::ArcSwap<Config>>;

/// One broken rule: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path as YAML errors write it, e.g. `operations.rate_limit.warn_at` or `topics.rules[1]`.
    pub path: String,
    /// 1-based line and column in the file, when the key is written there.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

/// Why a configuration file was refused. Lists every problem, not just the first.
#[derive(Debug)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.position {
                Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.source_name)?,
                None => write!(f, "{}: ", self.source_name)?,
            }
            if p.path.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Where the configuration comes from: an explicit path, else `PALISADE_CONFIG`, else
    /// `./hardening.yaml` when it exists, else the built-in defaults (`None`).
    pub fn resolve_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
        explicit
            .or_else(|| std::env::var_os("PALISADE_CONFIG").map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("hardening.yaml")).filter(|p| p.exists()))
    }

    /// Reads and validates a file. The same function serves `serve`, `check-config` and reloads.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![Problem {
                path: String::new(),
                position: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::from_yaml(&text, &name)
    }

    /// Parses and validates YAML text; `source_name` names it in errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        // An empty file, or one holding only comments, means "all defaults".
        let config: Config = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| fail(vec![yaml_problem(&e)]))?
        };
        let mut problems = Vec::new();
        if let Err(errors) = config.validate() {
            flatten(&errors, String::new(), &mut problems);
        }
        problems.extend(
            checks::cross_field(&config)
                .into_iter()
                .map(|(path, message)| Problem {
                    path,
                    position: None,
                    message,
                }),
        );
        if problems.is_empty() {
            return Ok(config);
        }
        for p in &mut problems {
            p.position = locate::locate(text, &p.path);
        }
        problems.sort_by(|a, b| a.position.cmp(&b.position).then(a.path.cmp(&b.path)));
        Err(fail(problems))
    }

    /// The one-line summary `check-config` prints.
    pub fn summary(&self) -> String {
        let r = &self.operations.rate_limit;
        format!(
            "listen {}, auth {}, {} ops/{} per connection (warn at {:.0}%, {:?} past it), max {} connections/user, {} topic rules",
            self.server.listen,
            if self.auth.required { "required" } else { "optional" },
            r.limit,
            r.window,
            r.warn_at * 100.0,
            r.on_exceed,
            self.connections.max_per_user,
            self.topics.rules.len(),
        )
        .replace("Disconnect", "disconnect")
        .replace("Reject", "reject")
    }

    /// The JSON Schema of hardening.yaml, generated from these structs.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).expect("a schema is plain JSON")
    }
}

fn yaml_problem(e: &serde_yaml::Error) -> Problem {
    // yaml_serde's message is "path: what is wrong at line L column C"; keep its path, move the
    // position into our own format.
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(i) if e.location().is_some() => text[..i].to_string(),
        _ => text,
    };
    let (path, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
        _ => (String::new(), message),
    };
    Problem {
        path,
        position: e.location().map(|l| (l.line(), l.column())),
        message,
    }
}

fn flatten(errors: &ValidationErrors, prefix: String, out: &mut Vec<Problem>) {
    for (field, kind) in errors.errors() {
        let path = if prefix.is_empty() {
            field.to_string()
        } else {
            format!("{prefix}.{field}")
        };
        match kind {
            ValidationErrorsKind::Struct(inner) => flatten(inner, path, out),
            ValidationErrorsKind::List(items) => {
                for (index, inner) in items {
                    flatten(inner, format!("{path}[{index}]"), out);
                }
            }
            ValidationErrorsKind::Field(list) => {
                for error in list {
                    out.push(Problem {
                        path: path.clone(),
                        position: None,
                        message: describe(error),
                    });
                }
            }
        }
    }
}

fn describe(error: &validator::ValidationError) -> String {
    if let Some(message) = &error.message {
        return message.to_string();
    }
    // Durations and sizes are strings in the parameters; they read best unquoted (`at most 1h`).
    let param = |name: &str| {
        error.params.get(name).map(|v| match v {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    };
    let bounds = [
        ("min", "at least"),
        ("max", "at most"),
        ("exclusive_min", "greater than"),
        ("exclusive_max", "less than"),
    ];
    let parts: Vec<String> = bounds
        .iter()
        .filter_map(|(key, words)| param(key).map(|v| format!("{words} {v}")))
        .collect();
    let got = param("value")
        .map(|v| format!(" (got {v})"))
        .unwrap_or_default();
    match error.code.as_ref() {
        "range" => format!("must be {}{got}", parts.join(" and ")),
        "length" => format!("must have {} item(s)", parts.join(" and ")),
        code => format!("is invalid ({code}){got}"),
    }
}

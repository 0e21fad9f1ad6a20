//! The `palisade` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use crate::auth::jwt;
use crate::auth::secret::HmacSecret;
use crate::config::Config;
use crate::startup::{Application, DatabaseSource, Settings};
use crate::{db, telemetry};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "A hardened GraphQL subscriptions server"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve {
        /// hardening.yaml to use (else PALISADE_CONFIG, else ./hardening.yaml, else defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Benchmarks only: run without the per-operation guard (depth, complexity, aliases,
        /// tokens, directives, the operation budget), to measure what it costs. Connection-level
        /// bounds (message bytes, operations per connection, queued bytes) stay on. A warning is
        /// logged at startup.
        #[arg(long)]
        unguarded: bool,
    },
    /// Validate a hardening.yaml; exit 0 with a summary, or non-zero naming each problem.
    CheckConfig { path: Option<PathBuf> },
    /// Print the JSON Schema of hardening.yaml.
    ConfigSchema,
    /// Print the hardening.yaml reference in Markdown (as embedded in the README).
    ConfigDocs,
    /// Print the GraphQL schema in SDL (as committed in schema.graphql).
    PrintSchema,
    /// Mint a JWT signed with the configured HMAC secret, for GraphiQL and local testing.
    Token {
        /// The subject (user id).
        #[arg(long)]
        sub: String,
        /// Extra claims as key=value; a value that parses as JSON is kept as JSON.
        #[arg(long = "claim", value_parser = parse_claim)]
        claims: Vec<(String, Value)>,
        /// Lifetime, e.g. 1h or 30m.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_claim(raw: &str) -> Result<(String, Value), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}` is not key=value"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let default = Command::Serve {
        config: None,
        unguarded: false,
    };
    match cli.command.unwrap_or(default) {
        Command::Serve { config, unguarded } => {
            serve(config, unguarded).await.map(|()| ExitCode::SUCCESS)
        }
        Command::CheckConfig { path } => Ok(check_config(path)),
        Command::ConfigSchema => {
            println!("{}", serde_json::to_string_pretty(&Config::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::ConfigDocs => {
            print!("{}", crate::config::docs::markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::PrintSchema => {
            print!("{}", crate::graphql::sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            sub,
            claims,
            ttl,
            config,
        } => {
            let (config, _) = load(config)?;
            let secret = HmacSecret::resolve(&config.auth.jwt.secret_env)?;
            let token = jwt::mint(
                &secret,
                &config.auth.jwt,
                &sub,
                Map::from_iter(claims),
                Duration::from(ttl),
            )?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(explicit: Option<PathBuf>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let path = Config::resolve_path(explicit);
    let config = match &path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    Ok((config, path))
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    let Some(path) = Config::resolve_path(path) else {
        eprintln!(
            "no configuration file: pass a path, set PALISADE_CONFIG, or create ./hardening.yaml"
        );
        return ExitCode::from(2);
    };
    // Key files are part of the configuration: a bad one fails here, not at deploy time.
    let loaded = crate::reload::load_checked(&path);
    match loaded {
        Ok(config) => {
            println!("{}: ok: {}", path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>, unguarded: bool) -> anyhow::Result<()> {
    let (config, config_path) = load(config)?;
    telemetry::init(&config.logging);
    let jwt_secret = HmacSecret::resolve(&config.auth.jwt.secret_env)?;
    match &config_path {
        Some(path) => tracing::info!(path = %path.display(), "configuration loaded"),
        None => tracing::info!("no hardening.yaml found: running on built-in defaults"),
    }
    let settings = Settings {
        database: DatabaseSource::Url(
            std::env::var("DATABASE_URL").unwrap_or_else(|_| db::DEFAULT_URL.to_string()),
        ),
        redis_url: std::env::var("REDIS_URL")
            .ok()
            .filter(|url| !url.is_empty()),
        jwt_secret,
        session_secrets: crate::auth::SessionStore::secrets_from_env(&config.auth.session),
        publish_key: crate::publish::PublishKey::from_env(&config.auth.publish_key_env),
        config_path,
        config,
        unguarded,
    };
    let jwt = &settings.config.auth.jwt;
    // The development token is HMAC-signed: with a public key configured there is none to offer.
    if settings.jwt_secret.development && jwt.public_key_file.is_none() && jwt.jwks_file.is_none() {
        announce_development_secret(&settings)?;
    }
    let app = Application::build(settings)
        .await
        .context("starting Palisade")?;
    tracing::info!(address = %app.local_addr(), "listening");
    app.run_until_stopped(shutdown_signal()).await
}

fn announce_development_secret(settings: &Settings) -> anyhow::Result<()> {
    let jwt = &settings.config.auth.jwt;
    // The `service` role lets the newcomer publish as well as subscribe (the shipped topic rules
    // reserve publishing to it).
    let roles = Map::from_iter([(
        settings.config.topics.roles_claim.clone(),
        serde_json::json!(["service"]),
    )]);
    let token = jwt::mint(
        &settings.jwt_secret,
        jwt,
        "dev",
        roles,
        Duration::from_secs(24 * 3600),
    )?;
    tracing::warn!(
        "{} is unset: using a DEVELOPMENT-ONLY JWT secret from {}/dev-secret. Never run like this in production.",
        jwt.secret_env,
        crate::auth::secret::DEV_DIR
    );
    crate::devtoken::remember(&token);
    let port = settings.config.server.listen.port();
    eprintln!(
        "\n  GraphiQL: http://localhost:{port}{}\n  Paste into its Headers tab (valid 24h, user `dev`, role `service`):\n  {{\"Authorization\": \"Bearer {token}\"}}\n",
        settings.config.server.graphql_path
    );
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

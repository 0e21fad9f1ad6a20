//! Logging: `tracing` to stderr, as JSON lines or human-readable text (`logging.format`),
//! filtered by `RUST_LOG` when set, else by `logging.filter`. Lines about a connection carry its
//! `connection_id`, `user_id` and `instance` through the connection's span.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Logging};

pub fn init(logging: &Logging) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&logging.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(logging.format == LogFormat::Pretty && std::io::stderr().is_terminal());
    let result = match logging.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

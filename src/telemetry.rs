//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as JSON when
//! `PALISADE_LOG_FORMAT=json` and human-readable otherwise.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result =
        if std::env::var("PALISADE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
            builder.json().with_current_span(true).try_init()
        } else {
            builder.try_init()
        };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

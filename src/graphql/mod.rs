//! The GraphQL schema and what every operation can see: the bus, this instance, and the identity
//! of whoever sent it.

mod observe;
mod types;

use std::sync::Arc;
use std::time::Instant;

use async_graphql::Schema;

use crate::auth::Identity;
use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;

pub use types::{Mutation, Query, Subscription};

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Facts about this running instance, for `serverInfo`.
pub struct Instance {
    pub id: String,
    pub started: Instant,
}

/// Attached to each operation: who sent it, and on which connection.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub identity: Option<Identity>,
    /// The WebSocket connection id; `None` for HTTP requests.
    pub connection_id: Option<String>,
}

/// Builds the schema with the shape limits of `payload` that async-graphql enforces itself.
pub fn build(
    config: &Config,
    bus: Arc<dyn Bus>,
    instance: Arc<Instance>,
    metrics: Arc<Metrics>,
) -> AppSchema {
    let payload = &config.payload;
    let mut builder = Schema::build(Query, Mutation, Subscription)
        .data(bus)
        .data(instance)
        .extension(observe::Observe(metrics))
        .limit_depth(payload.max_depth as usize)
        .limit_complexity(payload.max_complexity as usize)
        .limit_directives(payload.max_directives as usize)
        .limit_recursive_depth(payload.max_input_nesting as usize);
    if !payload.introspection {
        builder = builder.disable_introspection();
    }
    if !payload.field_suggestions {
        builder = builder.disable_suggestions();
    }
    builder.finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription).finish().sdl()
}

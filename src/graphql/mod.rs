//! The GraphQL schema and what every operation can see: the bus, this instance, and the identity
//! of whoever sent it.

mod chat;
mod connection;
pub mod documents;
mod grant;
mod observe;
mod presence;
mod share;
mod types;

use std::sync::Arc;
use std::time::Instant;

use async_graphql::{Context, ErrorExtensions, Schema};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::audit::{Audit, Entry};
use crate::auth::{Authenticator, Identity};
use crate::bus::{Bus, BusError, Delivery, EventId, Replays};
use crate::config::{Config, LiveConfig};
use crate::db::Database;
use crate::error::Error;
use crate::limits::guard::Guard;
use crate::limits::per_operation::OperationLimits;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::topics::{self, Action, Decision};
use crate::transport::control::ConnectionHandle;

pub use grant::Ending;
use share::Shares;
pub use share::{Seat, recheck_parked};
pub use types::Query;

use async_graphql::{MergedObject, MergedSubscription};

#[derive(MergedObject, Default)]
pub struct Mutation(
    types::EventMutation,
    chat::ChatMutation,
    connection::ConnectionMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(
    types::EventSubscription,
    chat::ChatSubscription,
    connection::ConnectionSubscription,
    presence::PresenceSubscription,
);

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Facts about this running instance, for `serverInfo`.
pub struct Instance {
    pub id: String,
    pub started: Instant,
}

/// Attached to each operation: who sent it, from where, and on which connection.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// Shared by every operation of a connection, however large its claims.
    pub identity: Option<Arc<Identity>>,
    /// The WebSocket connection id; `None` for HTTP requests.
    pub connection_id: Option<String>,
    pub ip: Option<String>,
    /// The WebSocket connection itself, for notices and `refreshAuth`.
    pub connection: Option<ConnectionHandle>,
}

/// Checks the topic's length and its rule for the caller; a denial is audited and answered with
/// FORBIDDEN on this operation only.
pub async fn authorize(
    ctx: &Context<'_>,
    topic: &str,
    action: Action,
) -> async_graphql::Result<()> {
    decide(ctx, topic, action, None).await
}

/// [`authorize`] for a raw publish of an event of type `kind` (the `publish` mutation): event
/// types only the server writes are refused too.
pub async fn authorize_raw_publish(
    ctx: &Context<'_>,
    topic: &str,
    kind: &str,
) -> async_graphql::Result<()> {
    decide(ctx, topic, Action::Publish, Some(kind)).await
}

async fn decide(
    ctx: &Context<'_>,
    topic: &str,
    action: Action,
    raw_kind: Option<&str>,
) -> async_graphql::Result<()> {
    let identity = ctx.data_opt::<Caller>().and_then(|c| c.identity.as_deref());
    Gate::of(ctx).check(identity, topic, action, raw_kind).await
}

/// What a topic check needs, taken from an operation's context so that a running subscription can
/// check again when its connection's identity changes.
#[derive(Clone)]
struct Gate {
    live: LiveConfig,
    db: Database,
    audit: Audit,
    connection_id: Option<String>,
    ip: Option<String>,
}

impl Gate {
    fn of(ctx: &Context<'_>) -> Self {
        let caller = ctx.data_opt::<Caller>();
        Self {
            live: ctx.data_unchecked::<LiveConfig>().clone(),
            db: ctx.data_unchecked::<Database>().clone(),
            audit: ctx.data_unchecked::<Audit>().clone(),
            connection_id: caller.and_then(|c| c.connection_id.clone()),
            ip: caller.and_then(|c| c.ip.clone()),
        }
    }

    /// The rules in force now (a reload applies to the next check) decide for `identity`; with
    /// `raw_kind`, the event type of a raw publish is checked too.
    async fn check(
        &self,
        identity: Option<&Identity>,
        topic: &str,
        action: Action,
        raw_kind: Option<&str>,
    ) -> async_graphql::Result<()> {
        let config = self.live.load();
        crate::bus::check_topic(topic, config.payload.max_topic_bytes)
            .map_err(|violation| Error::Limit(violation).extend())?;
        let decision = match raw_kind {
            Some(kind) => {
                topics::check_raw_publish(&config.topics, &self.db, identity, topic, kind).await
            }
            None => topics::check(&config.topics, &self.db, identity, topic, action).await,
        };
        match decision.map_err(|e| Error::Internal(e).extend())? {
            Decision::Allowed => Ok(()),
            Decision::Denied(reason) => {
                self.audit.record(Entry::topic_denied(
                    identity.map(|i| i.user_id.clone()),
                    self.connection_id.clone(),
                    self.ip.clone(),
                    topic,
                    action,
                    reason,
                ));
                let verb = match (action, raw_kind) {
                    (Action::Subscribe, _) => "subscribe to",
                    (Action::Publish, None) => "publish on",
                    (Action::Publish, Some(_)) => "publish this event type on",
                };
                Err(Error::Forbidden(format!("not allowed to {verb} this topic")).extend())
            }
        }
    }
}

/// Subscribes the caller to `topic` after checking its `subscribe` grant: events after `after`
/// (an event id) are replayed first, and the connection is present on the topic while the
/// returned stream runs. The stream ends, with a FORBIDDEN `error`, when the connection's new
/// credentials no longer have the grant. Shared by every subscription that follows a topic; one
/// that does not resume joins the shared execution of its document ([`share`]) when it can.
pub async fn follow(
    ctx: &Context<'_>,
    topic: &str,
    after: Option<async_graphql::ID>,
) -> async_graphql::Result<BoxStream<'static, Delivery>> {
    let after = after
        .map(|id| id.parse::<EventId>())
        .transpose()
        .map_err(|e| Error::BadUserInput(e).extend())?;
    if let Some(start) = ctx.data_opt::<share::Start>() {
        // A group's own execution: each of its members was authorized, and is present, through
        // its own operation.
        let subscribed = subscribe(ctx, topic, None).await;
        start.report(&subscribed);
        return subscribed;
    }
    authorize(ctx, topic, Action::Subscribe).await?;
    if let (Some(seat), None) = (share::seat(ctx), &after)
        && let Some(joined) = seat.join(ctx.data_unchecked::<Arc<Shares>>()).await
    {
        joined?;
        return park(ctx, seat, topic).await;
    }
    let deliveries = subscribe(ctx, topic, after).await?;
    let present = presence::held(deliveries, presence::enter(ctx, topic).await);
    Ok(grant::while_granted(ctx, topic, present))
}

/// Hands a joined member over to its seat: present on `topic`, its grant re-checked by its
/// connection, its results sent by its group. The stream returned is empty, so the operation's
/// task ends and frees what it held (its async-graphql stream and document); the seat answers
/// for the operation from here on.
async fn park(
    ctx: &Context<'_>,
    seat: &Arc<Seat>,
    topic: &str,
) -> async_graphql::Result<BoxStream<'static, Delivery>> {
    let parked = share::Parked {
        presence: presence::enter(ctx, topic).await,
        regrant: grant::Regrant::of(ctx, topic),
    };
    if seat.park(parked)
        && let Some(caller) = ctx.data_opt::<Caller>()
        && let Some(handle) = &caller.connection
    {
        // The connection re-checks the seats parked when its identity changes; a change that came
        // before this seat was parked is checked here.
        let now = handle.current_identity();
        if !grant::same(now.as_ref(), caller.identity.as_ref()) {
            seat.recheck(now.as_deref()).await;
        }
    }
    Ok(futures_util::stream::empty().boxed())
}

/// The bus's deliveries of `topic`, replaying those after `after` first.
async fn subscribe(
    ctx: &Context<'_>,
    topic: &str,
    after: Option<EventId>,
) -> async_graphql::Result<BoxStream<'static, Delivery>> {
    let bus = ctx.data_unchecked::<Arc<dyn Bus>>();
    // Held while the missed events are read back; they are handed over when `subscribe` returns.
    let replaying = match after {
        Some(_) => {
            let connection = ctx
                .data_opt::<Caller>()
                .and_then(|c| c.connection_id.as_deref());
            Some(ctx.data_unchecked::<Arc<Replays>>().admit(connection).await)
        }
        None => None,
    };
    let deliveries = bus
        .subscribe(topic.to_string(), after)
        .await
        .map_err(|e| match e {
            BusError::UnknownAfter(_) => Error::BadUserInput(e.to_string()).extend(),
            BusError::Unavailable(_) => Error::BusUnavailable(e.into()).extend(),
        })?;
    drop(replaying);
    Ok(deliveries)
}

/// What resolvers reach through the schema data.
pub struct Services {
    pub config: Arc<Config>,
    /// The reloadable configuration the per-operation guard reads.
    pub live: LiveConfig,
    pub operations: Arc<OperationLimits>,
    pub auth: Arc<Authenticator>,
    pub bus: Arc<dyn Bus>,
    pub db: Database,
    pub audit: Audit,
    pub instance: Arc<Instance>,
    pub metrics: Arc<Metrics>,
    pub presence: Arc<Presence>,
    /// Leaves the per-operation guard out (`serve --unguarded`).
    pub unguarded: bool,
}

/// Builds the schema with the shape limits of `payload` that async-graphql enforces itself.
pub fn build(services: Services) -> AppSchema {
    let Services {
        config,
        live,
        operations,
        auth,
        bus,
        db,
        audit,
        instance,
        metrics,
        presence,
        unguarded,
    } = services;
    let payload = &config.payload;
    let guard = Guard {
        live: live.clone(),
        metrics: metrics.clone(),
        audit: audit.clone(),
        operations,
    };
    let replays = Replays::new(&config.streams, &metrics);
    let schema = || {
        let mut builder = Schema::build(Query, Mutation::default(), Subscription::default())
            .data(auth.clone())
            .data(bus.clone())
            .data(db.clone())
            .data(audit.clone())
            .data(instance.clone())
            .data(presence.clone())
            .data(replays.clone())
            // Resolvers read the live configuration (topic rules, content policy), so reloads
            // reach them.
            .data(live.clone())
            // Depth and complexity are measured here but judged by the guard, which reports them
            // with their own codes; this bound is only the parser's safety net.
            .limit_recursive_depth(payload.max_input_nesting.max(payload.max_depth) as usize + 8);
        if !payload.introspection {
            builder = builder.disable_introspection();
        }
        if !payload.field_suggestions {
            builder = builder.disable_suggestions();
        }
        builder
    };
    let shares = Shares::new(schema().finish(), metrics.clone());
    if unguarded {
        tracing::warn!(
            "running without the per-operation guard (--unguarded): no depth, complexity, alias, token, directive or budget limit applies"
        );
    }
    let observe = observe::Observe {
        documents: Arc::new(documents::Documents::new(&payload.document_cache, &metrics)),
        metrics,
        guard: (!unguarded).then_some(guard),
    };
    schema().data(shares).extension(observe).finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query, Mutation::default(), Subscription::default())
        .finish()
        .sdl()
}

//! The root operations.

use std::sync::Arc;

use async_graphql::{
    Context, ErrorExtensions, ID, Json, Object, SimpleObject, Subscription as SubscriptionRoot,
};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::presence::{self, PresenceEntry};
use super::{Caller, Instance, authorize_raw_publish, follow};
use crate::bus::{Bus, Delivery, Event as BusEvent, EventId};
use crate::config::LiveConfig;
use crate::error::Error;
use crate::topics::GAP;

pub struct Query;

#[Object]
impl Query {
    /// This server: version, instance id and uptime.
    async fn server_info(&self, ctx: &Context<'_>) -> ServerInfo {
        let instance = ctx.data_unchecked::<Arc<Instance>>();
        ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: instance.id.clone(),
            uptime_seconds: instance.started.elapsed().as_secs(),
        }
    }

    /// The authenticated caller, or null when anonymous.
    async fn me(&self, ctx: &Context<'_>) -> Option<Me> {
        let identity = ctx.data_opt::<Caller>()?.identity.as_ref()?;
        let config = ctx.data_unchecked::<LiveConfig>().load();
        let claims = identity.shown_claims(&config.auth.session.expose_claims);
        Some(Me {
            id: ID(identity.user_id.clone()),
            claims: Json(Value::Object(claims)),
        })
    }

    /// Who is online on a topic: users with at least one connection subscribed to it (`events`,
    /// `messages` on `conversation:<id>`, or `presence`), on any instance; a user whose instance
    /// stopped is dropped within `streams.presence_ttl`. Sorted by user id. Needs a `subscribe`
    /// grant of the topic's rule (FORBIDDEN otherwise).
    async fn presence(
        &self,
        ctx: &Context<'_>,
        topic: String,
    ) -> async_graphql::Result<Vec<PresenceEntry>> {
        presence::online(ctx, &topic).await
    }
}

#[derive(SimpleObject)]
pub struct ServerInfo {
    version: String,
    instance_id: String,
    uptime_seconds: u64,
}

#[derive(SimpleObject)]
pub struct Me {
    /// The token subject.
    id: ID,
    /// Every claim of the token; for a session, `sub` and the fields of
    /// `auth.session.expose_claims`.
    claims: Json<Value>,
}

#[derive(Default)]
pub struct EventMutation;

#[Object]
impl EventMutation {
    /// Publishes an event into a topic; every subscriber of the topic receives it. Needs a
    /// `publish` grant of the topic's rule (FORBIDDEN otherwise). The types the server writes
    /// itself, `message` (chat messages: use `sendMessage`) and `GAP`, are FORBIDDEN whatever the
    /// topic.
    async fn publish(
        &self,
        ctx: &Context<'_>,
        topic: String,
        #[graphql(name = "type")] kind: String,
        payload: Option<Json<Value>>,
    ) -> async_graphql::Result<Event> {
        authorize_raw_publish(ctx, &topic, &kind).await?;
        let bus = ctx.data_unchecked::<Arc<dyn Bus>>();
        let payload = payload.map(|p| p.0).unwrap_or(Value::Null);
        let event = bus
            .publish(topic, kind, payload)
            .await
            .map_err(|e| Error::BusUnavailable(e.into()).extend())?;
        Ok(Event(event))
    }
}

#[derive(Default)]
pub struct EventSubscription;

#[SubscriptionRoot]
impl EventSubscription {
    /// Events of a topic. With `after` (an event id), events published since then are replayed
    /// first; if more were missed than can be replayed, a `GAP` event comes first. Needs a
    /// `subscribe` grant of the topic's rule (FORBIDDEN otherwise).
    async fn events(
        &self,
        ctx: &Context<'_>,
        topic: String,
        after: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = Event> + use<>> {
        let deliveries = follow(ctx, &topic, after).await?;
        Ok(deliveries.map(move |delivery| match delivery {
            Delivery::Event(event) => Event(event),
            Delivery::Gap { after } => Event(Arc::new(BusEvent {
                id: after.unwrap_or(EventId { ms: 0, seq: 0 }),
                topic: topic.clone(),
                kind: GAP.into(),
                payload: serde_json::json!({ "message": "events were missed; refetch the current state" }),
                published_at: Utc::now(),
            })),
        }))
    }
}

/// An event published into a topic.
pub struct Event(Arc<BusEvent>);

#[Object]
impl Event {
    /// Stream position; pass it as `after` to resume from here.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn topic(&self) -> &str {
        &self.0.topic
    }

    /// Event type chosen by the publisher; `GAP` marks missed events.
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        &self.0.kind
    }

    async fn payload(&self) -> Json<&Value> {
        Json(&self.0.payload)
    }

    async fn published_at(&self) -> DateTime<Utc> {
        self.0.published_at
    }
}

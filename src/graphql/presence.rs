//! Presence in the schema: who is online on a topic (`Query.presence`), their JOINs and LEAVEs
//! (`Subscription.presence`), and [`enter`], which makes a subscription's connection present on
//! its topic for as long as the subscription runs.

use std::collections::VecDeque;
use std::sync::Arc;

use async_graphql::{Context, Enum, ErrorExtensions, ID, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use super::{Caller, authorize};
use crate::bus::{Bus, Delivery};
use crate::error::Error;
use crate::presence::{Change, Guard, Online, Presence, Transition, View, bus_topic, timestamp};
use crate::topics::Action;

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    /// The user came online: their first connection subscribed to the topic.
    Join,
    /// The user went offline: `streams.presence_linger` passed since their last subscription
    /// to the topic ended (re-subscribing within it sends neither this nor a new JOIN), or the
    /// instance serving it stopped and `streams.presence_ttl` passed.
    Leave,
}

/// A user online on a topic.
#[derive(SimpleObject)]
pub struct PresenceEntry {
    user_id: ID,
    /// The user's connections subscribed to the topic, over every instance.
    connections: i32,
    /// When the user came online (their first connection of the current stretch).
    since: DateTime<Utc>,
}

impl From<Online> for PresenceEntry {
    fn from(online: Online) -> Self {
        Self {
            user_id: ID(online.user),
            connections: i32::try_from(online.connections).unwrap_or(i32::MAX),
            since: timestamp(online.since),
        }
    }
}

/// A user coming online on a topic or going offline.
#[derive(SimpleObject)]
pub struct PresenceEvent {
    #[graphql(name = "type")]
    kind: PresenceChange,
    user_id: ID,
    topic: String,
    /// When it happened; for the JOINs a subscription starts with, when the user came online.
    at: DateTime<Utc>,
}

impl From<Transition> for PresenceEvent {
    fn from(t: Transition) -> Self {
        Self {
            kind: match t.change {
                Change::Join => PresenceChange::Join,
                Change::Leave => PresenceChange::Leave,
            },
            user_id: ID(t.user),
            topic: t.topic,
            at: timestamp(t.at),
        }
    }
}

/// Marks the caller's connection present on `topic` until the guard is dropped; `None` (nothing
/// to mark) for anonymous callers and over HTTP.
pub(super) async fn enter(ctx: &Context<'_>, topic: &str) -> Option<Guard> {
    let caller = ctx.data_opt::<Caller>()?;
    let (identity, connection) = (caller.identity.as_ref()?, caller.connection_id.as_ref()?);
    let presence = ctx.data_unchecked::<Arc<Presence>>();
    Some(presence.enter(topic, &identity.user_id, connection).await)
}

/// `stream`, holding `guard` for as long as it runs: the connection leaves the topic when the
/// subscription ends.
pub(super) fn held<S: Stream>(stream: S, guard: Option<Guard>) -> impl Stream<Item = S::Item> {
    stream.map(move |item| {
        let _present = &guard;
        item
    })
}

/// `Query.presence`: the users online on `topic`.
pub(super) async fn online(
    ctx: &Context<'_>,
    topic: &str,
) -> async_graphql::Result<Vec<PresenceEntry>> {
    authorize(ctx, topic, Action::Subscribe).await?;
    let presence = ctx.data_unchecked::<Arc<Presence>>();
    let snapshot = presence
        .online(topic)
        .await
        .map_err(|e| Error::Internal(e).extend())?;
    let mut users: Vec<PresenceEntry> = snapshot.users.into_iter().map(Into::into).collect();
    users.sort_by(|a, b| a.user_id.0.cmp(&b.user_id.0));
    Ok(users)
}

/// The state of one presence subscription.
struct Follow {
    topic: String,
    presence: Arc<Presence>,
    live: BoxStream<'static, Delivery>,
    view: View,
    /// Transitions a resync produced, sent before the next live one.
    pending: VecDeque<Transition>,
    /// This connection is present on the topic while it follows it.
    _present: Option<Guard>,
}

impl Follow {
    /// Reads who is online and queues what the subscriber has not been told. Best-effort: if
    /// the state cannot be read, the subscriber keeps getting live transitions.
    async fn resync(&mut self) {
        match self.presence.online(&self.topic).await {
            Ok(snapshot) => self.pending.extend(self.view.resync(&self.topic, snapshot)),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "presence snapshot failed");
            }
        }
    }

    async fn next(mut self) -> Option<(PresenceEvent, Self)> {
        loop {
            if let Some(transition) = self.pending.pop_front() {
                return Some((transition.into(), self));
            }
            match self.live.next().await? {
                Delivery::Event(event) => {
                    if let Some(transition) = Transition::from_event(&self.topic, &event)
                        && self.view.apply(&transition)
                    {
                        return Some((transition.into(), self));
                    }
                }
                // Transitions were lost: what is online now says what the subscriber missed.
                Delivery::Gap { .. } => self.resync().await,
            }
        }
    }
}

#[derive(Default)]
pub struct PresenceSubscription;

#[Subscription]
impl PresenceSubscription {
    /// JOIN and LEAVE of users on a topic. A user JOINs when their first connection subscribes
    /// to the topic (`events`, `messages` on `conversation:<id>`, or `presence`, on any instance),
    /// and LEAVEs `streams.presence_linger` after their last such subscription ends (so a user
    /// re-subscribing within it never LEAVEs), or within `streams.presence_ttl` after the
    /// instance serving it stopped. The subscription starts with a JOIN for each user already
    /// online (this connection included: subscribing makes it present), then sends each change
    /// once, in order per user. Needs a `subscribe` grant of the topic's rule (FORBIDDEN
    /// otherwise).
    async fn presence(
        &self,
        ctx: &Context<'_>,
        topic: String,
    ) -> async_graphql::Result<impl Stream<Item = PresenceEvent> + use<>> {
        authorize(ctx, &topic, Action::Subscribe).await?;
        let bus = ctx.data_unchecked::<Arc<dyn Bus>>();
        // Followed before the snapshot is read, so no transition falls between the two; the
        // view drops those the snapshot already covers.
        let live = bus
            .subscribe(bus_topic(&topic), None)
            .await
            .map_err(|e| Error::BusUnavailable(e.into()).extend())?;
        let present = enter(ctx, &topic).await;
        let checked_topic = topic.clone();
        let mut follow = Follow {
            presence: ctx.data_unchecked::<Arc<Presence>>().clone(),
            topic,
            live,
            view: View::default(),
            pending: VecDeque::new(),
            _present: present,
        };
        follow.resync().await;
        let events = futures_util::stream::unfold(follow, Follow::next);
        Ok(super::grant::while_granted(ctx, &checked_topic, events))
    }
}

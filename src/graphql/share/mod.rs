//! Shared execution of subscriptions. Subscribers that follow a topic with the same document,
//! operation name and variables get the same results, so each such group runs one execution:
//! every event is resolved and serialized once, and each member gets those bytes inside its own
//! `next` envelope, joined only when its connection writes it. A member still goes through
//! everything an operation does: the guard counts it against its connection's budget and judges
//! its document, its own `follow` checks its grant and makes it present, and it holds one of its
//! connection's operation slots. What it no longer has is a resolver run per event, nor, once it
//! joined, a task and an async-graphql stream of its own: it is *parked* in its seat, which holds
//! its presence and what re-checks its grant, and the group sends its `complete` when the
//! execution ends.
//!
//! The authorization scope of a result is the topic grant alone: `events` and `messages` return
//! the event's own fields, and none of them reads who is asking. Each member's grant was checked
//! when it joined and is checked again when its connection's identity changes: its connection
//! calls [`recheck_parked`] with its parked seats. Until that check ends, events go on reaching it
//! under the grant it had, which its earlier, still valid, credentials gave. A subscription that resumes (`after`) replays on its own and is not shared,
//! nor is an operation with more than one root field.
//!
//! Locks are taken in one order: a seat, the group table, a group's members. A group's members
//! are locked while an event is handed to each of them (a push never waits), so a join or leave
//! of that group waits at most one fan-out.

mod seat;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_graphql::{Request, Response, Variables};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AppSchema;
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::transport::outbox::Outbox;

pub use seat::{Parked, Seat, recheck_parked, seat};

/// This instance's groups, by what their members asked for.
pub struct Shares {
    groups: Mutex<HashMap<Arc<Key>, Arc<Group>>>,
    /// Runs each group's execution. It has the client schema's resolvers and data but none of its
    /// extensions: the guard and the operation counts apply to each member's own operation.
    schema: AppSchema,
    metrics: Arc<Metrics>,
}

/// What makes two subscriptions the same. The variables are compared as sent, so the same values
/// in another order make another group: results are never wrongly shared, only sometimes not.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    query: String,
    operation: Option<String>,
    variables: String,
}

struct Group {
    key: Arc<Key>,
    members: Mutex<Members>,
    /// Whether the execution follows the topic yet; joiners wait for it, so a member gets every
    /// event published after its `subscribe` returned, as an unshared one does.
    ready: watch::Sender<Readiness>,
    /// Cancelled when the execution stops: its stream ended, or its last member left. A joiner
    /// that finds it cancelled starts a new group.
    ended: CancellationToken,
}

#[derive(Default)]
struct Members {
    next: u64,
    by_id: HashMap<u64, Member>,
}

struct Member {
    outbox: Outbox,
    /// The member's `next` envelope up to its payload, built once at the join.
    opening: Arc<str>,
    /// Ended by the group when its execution stops. Weak: the seat holds the group.
    seat: Weak<Seat>,
}

#[derive(Clone)]
enum Readiness {
    Starting,
    Following,
    Failed(async_graphql::Error),
}

/// Request data of a group's own execution, through which its `follow` reports whether it
/// follows the topic.
pub struct Start(Arc<Group>);

impl Start {
    pub fn report<T>(&self, subscribed: &async_graphql::Result<T>) {
        let readiness = match subscribed {
            Ok(_) => Readiness::Following,
            Err(error) => Readiness::Failed(error.clone()),
        };
        self.0.ready.send_replace(readiness);
    }
}

impl Shares {
    pub fn new(schema: AppSchema, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            groups: Mutex::default(),
            schema,
            metrics,
        })
    }

    /// Adds `member` to the running group for `key`, or to a new one.
    fn admit(
        self: &Arc<Self>,
        key: Key,
        variables: Variables,
        mut member: Member,
    ) -> (Arc<Group>, u64) {
        let mut groups = lock(&self.groups);
        if let Some(group) = groups.get(&key) {
            match group.add(member) {
                Ok(id) => return (group.clone(), self.joined(id)),
                // Its last member left and it is stopping: a new group takes its place.
                Err(refused) => member = refused,
            }
        }
        let group = self.start(key, variables);
        groups.insert(group.key.clone(), group.clone());
        let Ok(id) = group.add(member) else {
            unreachable!("a group nobody left yet is open");
        };
        (group, self.joined(id))
    }

    fn joined(&self, member: u64) -> u64 {
        self.metrics.shared_subscribers.inc();
        member
    }

    /// Starts a group's execution. It runs in a task of its own: the one place an event of the
    /// group is resolved, whichever member's connection is busy.
    fn start(self: &Arc<Self>, key: Key, variables: Variables) -> Arc<Group> {
        let group = Arc::new(Group {
            key: Arc::new(key),
            members: Mutex::default(),
            ready: watch::Sender::new(Readiness::Starting),
            ended: CancellationToken::new(),
        });
        let mut request = Request::new(group.key.query.clone())
            .variables(variables)
            .data(Start(group.clone()));
        request.operation_name = group.key.operation.clone();
        let responses = self.schema.execute_stream(request);
        self.metrics.shared_subscriptions.inc();
        tokio::spawn(self.clone().run(group.clone(), responses));
        group
    }

    async fn run(self: Arc<Self>, group: Arc<Group>, mut responses: BoxStream<'static, Response>) {
        loop {
            let response = tokio::select! {
                // Its last member left: nobody is left to send to.
                biased;
                () = group.ended.cancelled() => break,
                response = responses.next() => response,
            };
            let Some(response) = response else { break };
            if !matches!(*group.ready.borrow(), Readiness::Following) {
                // A result before `follow` reported is the execution failing to start.
                let error = response.errors.into_iter().next().map_or_else(
                    || async_graphql::Error::new("the subscription could not start"),
                    |e| async_graphql::Error {
                        message: e.message,
                        source: None,
                        extensions: e.extensions,
                    },
                );
                group.ready.send_replace(Readiness::Failed(error));
                break;
            }
            match serde_json::to_string(&response) {
                Ok(payload) => group.send(&payload.into()),
                Err(error) => {
                    tracing::error!(%error, "a shared subscription result did not serialize")
                }
            }
        }
        // Each member's operation completes now; under the members' lock, so no join slips in
        // between (a joiner sees the group stopping and starts a new one).
        let seats: Vec<_> = {
            let members = lock(&group.members);
            group.ended.cancel();
            members
                .by_id
                .values()
                .filter_map(|m| m.seat.upgrade())
                .collect()
        };
        for seat in seats {
            seat.end(None);
        }
        // Joiners still waiting must not wait forever.
        group.ready.send_if_modified(|r| {
            let starting = matches!(r, Readiness::Starting);
            if starting {
                *r = Readiness::Failed(async_graphql::Error::new("the subscription ended"));
            }
            starting
        });
        let mut groups = lock(&self.groups);
        if groups
            .get(&group.key)
            .is_some_and(|g| Arc::ptr_eq(g, &group))
        {
            groups.remove(&group.key);
        }
        // Give memory back after a burst of groups, not on every end.
        let (len, capacity) = (groups.len(), groups.capacity());
        if capacity > 64 && len * 4 < capacity {
            groups.shrink_to(len * 2);
        }
        self.metrics.shared_subscriptions.dec();
    }

    fn leave(&self, group: &Group, member: u64) {
        let mut members = lock(&group.members);
        if members.by_id.remove(&member).is_some() {
            self.metrics.shared_subscribers.dec();
        }
        // Under the members' lock, so a joiner sees either the member or the group stopping.
        if members.by_id.is_empty() {
            group.ended.cancel();
        }
    }
}

impl Group {
    /// Adds a member, unless the group is stopping; then the member is handed back.
    fn add(&self, member: Member) -> Result<u64, Member> {
        let mut members = lock(&self.members);
        if self.ended.is_cancelled() {
            return Err(member);
        }
        let id = members.next;
        members.next += 1;
        members.by_id.insert(id, member);
        Ok(id)
    }

    /// Hands one result to every member. A member whose connection is closing refuses it; its
    /// operation is being aborted and leaves soon.
    fn send(&self, payload: &Arc<str>) {
        for member in lock(&self.members).by_id.values() {
            member.outbox.next(&member.opening, payload);
        }
    }
}

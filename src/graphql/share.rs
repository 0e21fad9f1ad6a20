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
//! calls [`recheck_parked`] with its parked seats. Until that check ends, events go on reaching it under the grant it had, which its earlier, still valid,
//! credentials gave. A subscription that resumes (`after`) replays on its own and is not shared,
//! nor is an operation with more than one root field.
//!
//! Locks are taken in one order: a seat, the group table, a group's members. A group's members
//! are locked while an event is handed to each of them (a push never waits), so a join or leave
//! of that group waits at most one fan-out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_graphql::http::WebSocketProtocols as Protocols;
use async_graphql::{Context, ErrorExtensions, Request, Response, Variables};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AppSchema;
use super::grant::Regrant;
use crate::auth::Identity;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::presence::Guard;
use crate::transport::outbox::Outbox;
use crate::transport::protocol;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recovering keeps a Drop from ever panicking.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

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

/// An operation's place in a group: given by the transport to every WebSocket operation, taken by
/// `follow` when the operation can share. The transport leaves through it when the client completes
/// the operation, before the task is aborted, so the group sends nothing more under that id even
/// if the client reuses it at once.
pub struct Seat(Mutex<State>);

enum State {
    Open(Box<Open>),
    Taken(Box<Taken>),
    /// Left by the transport (the client completed the operation, the connection ended, or the
    /// join failed): the transport answers for the operation, if anyone does.
    Closed,
    /// Ended by the group or by a lost grant, which sent the operation's last frame itself.
    Ended,
}

/// A member's seat in its group.
struct Taken {
    shares: Arc<Shares>,
    group: Arc<Group>,
    member: u64,
    /// Where the member's own last frame goes: `complete`, or `error` when its grant is gone.
    id: String,
    protocol: Protocols,
    outbox: Outbox,
    /// Set once `follow` made the member present and its task ended.
    parked: Option<Parked>,
}

/// What a parked member holds in place of its task's stream.
pub struct Parked {
    /// Keeps its connection present on the topic until the seat is left or ended.
    pub presence: Option<Guard>,
    pub(super) regrant: Regrant,
}

/// What a seat keeps until it is taken: the operation as sent, and where its results go.
struct Open {
    query: String,
    operation: Option<String>,
    variables: Variables,
    protocol: Protocols,
    id: String,
    outbox: Outbox,
}

struct Group {
    key: Arc<Key>,
    members: Mutex<Members>,
    /// Whether the execution follows the topic yet; joiners wait for it, so a member gets every
    /// event published after its `subscribe` returned, as an unshared one does.
    ready: watch::Sender<Readiness>,
    /// Cancelled when the execution stops: its stream ended, or its last member left. Members'
    /// streams end with it, so their operations complete.
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
    seat: std::sync::Weak<Seat>,
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

/// The caller's seat when its operation can share: a WebSocket operation with one root field.
pub fn seat<'a>(ctx: &'a Context<'_>) -> Option<&'a Arc<Seat>> {
    let seat = ctx.data_opt::<Arc<Seat>>()?;
    // async-graphql runs every root field of a subscription as a stream of its own; a group runs
    // the whole document, so it may hold only the one field this member follows.
    let roots = &ctx.query_env.operation.node.selection_set.node.items;
    (roots.len() == 1).then_some(seat)
}

impl Seat {
    pub fn new(request: &Request, protocol: Protocols, id: &str, outbox: &Outbox) -> Arc<Self> {
        Arc::new(Self(Mutex::new(State::Open(Box::new(Open {
            query: request.query.clone(),
            operation: request.operation_name.clone(),
            variables: request.variables.clone(),
            protocol,
            id: id.to_string(),
            outbox: outbox.clone(),
        })))))
    }

    /// A seat nobody can take, for tests of the operation table.
    #[cfg(test)]
    pub fn taken() -> Arc<Self> {
        Arc::new(Self(Mutex::new(State::Closed)))
    }

    /// Joins the group running this operation, starting it when none runs, and waits until it
    /// follows the topic; from then on the group sends the member's results, and the caller parks
    /// the seat. `None` when the seat cannot be taken: taken already, or variables that have no
    /// text to compare.
    pub async fn join(self: &Arc<Self>, shares: &Arc<Shares>) -> Option<async_graphql::Result<()>> {
        let group = {
            let mut state = lock(&self.0);
            let State::Open(open) = &*state else {
                return None;
            };
            let variables = serde_json::to_string(&open.variables).ok()?;
            let State::Open(open) = std::mem::replace(&mut *state, State::Closed) else {
                return None;
            };
            let Open {
                query,
                operation,
                variables: values,
                protocol,
                id,
                outbox,
            } = *open;
            let key = Key {
                query,
                operation,
                variables,
            };
            let member = Member {
                opening: protocol::next_opening(protocol, &id).into(),
                outbox: outbox.clone(),
                seat: Arc::downgrade(self),
            };
            let (group, member) = shares.admit(key, values, member);
            *state = State::Taken(Box::new(Taken {
                shares: shares.clone(),
                group: group.clone(),
                member,
                id,
                protocol,
                outbox,
                parked: None,
            }));
            group
        };
        // Until the join succeeds, whatever drops this future leaves the group.
        let mut seated = Seated(Some(self));
        let readiness = group
            .ready
            .subscribe()
            .wait_for(|r| !matches!(r, Readiness::Starting))
            .await
            .map(|r| r.clone());
        match readiness {
            Ok(Readiness::Following) => {}
            Ok(Readiness::Failed(error)) => return Some(Err(error)),
            // The group holds the sender while anyone holds the group.
            Ok(Readiness::Starting) | Err(_) => {
                let error = anyhow::anyhow!("a shared subscription never started");
                return Some(Err(Error::Internal(error).extend()));
            }
        }
        seated.0 = None;
        Some(Ok(()))
    }

    /// Parks a joined member: `parked` stands in for its task from now on. False when the seat
    /// was ended or left meanwhile (then `parked` is dropped, and the member with it).
    pub fn park(&self, parked: Parked) -> bool {
        match &mut *lock(&self.0) {
            State::Taken(taken) => {
                taken.parked = Some(parked);
                true
            }
            _ => false,
        }
    }

    /// Whether the seat answers for its operation (taken, or ended with its last frame sent):
    /// then the operation's task ends without a frame of its own, and a taken seat keeps its
    /// operation slot.
    pub fn answers(&self) -> bool {
        matches!(*lock(&self.0), State::Taken(_) | State::Ended)
    }

    /// Whether the seat is in a group: the operation runs, with or without its task.
    pub fn is_taken(&self) -> bool {
        matches!(*lock(&self.0), State::Taken(_))
    }

    /// Leaves the group, if the seat was taken; nothing is sent under it afterwards.
    pub fn leave(&self) {
        let state = std::mem::replace(&mut *lock(&self.0), State::Closed);
        if let State::Taken(taken) = state {
            taken.shares.leave(&taken.group, taken.member);
        }
    }

    /// Leaves the group and sends the operation's last frame: `error` with `error`, else
    /// `complete`. Nothing when the seat was not taken (the transport left it first).
    fn end(&self, error: Option<async_graphql::ServerError>) {
        let taken = {
            let mut state = lock(&self.0);
            if !matches!(*state, State::Taken(_)) {
                return;
            }
            let State::Taken(taken) = std::mem::replace(&mut *state, State::Ended) else {
                return;
            };
            taken
        };
        taken.shares.leave(&taken.group, taken.member);
        let frame = match error {
            Some(error) => protocol::error(taken.protocol, &taken.id, &[error]),
            None => protocol::complete(&taken.id),
        };
        taken.outbox.text(frame);
    }

    /// Checks a parked member's grant under `identity`; ends it with the error if it is gone.
    pub(super) async fn recheck(&self, identity: Option<&Identity>) {
        let regrant = match &*lock(&self.0) {
            State::Taken(taken) => taken.parked.as_ref().map(|p| p.regrant.clone()),
            _ => None,
        };
        let Some(regrant) = regrant else { return };
        if let Err(error) = regrant.check(identity).await {
            self.end(Some(error));
        }
    }
}

/// Re-checks the grants of a connection's parked members under its current identity, in order.
/// Called by the connection when its identity changed, for the seats parked then; a seat parked
/// later checks the identity itself once parked ([`super::follow`]), so no change goes unchecked.
pub async fn recheck_parked(seats: Vec<Arc<Seat>>, identity: Option<Arc<Identity>>) {
    for seat in seats {
        seat.recheck(identity.as_deref()).await;
    }
}

/// Leaves on drop: held by `join` while it waits, so a join that fails or is dropped leaves.
struct Seated<'a>(Option<&'a Seat>);

impl Drop for Seated<'_> {
    fn drop(&mut self) {
        if let Some(seat) = self.0 {
            seat.leave();
        }
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

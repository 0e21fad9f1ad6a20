//! A member's seat: how an operation joins a group, is parked in it, and leaves or is ended.

use std::sync::{Arc, Mutex};

use async_graphql::http::WebSocketProtocols as Protocols;
use async_graphql::{Context, ErrorExtensions, Request, Variables};

use super::{Group, Key, Member, Readiness, Shares};
use crate::auth::Identity;
use crate::error::Error;
use crate::graphql::grant::Regrant;
use crate::presence::Guard;
use crate::sync::lock;
use crate::transport::outbox::Outbox;
use crate::transport::protocol;

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
    pub(in crate::graphql) regrant: Regrant,
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
    pub(super) fn end(&self, error: Option<async_graphql::ServerError>) {
        let taken = {
            let mut state = lock(&self.0);
            match std::mem::replace(&mut *state, State::Ended) {
                State::Taken(taken) => taken,
                // Not taken: put it back; the transport left it first.
                other => {
                    *state = other;
                    return;
                }
            }
        };
        taken.shares.leave(&taken.group, taken.member);
        let frame = match error {
            Some(error) => protocol::error(taken.protocol, &taken.id, &[error]),
            None => protocol::complete(&taken.id),
        };
        taken.outbox.text(frame);
    }

    /// Checks a parked member's grant under `identity`; ends it with the error if it is gone.
    pub(in crate::graphql) async fn recheck(&self, identity: Option<&Identity>) {
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

//! Grants that follow the connection's credentials. A subscription that follows a topic was
//! authorized under the identity its connection had when it started; when the connection's identity
//! changes (`refreshAuth`, or a session re-check that found other claims), it checks its grant
//! again under the new one, and ends with a FORBIDDEN `error` on its id when the grant is gone.
//! Subscriptions whose grant holds keep running untouched. A parked member of a shared
//! subscription has no stream to watch with: its connection re-checks it (`share::recheck_parked`)
//! with the same [`Regrant`]. A grant that cannot be checked (the database behind a `member` grant
//! is down) is not kept either: the subscription ends with INTERNAL_SERVER_ERROR, as it would have
//! been refused at its start.

use std::sync::{Arc, Mutex};

use async_graphql::{Context, PathSegment, Pos, ServerError};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::{Caller, Gate};
use crate::auth::Identity;
use crate::sync::lock;
use crate::topics::Action;

/// How a WebSocket operation ends with an `error` message on its id instead of `complete`: a
/// subscription records why here, then ends its stream. The transport gives each operation its
/// own, as request data, and reads it once the stream is over; over HTTP there is none, and the
/// stream simply ends.
#[derive(Clone, Default)]
pub struct Ending(Arc<Mutex<Option<ServerError>>>);

impl Ending {
    /// Why the operation ended, if it ended in an error.
    pub fn take(&self) -> Option<ServerError> {
        lock(&self.0).take()
    }

    fn set(&self, error: ServerError) {
        *lock(&self.0) = Some(error);
    }
}

/// `stream`, for as long as the connection's identity keeps the `subscribe` grant on `topic`.
/// Over HTTP there is no connection whose identity could change, and `stream` is returned as is.
pub(super) fn while_granted<T: Send + 'static>(
    ctx: &Context<'_>,
    topic: &str,
    stream: impl Stream<Item = T> + Send + 'static,
) -> BoxStream<'static, T> {
    let Some(caller) = ctx.data_opt::<Caller>() else {
        return stream.boxed();
    };
    let Some(handle) = &caller.connection else {
        return stream.boxed();
    };
    let mut identity = handle.identity();
    // The operation was authorized under the identity it started with; had the connection's
    // changed since, that change must be checked too.
    if !same(
        identity.borrow_and_update().as_ref(),
        caller.identity.as_ref(),
    ) {
        identity.mark_changed();
    }
    let watched = Watched {
        stream: stream.boxed(),
        identity,
        watching: true,
        regrant: Regrant::of(ctx, topic),
        ending: ctx.data_opt::<Ending>().cloned(),
    };
    futures_util::stream::unfold(watched, Watched::next).boxed()
}

/// Whether two identities are the same one (not merely equal: a refresh makes a new one).
pub(super) fn same(a: Option<&Arc<Identity>>, b: Option<&Arc<Identity>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// What checks one subscription's grant again: the gate and topic it was authorized with.
#[derive(Clone)]
pub(super) struct Regrant {
    gate: Gate,
    topic: String,
    /// Where the subscription's field is, so the error points at it like any field error.
    pos: Pos,
    field: String,
}

impl Regrant {
    pub(super) fn of(ctx: &Context<'_>, topic: &str) -> Self {
        Self {
            gate: Gate::of(ctx),
            topic: topic.to_string(),
            pos: ctx.item.pos,
            field: ctx.item.node.response_key().node.to_string(),
        }
    }

    /// Nothing while `identity` keeps the `subscribe` grant; else the error the subscription
    /// ends with.
    pub(super) async fn check(&self, identity: Option<&Identity>) -> Result<(), ServerError> {
        let checked = self
            .gate
            .check(identity, &self.topic, Action::Subscribe, None)
            .await;
        checked.map_err(|error| {
            let mut error = error.into_server_error(self.pos);
            error.path = vec![PathSegment::Field(self.field.clone())];
            error
        })
    }
}

struct Watched<T> {
    stream: BoxStream<'static, T>,
    identity: watch::Receiver<Option<Arc<Identity>>>,
    /// False once the connection is gone (its operations are being aborted anyway).
    watching: bool,
    regrant: Regrant,
    ending: Option<Ending>,
}

impl<T> Watched<T> {
    async fn next(mut self) -> Option<(T, Self)> {
        loop {
            tokio::select! {
                // Credentials first: nothing more is delivered under a grant that is gone.
                biased;
                changed = self.identity.changed(), if self.watching => {
                    if changed.is_err() {
                        self.watching = false;
                        continue;
                    }
                    let identity = self.identity.borrow_and_update().clone();
                    if let Err(error) = self.regrant.check(identity.as_deref()).await {
                        if let Some(ending) = &self.ending {
                            ending.set(error);
                        }
                        return None;
                    }
                }
                item = self.stream.next() => return item.map(|item| (item, self)),
            }
        }
    }
}

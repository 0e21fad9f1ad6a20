//! Operations about the connection itself: its notices, and refreshing its credentials.

use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::Caller;
use crate::auth::Authenticator;
use crate::error::Error;
use crate::limits::budget::Warning;
use crate::transport::control::{ConnectionHandle, Control, Notice, NoticeKind};

/// Something the server tells a connection about its own state.
#[derive(SimpleObject)]
pub struct ConnectionNotice {
    kind: NoticeKind,
    message: String,
    at: DateTime<Utc>,
    /// For `TOKEN_EXPIRING`: when the connection closes unless `refreshAuth` is called.
    expires_at: Option<DateTime<Utc>>,
}

impl From<Notice> for ConnectionNotice {
    fn from(n: Notice) -> Self {
        Self {
            kind: n.kind,
            message: n.message,
            at: n.at,
            expires_at: n.expires_at,
        }
    }
}

/// The connection's operation budget is nearly used up (or, with `final`, exceeded: the
/// connection is about to close).
#[derive(SimpleObject)]
pub struct RateLimitWarning {
    /// Operations counted in the current window.
    current: u32,
    limit: u32,
    window_seconds: u64,
    /// Seconds until the budget has room again.
    retry_after_seconds: u64,
    message: String,
    /// The budget was exceeded and the connection is closing; reconnect to start afresh.
    #[graphql(name = "final")]
    last: bool,
}

impl From<Warning> for RateLimitWarning {
    fn from(w: Warning) -> Self {
        let s = w.standing;
        Self {
            current: s.current,
            limit: s.limit,
            window_seconds: s.window_seconds,
            retry_after_seconds: s.retry_after_seconds,
            message: w.message,
            last: w.last,
        }
    }
}

/// A broadcast receiver as a stream that skips what a slow reader missed: only the newest items
/// matter for notices and warnings.
fn newest<T: Clone + Send + 'static, U: From<T>>(
    rx: broadcast::Receiver<T>,
) -> impl Stream<Item = U> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(item) => return Some((U::from(item), rx)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

#[derive(SimpleObject)]
pub struct Refreshed {
    /// When the new credentials expire.
    expires_at: Option<DateTime<Utc>>,
}

fn connection<'a>(
    ctx: &'a Context<'_>,
) -> async_graphql::Result<(&'a Caller, &'a ConnectionHandle)> {
    let caller = ctx.data_opt::<Caller>();
    match caller.and_then(|c| c.connection.as_ref().map(|h| (c, h))) {
        Some(found) => Ok(found),
        None => {
            Err(Error::BadUserInput("only available over a WebSocket connection".into()).extend())
        }
    }
}

#[derive(Default)]
pub struct ConnectionSubscription;

#[Subscription]
impl ConnectionSubscription {
    /// Notices about this connection: `TOKEN_EXPIRING` before the token expires (at once, if that
    /// time has already come when subscribing and the token was not refreshed), and
    /// `SESSION_EXPIRED`, `REPLACED` or `REVOKED` just before the server closes it.
    async fn connection_notices(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = ConnectionNotice> + use<>> {
        let (_, handle) = connection(ctx)?;
        let (standing, rx) = handle.notices();
        let standing = futures_util::stream::iter(standing.map(ConnectionNotice::from));
        Ok(standing.chain(newest::<_, ConnectionNotice>(rx)).boxed())
    }

    /// Warnings about this connection's operation budget: one per window when the count reaches
    /// `warn_at` × `limit`, and a `final` one when the limit is exceeded and the connection closes.
    async fn rate_limit_warning(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = RateLimitWarning> + use<>> {
        let (_, handle) = connection(ctx)?;
        Ok(newest::<_, RateLimitWarning>(handle.budget.warnings()).boxed())
    }
}

#[derive(Default)]
pub struct ConnectionMutation;

#[Object]
impl ConnectionMutation {
    /// Swaps in a new token for the same user on this connection, keeping its subscriptions and
    /// moving its expiry. Over WebSocket only. The connection then is a plain token connection,
    /// even if it opened with a session cookie: it closes at the new token's `exp`, and its session
    /// is no longer re-checked. Running subscriptions are checked against the topic rules under the
    /// new token's claims; one whose grant is gone ends with a FORBIDDEN `error`.
    async fn refresh_auth(
        &self,
        ctx: &Context<'_>,
        token: String,
    ) -> async_graphql::Result<Refreshed> {
        let (caller, handle) = connection(ctx)?;
        let auth = ctx.data_unchecked::<Arc<Authenticator>>();
        let identity = auth
            .token(&token)
            .map_err(|_| Error::Unauthenticated.extend())?;
        let current = caller.identity.as_ref().map(|i| i.user_id.as_str());
        if current != Some(identity.user_id.as_str()) {
            return Err(Error::Forbidden("the new token belongs to another user".into()).extend());
        }
        let expires_at = identity.expires_at;
        if !handle.send(Control::Refresh(Arc::new(identity))) {
            return Err(Error::Internal(anyhow::anyhow!(
                "the connection did not take the refresh"
            ))
            .extend());
        }
        Ok(Refreshed { expires_at })
    }
}

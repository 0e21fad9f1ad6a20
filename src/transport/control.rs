//! How the rest of the server reaches a live connection: notices for its `connectionNotices`
//! subscriptions, and control messages (close it, swap in refreshed credentials) for its loop.

use async_graphql::Enum;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};

use super::protocol::Close;
use super::queue::{self, Consumer, Queue};
use std::sync::{Arc, Mutex, OnceLock};

use crate::auth::Identity;
use crate::config::LiveConfig;
use crate::limits::budget::Budget;
use crate::sync::lock;

/// Control messages queued per connection. Senders are administrative (revocation, a newer
/// connection of the same user, `refreshAuth`), so a small queue suffices; a full one means the
/// connection is already being told to go.
const CONTROL_QUEUE: usize = 16;

/// Notices buffered for slow `connectionNotices` subscribers; older ones are dropped first.
const NOTICE_BUFFER: usize = 16;

/// What a connection is told about its own state.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// The token expires soon; call `refreshAuth` to keep the connection.
    TokenExpiring,
    /// The session was logged out or expired; the connection is closing.
    SessionExpired,
    /// A newer connection of the same user replaced this one; it is closing and should not
    /// reconnect.
    Replaced,
    /// An administrator revoked the user's or session's access; the connection is closing.
    Revoked,
}

#[derive(Clone, Debug)]
pub struct Notice {
    pub kind: NoticeKind,
    pub message: String,
    pub at: DateTime<Utc>,
    /// For `TOKEN_EXPIRING`: when the connection will be closed.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Notice {
    pub fn new(kind: NoticeKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            at: Utc::now(),
            expires_at: None,
        }
    }
}

pub enum Control {
    /// Tell the client why (if `notice`), then close.
    Close {
        notice: Option<Notice>,
        close: Close,
    },
    /// Close after a short grace, so what was just sent (a final warning) is delivered first.
    CloseSoon(Close),
    /// Credentials refreshed over the same connection (same subject).
    Refresh(Arc<Identity>),
}

/// What a connection shares with its handles besides its queue and budget.
#[derive(Debug, Default)]
struct Shared {
    /// Made by the first `connectionNotices` subscriber: a broadcast channel allocates all its
    /// slots up front (~1.6 KiB), and most connections never listen.
    notices: OnceLock<broadcast::Sender<Notice>>,
    /// The `TOKEN_EXPIRING` notice while it still holds (until new credentials replace the
    /// token), so a client that subscribes after it was sent still learns its connection is
    /// about to close. Its lock also orders `notify` against `subscribe`: a subscriber gets a
    /// standing notice either from here or from the channel, never from both or neither.
    standing: Mutex<Option<Notice>>,
    identity: Mutex<Current>,
}

/// Who the connection is authenticated as now (`None` before `connection_init` and when
/// anonymous), and the watch its unshared topic subscriptions follow to re-check their grants.
/// The watch is made by the first such subscription: its state is ~350 bytes, and shared members,
/// nearly every subscription, are re-checked by the connection instead.
#[derive(Debug, Default)]
struct Current {
    identity: Option<Arc<Identity>>,
    watch: Option<watch::Sender<Option<Arc<Identity>>>>,
}

/// A cheap handle to one connection, held by the registry and by the connection's operations.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    pub id: String,
    /// The connection's operation budget, counted by the per-operation guard.
    pub budget: Arc<Budget>,
    /// Boxed: a `Control` is ~90 bytes, and the queue keeps a few slots once used.
    control: Arc<Queue<Box<Control>>>,
    shared: Arc<Shared>,
}

impl ConnectionHandle {
    /// A handle and the receiving end the connection loop selects on.
    pub fn new(id: String, live: LiveConfig) -> (Self, Consumer<Box<Control>>) {
        let (control, rx) = queue::bounded(CONTROL_QUEUE);
        let budget = Arc::new(Budget::new(live));
        (
            Self {
                id,
                budget,
                control,
                shared: Arc::default(),
            },
            rx,
        )
    }

    /// False when the connection is gone or already swamped with control messages.
    pub fn send(&self, control: Control) -> bool {
        self.control.push(Box::new(control)).is_ok()
    }

    pub fn notify(&self, notice: Notice) {
        let mut standing = self.standing();
        if notice.kind == NoticeKind::TokenExpiring {
            *standing = Some(notice.clone());
        }
        // No subscriber is fine: the client chose not to listen (yet, for a standing notice).
        if let Some(sender) = self.shared.notices.get() {
            let _ = sender.send(notice);
        }
    }

    /// The standing notice, if any, and what is notified from now on.
    pub fn notices(&self) -> (Option<Notice>, broadcast::Receiver<Notice>) {
        let standing = self.standing();
        let receiver = self
            .shared
            .notices
            .get_or_init(|| broadcast::channel(NOTICE_BUFFER).0)
            .subscribe();
        (standing.clone(), receiver)
    }

    /// New credentials: an expiry notice about the old ones no longer holds.
    pub fn withdraw_standing(&self) {
        self.standing().take();
    }

    fn standing(&self) -> std::sync::MutexGuard<'_, Option<Notice>> {
        lock(&self.shared.standing)
    }

    /// Who the connection is authenticated as now.
    pub fn current_identity(&self) -> Option<Arc<Identity>> {
        lock(&self.shared.identity).identity.clone()
    }

    /// Follows who the connection is authenticated as.
    pub fn identity(&self) -> watch::Receiver<Option<Arc<Identity>>> {
        let mut current = lock(&self.shared.identity);
        let Current { identity, watch } = &mut *current;
        watch
            .get_or_insert_with(|| watch::Sender::new(identity.clone()))
            .subscribe()
    }

    /// Makes `identity` the connection's (on `connection_init`, `refreshAuth`, or a session
    /// re-check). True when it grants something else (another user, method or claims): only then
    /// are watchers woken and parked members re-checked, so a session re-check that finds the same
    /// `sess` costs the running subscriptions nothing.
    pub fn set_identity(&self, identity: Option<Arc<Identity>>) -> bool {
        let mut current = lock(&self.shared.identity);
        let same = match (current.identity.as_deref(), identity.as_deref()) {
            (Some(old), Some(new)) => old.grants_same(new),
            (None, None) => true,
            _ => false,
        };
        if let Some(watch) = &current.watch {
            watch.send_if_modified(|watched| {
                *watched = identity.clone();
                !same
            });
        }
        current.identity = identity;
        !same
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Close { close, .. } | Control::CloseSoon(close) => {
                write!(f, "Close({})", close.code)
            }
            Control::Refresh(_) => write!(f, "Refresh"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Method;

    fn identity(claims: serde_json::Value) -> Option<Arc<Identity>> {
        Some(Arc::new(Identity {
            user_id: "alice".into(),
            claims: claims.as_object().cloned().unwrap_or_default(),
            method: Method::Session,
            expires_at: None,
            session_id: Some("sid".into()),
        }))
    }

    #[test]
    fn identity_watchers_wake_only_when_the_grants_change() {
        let (handle, _control) = ConnectionHandle::new("c".into(), Default::default());
        let mut watcher = handle.identity();
        handle.set_identity(identity(serde_json::json!({ "workspaces": ["acme"] })));
        assert!(watcher.has_changed().unwrap());
        watcher.borrow_and_update();

        // The same sess read again: nothing for subscriptions to re-check.
        handle.set_identity(identity(serde_json::json!({ "workspaces": ["acme"] })));
        assert!(!watcher.has_changed().unwrap());

        handle.set_identity(identity(serde_json::json!({ "workspaces": [] })));
        assert!(watcher.has_changed().unwrap());
        assert_eq!(
            watcher.borrow_and_update().as_ref().unwrap().claims["workspaces"],
            serde_json::json!([])
        );
    }
}

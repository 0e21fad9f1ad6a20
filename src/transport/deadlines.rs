//! The connection loop's deadlines: the close after a notice, the close of a drain,
//! `connection_init`, pong, ping and the token's warning and expiry. The loop waits on the
//! earliest with one timer.

use std::time::Duration;

use async_graphql::http::WebSocketProtocols as Protocols;
use axum::extract::ws::Message;
use tokio::time::Instant;

use super::connection::Connection;
use super::control::{Notice, NoticeKind};
use super::protocol::{self, Close, code};
use crate::config::Config;

/// The connection loop's own deadlines.
pub(super) struct Clock {
    /// When a connection still without `connection_init` is closed.
    init_by: Instant,
    next_ping: Instant,
    /// When our last ping must have been answered; `None` while none is outstanding.
    pub(super) pong_by: Option<Instant>,
    ping_interval: Duration,
    pong_timeout: Duration,
    /// When this connection closes on a server shutdown: its own random share of
    /// `server.drain_period` after the shutdown began, so an instance's clients do not all
    /// reconnect elsewhere in the same instant.
    pub(super) drain_at: Option<Instant>,
}

impl Clock {
    pub(super) fn new(config: &Config) -> Self {
        let ping_interval = config.connections.ping_interval.get();
        Self {
            init_by: Instant::now() + config.auth.connection_init_timeout.get(),
            next_ping: Instant::now() + ping_interval,
            pong_by: None,
            ping_interval,
            pong_timeout: config.connections.pong_timeout.get(),
            drain_at: None,
        }
    }

    /// The server is shutting down: sets this connection's close within the drain period.
    pub(super) fn drain(&mut self, config: &Config) {
        let share = config.server.drain().mul_f64(rand::random::<f64>());
        self.drain_at = Some(Instant::now() + share);
    }
}

/// What a deadline is for, in the order they win when several are due at once.
#[derive(Clone, Copy)]
pub(super) enum Due {
    Close,
    Drain,
    Init,
    Pong,
    Ping,
    Warn,
    Expire,
}

impl Connection {
    /// The deadline to wait for: the first in [`Due`]'s order of those already passed, else the
    /// earliest.
    pub(super) fn next_due(&self, clock: &Clock) -> (Instant, Due) {
        let deadlines = [
            (self.close_at.as_ref().map(|(at, _)| *at), Due::Close),
            (clock.drain_at, Due::Drain),
            (self.identity.is_none().then_some(clock.init_by), Due::Init),
            (clock.pong_by, Due::Pong),
            (Some(clock.next_ping), Due::Ping),
            (self.lifetime.warn_at, Due::Warn),
            (self.lifetime.expire_at, Due::Expire),
        ];
        let now = Instant::now();
        let set = deadlines
            .into_iter()
            .filter_map(|(at, due)| at.map(|at| (at, due)));
        set.clone()
            .find(|(at, _)| *at <= now)
            .or_else(|| set.min_by_key(|(at, _)| *at))
            .unwrap_or((clock.next_ping, Due::Ping))
    }

    /// Does what `due` is for.
    pub(super) fn on_due(&mut self, due: Due, clock: &mut Clock) {
        match due {
            // A close announced by a notice or a final warning, now that it had time to arrive.
            Due::Close => {
                if let Some((_, close)) = self.close_at.take() {
                    self.outbox.close(close);
                }
            }
            Due::Drain => self
                .outbox
                .close(Close::new(code::GOING_AWAY, "Server shutting down")),
            // A client that never sends connection_init must not hold a socket.
            Due::Init => self.outbox.close(Close::new(
                code::INIT_TIMEOUT,
                "Connection initialisation timeout",
            )),
            // Our last ping went unanswered: the peer is gone or stuck.
            Due::Pong => {
                clock.pong_by = None;
                self.outbox
                    .close(Close::new(code::PONG_TIMEOUT, "Pong timeout"));
            }
            // Liveness: a ping frame every ping_interval (and `ka` for legacy clients).
            Due::Ping => {
                clock.next_ping = Instant::now() + clock.ping_interval;
                if clock.pong_by.is_none() && self.outbox.push(Message::Ping(Default::default())) {
                    clock.pong_by = Some(Instant::now() + clock.pong_timeout);
                }
                if self.protocol == Protocols::SubscriptionsTransportWS && self.identity.is_some() {
                    self.outbox.text(protocol::keep_alive());
                }
            }
            // The token expires soon: tell the client while it can still refreshAuth.
            Due::Warn => {
                self.lifetime.warn_at = None;
                let mut notice = Notice::new(
                    NoticeKind::TokenExpiring,
                    "The token expires soon: call refreshAuth to stay connected",
                );
                notice.expires_at = self.lifetime.expires_at_utc;
                self.handle.notify(notice);
            }
            // The token expired (plus leeway) without a refresh.
            Due::Expire => {
                self.lifetime.expire_at = None;
                self.outbox
                    .close(Close::new(code::FORBIDDEN, "Token expired"));
            }
        }
    }
}

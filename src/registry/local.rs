//! The connections this instance holds, by IP and by user, with their leases: what admission
//! counts when there is no cluster (or Redis is unreachable), whom a replace or revoke order
//! closes, and which leases the refresh renews.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::client_ip::IpBucket;
use crate::transport::control::{ConnectionHandle, Control, Notice, NoticeKind};
use crate::transport::protocol::{Close, code};

/// How long an order to replace a connection not (yet) held here is remembered: long enough for
/// an admission whose lease was already written to reach the local map.
const PENDING_REPLACE: Duration = Duration::from_secs(10);

/// The lease set a slot belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum LeaseKey {
    Ip(IpBucket),
    User(String),
}

pub(super) struct Member {
    pub handle: ConnectionHandle,
    /// The [`session_digest`] of the connection's session, if it authenticated with one.
    pub session: Option<String>,
    pub lease: String,
}

/// The SHA-256 (hex) of a session id, which is what the registry keeps and revoke orders carry:
/// the id itself is a credential, kept out of the bus, Redis and logs.
pub(super) fn session_digest(session_id: &str) -> String {
    Sha256::digest(session_id.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[derive(Default)]
pub(super) struct Local {
    /// The leases of each IP's connections.
    per_ip: HashMap<IpBucket, Vec<String>>,
    /// Each user's connections, oldest first.
    per_user: HashMap<String, Vec<Member>>,
    /// Connections another admission replaced before their own admission finished here (the
    /// script evicted a lease whose connection was not in the map yet): closed on arrival.
    pending_replace: HashMap<String, Instant>,
}

fn replaced() -> Control {
    Control::Close {
        notice: Some(Notice::new(
            NoticeKind::Replaced,
            "A newer connection of the same user replaced this one",
        )),
        close: Close::new(code::POLICY, "Replaced by a newer connection"),
    }
}

fn revoked() -> Control {
    Control::Close {
        notice: Some(Notice::new(NoticeKind::Revoked, "Access was revoked")),
        close: Close::new(code::FORBIDDEN, "Revoked"),
    }
}

impl Local {
    /// Slots this instance holds in `key`'s set.
    pub fn held(&self, key: &LeaseKey) -> usize {
        match key {
            LeaseKey::Ip(ip) => self.per_ip.get(ip).map_or(0, Vec::len),
            LeaseKey::User(user) => self.per_user.get(user).map_or(0, Vec::len),
        }
    }

    pub fn insert_ip(&mut self, ip: IpBucket, lease: String) {
        self.per_ip.entry(ip).or_default().push(lease);
    }

    pub fn remove_ip(&mut self, ip: IpBucket, lease: &str) {
        if let Some(leases) = self.per_ip.get_mut(&ip) {
            leases.retain(|l| l != lease);
            if leases.is_empty() {
                self.per_ip.remove(&ip);
            }
        }
    }

    pub fn insert_user(&mut self, user: &str, member: Member) {
        if self.pending_replace.remove(&member.handle.id).is_some() {
            member.handle.send(replaced());
        }
        // Most users hold one connection: room for one, not the four a first push makes.
        self.per_user
            .entry(user.to_string())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(member);
    }

    pub fn remove_user(&mut self, user: &str, connection_id: &str) {
        if let Some(members) = self.per_user.get_mut(user) {
            members.retain(|m| m.handle.id != connection_id);
            if members.is_empty() {
                self.per_user.remove(user);
            }
        }
    }

    /// Tells `user`'s connection `connection_id` it was replaced, and forgets it; one still being
    /// admitted is remembered and told on arrival.
    pub fn replace(&mut self, user: &str, connection_id: &str) {
        let members = self.per_user.get_mut(user);
        let position = members
            .as_ref()
            .and_then(|m| m.iter().position(|m| m.handle.id == connection_id));
        match (members, position) {
            (Some(members), Some(position)) => {
                members.remove(position).handle.send(replaced());
            }
            _ => {
                self.pending_replace
                    .insert(connection_id.to_string(), Instant::now());
            }
        }
    }

    /// Replaces `user`'s oldest connections until fewer than `max` remain; their ids.
    pub fn replace_oldest(&mut self, user: &str, max: usize) -> Vec<String> {
        let Some(members) = self.per_user.get_mut(user) else {
            return Vec::new();
        };
        let excess = (members.len() + 1).saturating_sub(max);
        members
            .drain(..excess)
            .map(|oldest| {
                oldest.handle.send(replaced());
                oldest.handle.id
            })
            .collect()
    }

    /// Closes every connection of `user`, or of the session with digest `session` when given;
    /// returns how many.
    pub fn revoke(&self, user: Option<&str>, session: Option<&str>) -> usize {
        self.per_user
            .iter()
            .filter(|(u, _)| user.is_none_or(|wanted| wanted == u.as_str()))
            .flat_map(|(_, members)| members)
            .filter(|m| session.is_none_or(|wanted| m.session.as_deref() == Some(wanted)))
            .inspect(|m| {
                // A full control queue means the connection is already being told to go.
                m.handle.send(revoked());
            })
            .count()
    }

    /// Every lease this instance holds, by set.
    pub fn leases(&self) -> Vec<(LeaseKey, Vec<String>)> {
        let ips = self
            .per_ip
            .iter()
            .map(|(ip, leases)| (LeaseKey::Ip(*ip), leases.clone()));
        let users = self.per_user.iter().map(|(user, members)| {
            let leases = members.iter().map(|m| m.lease.clone()).collect();
            (LeaseKey::User(user.clone()), leases)
        });
        ips.chain(users).collect()
    }

    /// Of `leases` in `key`'s set, those whose connection is still open here.
    pub fn still_held(&self, key: &LeaseKey, mut leases: Vec<String>) -> Vec<String> {
        match key {
            LeaseKey::Ip(ip) => {
                let held = self.per_ip.get(ip);
                leases.retain(|lease| held.is_some_and(|h| h.contains(lease)));
            }
            LeaseKey::User(user) => {
                let held = self.per_user.get(user);
                leases.retain(|lease| held.is_some_and(|h| h.iter().any(|m| &m.lease == lease)));
            }
        }
        leases
    }

    /// Forgets replace orders for connections that never arrived.
    pub fn forget_stale(&mut self) {
        self.pending_replace
            .retain(|_, since| since.elapsed() < PENDING_REPLACE);
    }
}

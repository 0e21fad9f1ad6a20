//! The connections this instance holds, by client IP and by user: the connection limits of
//! `connections` are enforced here, and revocation finds its targets here. Counts are in-process;
//! the Redis issue's cluster-wide registry implements the same operations across instances.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{Connections, OnUserLimit};
use crate::transport::control::{ConnectionHandle, Control, Notice, NoticeKind};
use crate::transport::protocol::{Close, code};

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `connects_per_minute_per_ip` exceeded.
    IpRate { retry_after: Duration },
    /// `max_per_ip` connections already open from this IP.
    IpFull,
    /// `reconnects_per_minute` exceeded for this user.
    UserRate { retry_after: Duration },
    /// `max_per_user` reached with `on_user_limit: reject_new`.
    UserFull,
}

struct Member {
    handle: ConnectionHandle,
    session_id: Option<String>,
}

#[derive(Default)]
struct Inner {
    per_ip: HashMap<IpAddr, u32>,
    /// Each user's connections, oldest first.
    per_user: HashMap<String, Vec<Member>>,
}

pub struct Registry {
    inner: Mutex<Inner>,
    limits: Connections,
    connects_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    connects_per_user: DefaultKeyedRateLimiter<String>,
}

/// Held by a connection for its life; dropping it frees the IP's slot.
pub struct IpSlot {
    registry: Arc<Registry>,
    ip: IpAddr,
}

/// Held by an authenticated connection for its life; dropping it frees the user's slot.
pub struct UserSlot {
    registry: Arc<Registry>,
    user: String,
    connection_id: String,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl Registry {
    pub fn new(limits: &Connections) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::default(),
            limits: limits.clone(),
            connects_per_ip: RateLimiter::keyed(per_minute(limits.connects_per_minute_per_ip)),
            connects_per_user: RateLimiter::keyed(per_minute(limits.reconnects_per_minute)),
        })
    }

    /// Admits an upgrade from `ip`, before the handshake.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, Refusal> {
        if let Err(not_until) = self.connects_per_ip.check_key(&ip) {
            return Err(Refusal::IpRate {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            });
        }
        let mut inner = self.inner.lock().expect("registry lock poisoned");
        let open = inner.per_ip.entry(ip).or_default();
        if *open >= self.limits.max_per_ip {
            return Err(Refusal::IpFull);
        }
        *open += 1;
        Ok(IpSlot {
            registry: self.clone(),
            ip,
        })
    }

    /// Admits an authenticated connection of `user`. With `close_oldest`, the user's oldest
    /// connection is told it was replaced and closed (with a code clients do not retry, so two tabs
    /// cannot evict each other forever); the handle of the replaced connection is returned.
    pub fn admit_user(
        self: &Arc<Self>,
        user: &str,
        handle: ConnectionHandle,
        session_id: Option<String>,
    ) -> Result<(UserSlot, Option<String>), Refusal> {
        if let Err(not_until) = self.connects_per_user.check_key(&user.to_string()) {
            return Err(Refusal::UserRate {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            });
        }
        let mut inner = self.inner.lock().expect("registry lock poisoned");
        let members = inner.per_user.entry(user.to_string()).or_default();
        let mut replaced = None;
        if members.len() >= self.limits.max_per_user as usize {
            match self.limits.on_user_limit {
                OnUserLimit::RejectNew => return Err(Refusal::UserFull),
                OnUserLimit::CloseOldest => {
                    let oldest = members.remove(0);
                    oldest.handle.send(Control::Close {
                        notice: Some(Notice::new(
                            NoticeKind::Replaced,
                            "A newer connection of the same user replaced this one",
                        )),
                        close: Close::new(code::POLICY, "Replaced by a newer connection"),
                    });
                    replaced = Some(oldest.handle.id);
                }
            }
        }
        let connection_id = handle.id.clone();
        members.push(Member { handle, session_id });
        Ok((
            UserSlot {
                registry: self.clone(),
                user: user.to_string(),
                connection_id,
            },
            replaced,
        ))
    }

    /// Closes every connection of `user`, or of `session_id` when given; returns how many.
    pub fn revoke(&self, user: Option<&str>, session_id: Option<&str>) -> usize {
        let inner = self.inner.lock().expect("registry lock poisoned");
        let targets = inner
            .per_user
            .iter()
            .filter(|(u, _)| user.is_none_or(|wanted| wanted == u.as_str()))
            .flat_map(|(_, members)| members)
            .filter(|m| session_id.is_none_or(|wanted| m.session_id.as_deref() == Some(wanted)));
        let mut count = 0;
        for member in targets {
            member.handle.send(Control::Close {
                notice: Some(Notice::new(NoticeKind::Revoked, "Access was revoked")),
                close: Close::new(code::FORBIDDEN, "Revoked"),
            });
            count += 1;
        }
        count
    }

    /// Forgets rate-limiter state of keys idle for a full window, bounding memory over churn.
    pub fn retain_recent(&self) {
        self.connects_per_ip.retain_recent();
        self.connects_per_user.retain_recent();
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock().expect("registry lock poisoned");
        if let Some(open) = inner.per_ip.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                inner.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock().expect("registry lock poisoned");
        if let Some(members) = inner.per_user.get_mut(&self.user) {
            members.retain(|m| m.handle.id != self.connection_id);
            if members.is_empty() {
                inner.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_per_user: u32, on_user_limit: OnUserLimit) -> Connections {
        Connections {
            max_per_user,
            on_user_limit,
            max_per_ip: 2,
            ..Connections::default()
        }
    }

    #[test]
    fn ip_slots_are_counted_and_freed_on_drop() {
        let registry = Registry::new(&limits(5, OnUserLimit::RejectNew));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = registry.admit_ip(ip).unwrap();
        let _b = registry.admit_ip(ip).unwrap();
        assert_eq!(registry.admit_ip(ip).err(), Some(Refusal::IpFull));
        drop(a);
        assert!(registry.admit_ip(ip).is_ok());
    }

    #[tokio::test]
    async fn close_oldest_tells_the_oldest_connection_it_was_replaced() {
        let registry = Registry::new(&limits(1, OnUserLimit::CloseOldest));
        let (old, mut old_rx) = ConnectionHandle::new("old".into(), Default::default());
        let (new, _new_rx) = ConnectionHandle::new("new".into(), Default::default());
        let _old_slot = registry.admit_user("u", old, None).unwrap();
        let (_slot, replaced) = registry.admit_user("u", new, None).unwrap();
        assert_eq!(replaced.as_deref(), Some("old"));
        match old_rx.recv().await.unwrap() {
            Control::Close { notice, close } => {
                assert_eq!(notice.unwrap().kind, NoticeKind::Replaced);
                assert_eq!(close.code, code::POLICY);
            }
            other => panic!("{other:?}"),
        }
    }
}

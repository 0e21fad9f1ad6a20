//! The registry in one process: local counts, and orders between two registries sharing one
//! in-process bus as two instances would share a Redis one.

use std::time::Duration;

use crate::transport::queue::Consumer;
use futures_util::StreamExt;

use super::*;
use crate::bus::{Delivery, MemoryBus};
use crate::transport::control::{Control, NoticeKind};
use crate::transport::protocol::code;

fn config(max_per_user: u32, on_user_limit: OnUserLimit) -> Config {
    let mut config = Config::default();
    config.connections.max_per_user = max_per_user;
    config.connections.on_user_limit = on_user_limit;
    config.connections.max_per_ip = 2;
    config
}

fn registry(config: &Config, bus: Arc<dyn Bus>, instance: &str) -> Arc<Registry> {
    let metrics = Metrics::new(instance);
    Registry::new(config, None, bus, instance, &metrics, TaskTracker::new()).unwrap()
}

fn memory_bus() -> Arc<dyn Bus> {
    Arc::new(MemoryBus::new(16, 16))
}

fn handle(id: &str) -> (ConnectionHandle, Consumer<Box<Control>>) {
    ConnectionHandle::new(id.into(), Default::default())
}

/// The close the connection was told about, waiting a little for it to arrive.
async fn closed_with(rx: &Consumer<Box<Control>>) -> Option<(NoticeKind, u16)> {
    match tokio::time::timeout(Duration::from_millis(200), rx.next()).await {
        Ok(control) => match *control {
            Control::Close { notice, close } => Some((notice?.kind, close.code)),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn ip_slots_are_counted_and_freed_on_drop() {
    let registry = registry(&config(5, OnUserLimit::RejectNew), memory_bus(), "a");
    let ip = IpBucket::new("10.0.0.1".parse().unwrap(), 64);
    let a = registry.admit_ip(ip).await.unwrap();
    let _b = registry.admit_ip(ip).await.unwrap();
    assert_eq!(registry.admit_ip(ip).await.err(), Some(Refusal::IpFull));
    drop(a);
    assert!(registry.admit_ip(ip).await.is_ok());
}

#[tokio::test]
async fn addresses_of_one_ipv6_prefix_share_the_slots_of_one_ip() {
    let registry = registry(&config(5, OnUserLimit::RejectNew), memory_bus(), "a");
    let host = |ip: &str| IpBucket::new(ip.parse().unwrap(), 64);
    let _a = registry.admit_ip(host("2001:db8:1:2::a")).await.unwrap();
    let _b = registry.admit_ip(host("2001:db8:1:2::b")).await.unwrap();
    assert_eq!(
        registry.admit_ip(host("2001:db8:1:2:ffff::c")).await.err(),
        Some(Refusal::IpFull)
    );
    assert!(registry.admit_ip(host("2001:db8:1:3::a")).await.is_ok());
}

#[tokio::test]
async fn close_oldest_tells_the_oldest_connection_it_was_replaced() {
    let registry = registry(&config(1, OnUserLimit::CloseOldest), memory_bus(), "a");
    let (old, old_rx) = handle("old");
    let (new, _new_rx) = handle("new");
    let _old_slot = registry.admit_user("u", old, None).await.unwrap();
    let (_slot, replaced) = registry.admit_user("u", new, None).await.unwrap();
    assert_eq!(replaced, ["old"]);
    assert_eq!(
        closed_with(&old_rx).await,
        Some((NoticeKind::Replaced, code::POLICY))
    );
}

#[tokio::test]
async fn reject_new_refuses_once_the_user_is_full_and_admits_after_a_release() {
    let registry = registry(&config(1, OnUserLimit::RejectNew), memory_bus(), "a");
    let (first, _first_rx) = handle("first");
    let (slot, _) = registry.admit_user("u", first, None).await.unwrap();
    let (second, _second_rx) = handle("second");
    let refused = registry.admit_user("u", second.clone(), None).await;
    assert_eq!(refused.err(), Some(Refusal::UserFull));
    drop(slot);
    assert!(registry.admit_user("u", second, None).await.is_ok());
}

#[tokio::test]
async fn a_replace_order_for_a_connection_still_being_admitted_closes_it_on_arrival() {
    let mut local = Local::default();
    local.replace("u", "late");
    let (late, late_rx) = handle("late");
    let member = Member {
        handle: late,
        session: None,
        lease: "lease".into(),
    };
    local.insert_user("u", member);
    assert_eq!(
        closed_with(&late_rx).await,
        Some((NoticeKind::Replaced, code::POLICY))
    );
}

#[tokio::test]
async fn a_revoke_on_one_instance_closes_the_connections_another_holds_and_each_only_once() {
    let bus = memory_bus();
    let config = config(5, OnUserLimit::CloseOldest);
    let (a, b) = (
        registry(&config, bus.clone(), "a"),
        registry(&config, bus.clone(), "b"),
    );
    let shutdown = CancellationToken::new();
    for registry in [&a, &b] {
        registry.follow_orders().await;
        tokio::spawn(registry.clone().run(shutdown.clone()));
    }
    let (on_a, on_a_rx) = handle("on-a");
    let (on_b, on_b_rx) = handle("on-b");
    let (bob, bob_rx) = handle("bob");
    let _slots = (
        a.admit_user("alice", on_a, Some("s1".into()))
            .await
            .unwrap(),
        b.admit_user("alice", on_b, Some("s1".into()))
            .await
            .unwrap(),
        b.admit_user("bob", bob, None).await.unwrap(),
    );
    let mut orders = bus.subscribe("$control".into(), None).await.unwrap();
    let revocation = a.revoke(Some("alice"), Some("s1")).await;
    assert_eq!(
        revocation,
        Revocation {
            closed: 1,
            notified: true
        }
    );
    let Some(Delivery::Event(order)) = orders.next().await else {
        panic!("the order is on the bus");
    };
    assert_eq!(
        order.payload["session"],
        session_digest("s1"),
        "the session id itself stays off the bus"
    );
    assert_eq!(
        closed_with(&on_b_rx).await,
        Some((NoticeKind::Revoked, code::FORBIDDEN))
    );
    assert_eq!(
        closed_with(&on_a_rx).await,
        Some((NoticeKind::Revoked, code::FORBIDDEN))
    );
    assert_eq!(closed_with(&bob_rx).await, None, "bob keeps his connection");
    assert_eq!(closed_with(&on_a_rx).await, None, "told once");
    assert_eq!(closed_with(&on_b_rx).await, None, "told once");
    shutdown.cancel();
}

#[tokio::test]
async fn an_instance_carries_out_its_own_revoke_once_and_ignores_its_echo() {
    let registry = registry(&config(5, OnUserLimit::CloseOldest), memory_bus(), "a");
    let shutdown = CancellationToken::new();
    registry.follow_orders().await;
    tokio::spawn(registry.clone().run(shutdown.clone()));
    let (alice, alice_rx) = handle("alice-1");
    let _slot = registry.admit_user("alice", alice, None).await.unwrap();
    let revocation = registry.revoke(Some("alice"), None).await;
    assert_eq!(
        revocation,
        Revocation {
            closed: 1,
            notified: true
        }
    );
    assert!(closed_with(&alice_rx).await.is_some());
    assert_eq!(closed_with(&alice_rx).await, None, "told once");
    shutdown.cancel();
}

//! The per-key rate limiter against the real Redis from `REDIS_URL`. Every test uses its own key
//! prefix, so tests neither see each other's budgets nor depend on what an earlier run left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use palisade::limits::keyed::{Decision, KeyedLimiter};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::helpers::{redis_url, unique_prefix};

const MINUTE: Duration = Duration::from_secs(60);

/// A fresh connection of its own, as a separate server instance would have.
async fn connection() -> ConnectionManager {
    connection_with(redis::Client::open(redis_url()).expect("a valid REDIS_URL")).await
}

async fn connection_with(client: redis::Client) -> ConnectionManager {
    ConnectionManager::new(client)
        .await
        .expect("Redis is reachable")
}

async fn check(limiter: &KeyedLimiter, key: &str) -> Decision {
    limiter.check(key).await.expect("the check succeeds")
}

#[tokio::test]
async fn exactly_limit_calls_pass_and_the_next_is_refused_until_one_period() {
    let limiter = KeyedLimiter::redis(connection().await, unique_prefix(), 5, MINUTE);
    for n in 1..=5u32 {
        let decision = check(&limiter, "alice").await;
        assert!(decision.allowed, "call {n}: {decision:?}");
        assert_eq!(decision.remaining, 5 - n);
        assert_eq!(decision.retry_after, Duration::ZERO);
    }
    let refused = check(&limiter, "alice").await;
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert!(refused.retry_after > Duration::ZERO, "{refused:?}");
    assert!(refused.retry_after <= MINUTE / 5, "{refused:?}");
    assert!(
        !check(&limiter, "alice").await.allowed,
        "a refused call frees nothing"
    );
}

#[tokio::test]
async fn two_instances_sharing_a_prefix_spend_one_budget() {
    let prefix = unique_prefix();
    let a = KeyedLimiter::redis(connection().await, prefix.clone(), 4, MINUTE);
    let b = KeyedLimiter::redis(connection().await, prefix, 4, MINUTE);
    assert_eq!(check(&a, "alice").await.remaining, 3);
    assert_eq!(check(&b, "alice").await.remaining, 2);
    assert_eq!(check(&a, "alice").await.remaining, 1);
    assert_eq!(check(&b, "alice").await.remaining, 0);
    assert!(!check(&a, "alice").await.allowed);
    assert!(!check(&b, "alice").await.allowed);
}

#[tokio::test]
async fn concurrent_checks_from_two_instances_never_overspend() {
    let prefix = unique_prefix();
    let a = Arc::new(KeyedLimiter::redis(
        connection().await,
        prefix.clone(),
        10,
        MINUTE,
    ));
    let b = Arc::new(KeyedLimiter::redis(connection().await, prefix, 10, MINUTE));
    let checks: Vec<_> = (0..40)
        .map(|n| {
            let limiter = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { limiter.check("alice").await.unwrap() })
        })
        .collect();
    let mut allowed = 0;
    for handle in checks {
        allowed += usize::from(handle.await.unwrap().allowed);
    }
    assert_eq!(allowed, 10);
}

#[tokio::test]
async fn different_keys_and_different_prefixes_are_independent() {
    let prefix = unique_prefix();
    let limiter = KeyedLimiter::redis(connection().await, prefix.clone(), 1, MINUTE);
    assert!(check(&limiter, "alice").await.allowed);
    assert!(!check(&limiter, "alice").await.allowed);
    assert!(check(&limiter, "bob").await.allowed, "another key");

    let other = KeyedLimiter::redis(connection().await, format!("{prefix}-other"), 1, MINUTE);
    assert!(check(&other, "alice").await.allowed, "another prefix");
}

#[tokio::test]
async fn capacity_comes_back_after_waiting() {
    let limiter = KeyedLimiter::redis(
        connection().await,
        unique_prefix(),
        2,
        Duration::from_secs(1),
    );
    assert!(check(&limiter, "k").await.allowed);
    assert!(check(&limiter, "k").await.allowed);
    let refused = check(&limiter, "k").await;
    assert!(!refused.allowed);
    assert!(
        refused.retry_after <= Duration::from_millis(500),
        "{refused:?}"
    );

    tokio::time::sleep(refused.retry_after + Duration::from_millis(30)).await;
    let again = check(&limiter, "k").await;
    assert!(again.allowed, "one period later: {again:?}");
    assert_eq!(again.remaining, 0);
    assert!(!check(&limiter, "k").await.allowed, "but only one");
}

#[tokio::test]
async fn the_key_holds_the_tat_and_expires_when_it_passes() {
    let prefix = unique_prefix();
    let limiter = KeyedLimiter::redis(connection().await, prefix.clone(), 5, MINUTE);
    let mut redis = connection().await;
    let key = format!("{prefix}:ratelimit:alice");

    check(&limiter, "alice").await;
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 12_000,
        "one call keeps the key one period: {ttl}"
    );
    let tat: String = redis.get(&key).await.unwrap();
    let tat: u64 = tat.parse().expect("the TAT is an integer of microseconds");
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let now = seconds * 1_000_000 + micros;
    assert!(tat > now && tat <= now + 12_000_000, "tat {tat}, now {now}");

    for _ in 0..4 {
        check(&limiter, "alice").await;
    }
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert!(
        ttl > 50_000 && ttl <= 60_000,
        "a spent burst keeps it about a window: {ttl}"
    );

    let short = KeyedLimiter::redis(
        connection().await,
        prefix.clone(),
        2,
        Duration::from_millis(200),
    );
    check(&short, "bob").await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let exists: bool = redis
        .exists(format!("{prefix}:ratelimit:bob"))
        .await
        .unwrap();
    assert!(!exists, "an idle key is gone once its TAT passed");
}

#[tokio::test]
async fn unreachable_redis_is_an_error_promptly() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    // `ConnectionManager::new` would fail right here; a lazy one fails at the first command, after
    // its reconnect retries with backoff, which the limiter does not wait out.
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let connection =
        ConnectionManager::new_lazy_with_config(client, ConnectionManagerConfig::new()).unwrap();
    let limiter = KeyedLimiter::redis(connection, unique_prefix(), 5, MINUTE);
    assert_fails_promptly(&limiter).await;
    assert_fails_promptly(&limiter).await;
}

#[tokio::test]
async fn redis_going_away_after_startup_is_an_error_promptly() {
    let proxy = Proxy::start().await;
    let limiter = KeyedLimiter::redis(
        connection_with(proxy.client()).await,
        unique_prefix(),
        5,
        MINUTE,
    );
    assert!(check(&limiter, "alice").await.allowed);
    proxy.down.cancel();
    assert_fails_promptly(&limiter).await;
    assert_fails_promptly(&limiter).await;
}

#[tokio::test]
async fn redis_that_stops_answering_is_an_error_promptly() {
    let proxy = Proxy::start().await;
    // No response timeout of its own: the limiter's timeout is what bounds the wait.
    let client = proxy.client();
    let config = ConnectionManagerConfig::new().set_response_timeout(None);
    let connection = ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let limiter = KeyedLimiter::redis(connection, unique_prefix(), 5, MINUTE);
    assert!(check(&limiter, "alice").await.allowed);
    proxy.blackhole.store(true, Ordering::SeqCst);
    assert_fails_promptly(&limiter).await;
}

/// `check` returns an error (not a decision, not a panic) within a few seconds.
async fn assert_fails_promptly(limiter: &KeyedLimiter) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), limiter.check("alice"))
        .await
        .expect("the check gives up by itself");
    assert!(result.is_err(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A TCP proxy in front of Redis that a test can take down (every connection dropped, the port
/// closed) or turn into a black hole (connections stay open, requests are swallowed).
struct Proxy {
    /// `REDIS_URL`'s settings (credentials, database) with the proxy's address.
    info: redis::ConnectionInfo,
    down: CancellationToken,
    blackhole: Arc<AtomicBool>,
}

impl Proxy {
    async fn start() -> Self {
        let info = redis::Client::open(redis_url())
            .unwrap()
            .get_connection_info()
            .clone();
        let upstream = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => panic!("the proxy needs a TCP Redis, not {other:?}"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy {
            info: info.set_addr(redis::ConnectionAddr::Tcp(
                addr.ip().to_string(),
                addr.port(),
            )),
            down: CancellationToken::new(),
            blackhole: Arc::default(),
        };
        let (down, blackhole) = (proxy.down.clone(), proxy.blackhole.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = down.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                };
                tokio::spawn(pipe(
                    client,
                    upstream.clone(),
                    down.clone(),
                    blackhole.clone(),
                ));
            }
        });
        proxy
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.info.clone()).unwrap()
    }
}

async fn pipe(
    mut client: TcpStream,
    upstream: String,
    down: CancellationToken,
    blackhole: Arc<AtomicBool>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    let (mut to_server, mut to_client) = ([0u8; 4096], [0u8; 4096]);
    loop {
        tokio::select! {
            _ = down.cancelled() => return,
            read = client_rx.read(&mut to_server) => {
                let Ok(n @ 1..) = read else { return };
                if !blackhole.load(Ordering::SeqCst)
                    && server_tx.write_all(&to_server[..n]).await.is_err()
                {
                    return;
                }
            }
            read = server_rx.read(&mut to_client) => {
                let Ok(n @ 1..) = read else { return };
                if client_tx.write_all(&to_client[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

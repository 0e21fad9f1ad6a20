//! Per-key rate limits: "N operations per window per key", such as `sendMessage` 30 per minute per
//! user, whichever connection (and whichever server instance) the user sends from.
//!
//! Both variants run the same GCRA (generic cell rate algorithm) as governor's
//! `Quota::with_period(window / limit).allow_burst(limit)`: each call costs one *period*
//! (`window / limit`), a fresh key may spend `limit` calls in one burst, and after that one call
//! passes per period. GCRA keeps a single number per key, the *theoretical arrival time* (TAT):
//! the instant at which the key's bucket would be full again. A call at `now` passes when
//! `now >= TAT - (limit - 1) * period` and then moves the TAT one period later.
//!
//! - [`KeyedLimiter::in_process`] counts in this process only (governor's keyed limiter).
//! - [`KeyedLimiter::redis`] counts in Redis, so every instance shares one budget per key.
//!
//! # Redis key layout
//!
//! One string key per limited key: `{key_prefix}:ratelimit:{key}`, for example
//! `palisade:ratelimit:sendMessage:alice`. Its value is the TAT in whole microseconds of the Redis
//! server's clock (`TIME`), written as a decimal integer. Each write sets a `PX` expiry of the time
//! left until that TAT (at most the window): once it passes, a missing key and the stored one mean
//! the same thing (a full bucket), so idle keys vanish on their own and nothing leaks.

use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use redis::Script;
use redis::aio::ConnectionManager;

/// A Redis check gives up after this, whatever the connection's own timeouts: a rate-limit check
/// sits in front of a client's operation and must never stall it for long, not even while the
/// `ConnectionManager` is still retrying a reconnect with backoff.
const REDIS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of one [`KeyedLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call may go ahead (and consumed one unit).
    pub allowed: bool,
    /// Burst capacity left after this call: how many more calls would pass right now. Zero when
    /// refused. For warnings and `extensions.rateLimit`.
    pub remaining: u32,
    /// Zero when allowed; otherwise how long until one more call would pass.
    pub retry_after: Duration,
}

/// A rate limiter keyed by an arbitrary string (a user id, `operation:user`, …).
pub enum KeyedLimiter {
    /// Counts in this process only.
    InProcess(DefaultKeyedRateLimiter<String, StateInformationMiddleware>),
    /// Counts in Redis, shared by every instance that uses the same prefix.
    Redis(RedisLimiter),
}

/// The state of [`KeyedLimiter::Redis`].
pub struct RedisLimiter {
    connection: ConnectionManager,
    key_prefix: String,
    limit: NonZeroU32,
    /// The cost of one call (`window / limit`) in whole microseconds, at least one.
    period_us: u64,
}

/// The GCRA decision, made atomically in Redis. Scripts run alone (no other command interleaves),
/// so two instances checking the same key at once cannot both spend the last unit.
///
/// KEYS[1] = `{key_prefix}:ratelimit:{key}`, ARGV[1] = the period in µs, ARGV[2] = the limit.
/// Returns `{allowed (1 or 0), remaining, retry_after in µs}`.
const GCRA_LUA: &str = r"
-- Redis before 5 replicates scripts verbatim, which would re-run TIME on replicas with a different
-- result (and refuses writes after TIME); ask for the written effects to be replicated instead.
-- From Redis 5 on this is the default, and Redis 7 keeps the call as a no-op.
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
-- How far ahead of now the TAT may be for a call to still pass: the burst beyond the first call.
local tolerance = period * (limit - 1)

-- The Redis server's clock, not the caller's: instances whose clocks disagree still agree on
-- when a key's capacity comes back. Microseconds since the epoch (about 2^51 today) are exact in
-- Lua's doubles.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- A missing key, or a TAT already in the past, is a full bucket: start counting from now.
local tat = tonumber(redis.call('GET', key))
if tat == nil or tat < now then
  tat = now
end

-- Too early: refuse without writing anything (a refused call costs nothing), and say when the
-- next call would pass.
local allow_at = tat - tolerance
if now < allow_at then
  return {0, 0, allow_at - now}
end

-- Allowed: this call costs one period. Store the new TAT and let the key expire when the TAT
-- passes, because from then on a missing key means exactly the same (at most one window away).
local new_tat = tat + period
redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))

-- Whole calls that still fit before the new TAT reaches the tolerance.
return {1, math.floor((now + tolerance + period - new_tat) / period), 0}
";

/// Compiled once; `Script` computes the SHA1 for `EVALSHA` here.
static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// The limit as governor needs it (a zero limit is treated as one, as in the connection limits),
/// and the period both variants use: `window / limit`, rounded down to whole microseconds (the
/// Redis variant's unit) and at least one, so both variants decide exactly alike.
fn rate(limit: u32, window: Duration) -> (NonZeroU32, Duration) {
    let limit = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
    let micros = (window / limit.get()).as_micros().max(1);
    let period = Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX));
    (limit, period)
}

impl KeyedLimiter {
    /// `limit` calls per `window` per key, counted in this process.
    pub fn in_process(limit: u32, window: Duration) -> Self {
        let (limit, period) = rate(limit, window);
        let quota = Quota::with_period(period)
            .expect("the period is at least a microsecond")
            .allow_burst(limit);
        Self::InProcess(RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>())
    }

    /// `limit` calls per `window` per key, counted in Redis under `{key_prefix}:ratelimit:{key}`:
    /// every instance built with the same prefix shares one budget per key.
    pub fn redis(
        connection: ConnectionManager,
        key_prefix: String,
        limit: u32,
        window: Duration,
    ) -> Self {
        let (limit, period) = rate(limit, window);
        Self::Redis(RedisLimiter {
            connection,
            key_prefix,
            limit,
            period_us: u64::try_from(period.as_micros()).unwrap_or(u64::MAX),
        })
    }

    /// Checks one call for `key` and, when it is allowed, consumes one unit of the key's budget.
    ///
    /// Errors only for the Redis variant, when Redis fails or does not answer within two seconds.
    /// This does not decide what an error means: the caller chooses to fail open (let the call
    /// through, keeping the service up while Redis is down) or closed (refuse it).
    pub async fn check(&self, key: &str) -> anyhow::Result<Decision> {
        match self {
            Self::InProcess(limiter) => Ok(check_in_process(limiter, key)),
            Self::Redis(limiter) => limiter.check(key).await,
        }
    }

    /// Forgets in-process state of keys idle for long enough that it equals a full bucket,
    /// bounding memory over key churn; call it periodically. A no-op for Redis, whose keys expire.
    pub fn retain_recent(&self) {
        match self {
            Self::InProcess(limiter) => limiter.retain_recent(),
            Self::Redis(_) => {}
        }
    }
}

fn check_in_process(
    limiter: &DefaultKeyedRateLimiter<String, StateInformationMiddleware>,
    key: &str,
) -> Decision {
    match limiter.check_key(&key.to_string()) {
        Ok(snapshot) => Decision {
            allowed: true,
            remaining: snapshot.remaining_burst_capacity(),
            retry_after: Duration::ZERO,
        },
        Err(not_until) => Decision {
            allowed: false,
            remaining: 0,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        },
    }
}

impl RedisLimiter {
    async fn check(&self, key: &str) -> anyhow::Result<Decision> {
        let redis_key = format!("{}:ratelimit:{key}", self.key_prefix);
        // `ConnectionManager` is a cheap handle onto one shared multiplexed connection.
        let mut connection = self.connection.clone();
        // `invoke_async` sends EVALSHA and, on NOSCRIPT (a restarted or flushed Redis), loads the
        // script and retries, so the script body crosses the network only when needed.
        let mut invocation = GCRA.prepare_invoke();
        invocation
            .key(&redis_key)
            .arg(self.period_us)
            .arg(self.limit.get());
        let (allowed, remaining, retry_after_us) = tokio::time::timeout(
            REDIS_CHECK_TIMEOUT,
            invocation.invoke_async::<(i64, i64, i64)>(&mut connection),
        )
        .await
        .context("Redis did not answer the rate-limit check in time")?
        .context("running the rate-limit script in Redis")?;
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            retry_after: Duration::from_micros(u64::try_from(retry_after_us).unwrap_or(0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exactly_limit_calls_pass_in_a_burst_and_the_next_is_refused() {
        let window = Duration::from_secs(60);
        let limiter = KeyedLimiter::in_process(30, window);
        for n in 1..=30u32 {
            let decision = limiter.check("alice").await.unwrap();
            assert!(decision.allowed, "call {n} passes");
            assert_eq!(decision.remaining, 30 - n);
            assert_eq!(decision.retry_after, Duration::ZERO);
        }
        let refused = limiter.check("alice").await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert!(refused.retry_after > Duration::ZERO, "{refused:?}");
        assert!(refused.retry_after <= window / 30, "{refused:?}");
    }

    #[tokio::test]
    async fn different_keys_have_separate_budgets() {
        let limiter = KeyedLimiter::in_process(2, Duration::from_secs(60));
        assert!(limiter.check("alice").await.unwrap().allowed);
        assert!(limiter.check("alice").await.unwrap().allowed);
        assert!(!limiter.check("alice").await.unwrap().allowed);
        let bob = limiter.check("bob").await.unwrap();
        assert!(bob.allowed);
        assert_eq!(bob.remaining, 1);
    }

    #[tokio::test]
    async fn capacity_comes_back_after_one_period() {
        let limiter = KeyedLimiter::in_process(2, Duration::from_secs(1));
        assert!(limiter.check("k").await.unwrap().allowed);
        assert!(limiter.check("k").await.unwrap().allowed);
        let refused = limiter.check("k").await.unwrap();
        assert!(!refused.allowed);
        assert!(refused.retry_after <= Duration::from_millis(500));
        tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
        let again = limiter.check("k").await.unwrap();
        assert!(again.allowed, "{again:?}");
        assert_eq!(again.remaining, 0);
        assert!(!limiter.check("k").await.unwrap().allowed);
    }

    #[tokio::test]
    async fn retain_recent_keeps_the_budget_of_active_keys() {
        let limiter = KeyedLimiter::in_process(1, Duration::from_secs(60));
        assert!(limiter.check("k").await.unwrap().allowed);
        limiter.retain_recent();
        assert!(!limiter.check("k").await.unwrap().allowed);
    }

    #[test]
    fn the_period_is_whole_microseconds_and_never_zero() {
        assert_eq!(
            rate(30, Duration::from_secs(60)),
            (NonZeroU32::new(30).unwrap(), Duration::from_secs(2))
        );
        assert_eq!(
            rate(3, Duration::from_secs(1)).1,
            Duration::from_micros(333_333)
        );
        assert_eq!(
            rate(0, Duration::ZERO),
            (NonZeroU32::MIN, Duration::from_micros(1))
        );
    }
}

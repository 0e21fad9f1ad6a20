//! A connection's operation budget: `operations.rate_limit.limit` operations per `window`, as a
//! GCRA (governor) whose burst is the whole limit, so operations 1..=limit pass at once and
//! operation limit+1 is refused until the window frees capacity.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::{OnExceed, RateLimit};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Warnings buffered for a slow `rateLimitWarning` subscriber.
const WARNING_BUFFER: usize = 4;

/// Where a connection stands against its budget; rides on every result as `extensions.rateLimit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Operations counted in the current window (including the one just checked).
    pub current: u32,
    pub limit: u32,
    pub window_seconds: u64,
    /// Seconds until the budget has room again (refused) or is whole again (warned).
    pub retry_after_seconds: u64,
}

/// A `rateLimitWarning` event.
#[derive(Clone, Debug)]
pub struct Warning {
    pub standing: Standing,
    pub message: String,
    /// The connection is about to be closed for exceeding its budget.
    pub last: bool,
}

pub enum Verdict {
    Pass(Standing),
    /// Passed, and the warning threshold was crossed: warn (at most once per window).
    Warn(Standing),
    Refuse(Standing),
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

pub struct Budget {
    limiter: Limiter,
    limit: u32,
    window: Duration,
    warn_from: u32,
    pub on_exceed: OnExceed,
    last_warning: Mutex<Option<Instant>>,
    warnings: broadcast::Sender<Warning>,
}

impl Budget {
    pub fn new(config: &RateLimit) -> Self {
        let limit = NonZeroU32::new(config.limit).unwrap_or(NonZeroU32::MIN);
        let window = config.window.get().max(Duration::from_millis(1));
        // One unit comes back every window/limit; the burst is the whole limit.
        let quota = Quota::with_period(window / limit.get())
            .unwrap_or_else(|| Quota::per_second(limit))
            .allow_burst(limit);
        Self {
            limiter: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
            limit: limit.get(),
            window,
            warn_from: (config.warn_at * f64::from(limit.get())).ceil() as u32,
            on_exceed: config.on_exceed,
            last_warning: Mutex::new(None),
            warnings: broadcast::channel(WARNING_BUFFER).0,
        }
    }

    /// Counts one operation.
    pub fn consume(&self) -> Verdict {
        match self.limiter.check() {
            Ok(snapshot) => {
                let current = self.limit - snapshot.remaining_burst_capacity();
                let standing = self.standing(
                    current,
                    self.window
                        .mul_f64(f64::from(current) / f64::from(self.limit)),
                );
                if current >= self.warn_from && self.first_warning_this_window() {
                    Verdict::Warn(standing)
                } else {
                    Verdict::Pass(standing)
                }
            }
            Err(not_until) => Verdict::Refuse(self.standing(
                self.limit,
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
        }
    }

    fn standing(&self, current: u32, retry_after: Duration) -> Standing {
        Standing {
            current,
            limit: self.limit,
            window_seconds: self.window.as_secs().max(1),
            retry_after_seconds: retry_after.as_secs_f64().ceil() as u64,
        }
    }

    fn first_warning_this_window(&self) -> bool {
        let mut last = self.last_warning.lock().expect("budget lock poisoned");
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.window) {
            return false;
        }
        *last = Some(now);
        true
    }

    pub fn warn(&self, warning: Warning) {
        // No subscriber is fine: the numbers also ride on every result.
        let _ = self.warnings.send(warning);
    }

    pub fn warnings(&self) -> broadcast::Receiver<Warning> {
        self.warnings.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u32) -> Budget {
        let config = RateLimit {
            limit,
            window: crate::config::units::Duration::secs(60),
            ..RateLimit::default()
        };
        Budget::new(&config)
    }

    #[test]
    fn the_warning_comes_at_the_80th_of_100_once_and_the_101st_is_refused() {
        let budget = budget(100);
        let mut warned_at = Vec::new();
        for n in 1..=100 {
            match budget.consume() {
                Verdict::Pass(s) => assert_eq!(s.current, n),
                Verdict::Warn(s) => warned_at.push(s.current),
                Verdict::Refuse(_) => panic!("operation {n} refused"),
            }
        }
        assert_eq!(warned_at, [80]);
        match budget.consume() {
            Verdict::Refuse(s) => {
                assert_eq!((s.current, s.limit, s.window_seconds), (100, 100, 60));
                assert!((1..=1).contains(&s.retry_after_seconds), "{s:?}");
            }
            _ => panic!("operation 101 passed"),
        }
    }

    #[test]
    fn a_small_limit_rounds_the_threshold_up() {
        let budget = budget(3);
        assert!(matches!(budget.consume(), Verdict::Pass(_)));
        assert!(matches!(budget.consume(), Verdict::Pass(_)));
        assert!(matches!(budget.consume(), Verdict::Warn(s) if s.current == 3));
        assert!(matches!(budget.consume(), Verdict::Refuse(_)));
    }
}

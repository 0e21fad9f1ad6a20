//! A connection's operation budget: `operations.rate_limit.limit` operations per `window`, as a
//! GCRA (governor) whose burst is the whole limit, so operations 1..=limit pass at once and
//! operation limit+1 is refused until the window frees capacity.
//!
//! The budget reads `operations.rate_limit` from the live configuration on every operation: when a
//! reload changed it, the quota is rebuilt (with a fresh count), so new limits apply to connections
//! that are already open.
//!
//! Operations are counted in the order the client sent them, not in the order their tasks happen
//! to run: the connection loop takes a [`Ticket`] for each message on arrival, and the guard counts
//! a ticket only once every earlier ticket was counted or released. So the (limit+1)-th counted
//! message is the one refused, every time.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::config::{LiveConfig, OnExceed, RateLimit};
use crate::sync::lock;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One clock for every connection's budget. Making a clock calibrates it against the CPU's
/// counter, which profiled as a tenth of the server's CPU during a connect burst when each
/// connection made its own; clones share the calibration.
static CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

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
    Refuse(Standing, OnExceed),
}

/// The quota built from one version of `operations.rate_limit`.
struct ActiveQuota {
    rules: RateLimit,
    limiter: Limiter,
    limit: u32,
    window: Duration,
    warn_from: u32,
    last_warning: Option<Instant>,
}

impl ActiveQuota {
    fn new(rules: &RateLimit) -> Self {
        let limit = NonZeroU32::new(rules.limit).unwrap_or(NonZeroU32::MIN);
        let window = rules.window.get().max(Duration::from_millis(1));
        // One unit comes back every window/limit; the burst is the whole limit.
        let quota = Quota::with_period(window / limit.get())
            .unwrap_or_else(|| Quota::per_second(limit))
            .allow_burst(limit);
        Self {
            rules: rules.clone(),
            limiter: RateLimiter::direct_with_clock(quota, CLOCK.clone())
                .with_middleware::<StateInformationMiddleware>(),
            limit: limit.get(),
            window,
            warn_from: (rules.warn_at * f64::from(limit.get())).ceil() as u32,
            last_warning: None,
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
}

/// Which ticket's turn it is.
#[derive(Default)]
struct Turns {
    /// Tickets handed out so far; the next one gets this number.
    issued: u64,
    /// The ticket whose turn it is: every earlier one was counted or released.
    serving: u64,
    /// Tickets released before their turn (their operation was refused or dropped early). At most
    /// as many as the connection's operations still in flight.
    released_early: BTreeSet<u64>,
}

impl Turns {
    /// Ends ticket `seq`'s turn; whether the turn moved on.
    fn finish(&mut self, seq: u64) -> bool {
        if seq < self.serving {
            return false;
        }
        if seq > self.serving {
            self.released_early.insert(seq);
            return false;
        }
        self.serving += 1;
        while self.released_early.remove(&self.serving) {
            self.serving += 1;
        }
        true
    }
}

pub struct Budget {
    live: LiveConfig,
    quota: Mutex<ActiveQuota>,
    /// Made by the first `rateLimitWarning` subscriber: a broadcast channel allocates its slots up
    /// front, and most connections never listen. Until then a warning has nobody to reach (the
    /// numbers also ride on every result).
    warnings: OnceLock<broadcast::Sender<Warning>>,
    turns: Mutex<Turns>,
    /// Wakes waiting tickets when the turn moves on. A `Notify` instead of a watch channel:
    /// every connection has a budget, and a watch channel's state is ~350 bytes.
    turned: Notify,
    /// Set by the first refusal that closes the connection: however many operations are refused
    /// before the close, one final warning goes out.
    closing: AtomicBool,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget").finish_non_exhaustive()
    }
}

impl Budget {
    pub fn new(live: LiveConfig) -> Self {
        let quota = ActiveQuota::new(&live.load().operations.rate_limit);
        Self {
            live,
            quota: Mutex::new(quota),
            warnings: OnceLock::new(),
            turns: Mutex::default(),
            turned: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// A place in the counting order, taken when a message arrives.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let seq = {
            let mut turns = lock(&self.turns);
            turns.issued += 1;
            turns.issued - 1
        };
        Ticket {
            budget: self.clone(),
            seq,
        }
    }

    /// Whether this is the first refusal to close the connection (the one that warns).
    pub fn close_once(&self) -> bool {
        !self.closing.swap(true, Ordering::AcqRel)
    }

    /// Counts one operation.
    fn consume(&self) -> Verdict {
        let mut quota = self.quota.lock().expect("budget lock poisoned");
        let rules = &self.live.load().operations.rate_limit;
        if *rules != quota.rules {
            *quota = ActiveQuota::new(rules);
        }
        match quota.limiter.check() {
            Ok(snapshot) => {
                let current = quota.limit - snapshot.remaining_burst_capacity();
                let until_whole = quota
                    .window
                    .mul_f64(f64::from(current) / f64::from(quota.limit));
                let standing = quota.standing(current, until_whole);
                let now = Instant::now();
                let warned_this_window = quota
                    .last_warning
                    .is_some_and(|at| now.duration_since(at) < quota.window);
                if current >= quota.warn_from && !warned_this_window {
                    quota.last_warning = Some(now);
                    Verdict::Warn(standing)
                } else {
                    Verdict::Pass(standing)
                }
            }
            Err(not_until) => {
                let standing = quota.standing(
                    quota.limit,
                    not_until.wait_time_from(DefaultClock::default().now()),
                );
                Verdict::Refuse(standing, quota.rules.on_exceed)
            }
        }
    }

    pub fn warn(&self, warning: Warning) {
        // No subscriber is fine: the numbers also ride on every result.
        if let Some(warnings) = self.warnings.get() {
            let _ = warnings.send(warning);
        }
    }

    pub fn warnings(&self) -> broadcast::Receiver<Warning> {
        self.warnings
            .get_or_init(|| broadcast::channel(WARNING_BUFFER).0)
            .subscribe()
    }

    fn finish(&self, seq: u64) {
        if lock(&self.turns).finish(seq) {
            self.turned.notify_waiters();
        }
    }

    fn has_turn(&self, seq: u64) -> bool {
        lock(&self.turns).serving >= seq
    }
}

/// One message's place in its connection's counting order. Counting waits for every earlier
/// ticket; a ticket that is released, or dropped with its operation (refused, aborted, exempt,
/// failed), gives up its turn, so no later operation waits on it.
pub struct Ticket {
    budget: Arc<Budget>,
    seq: u64,
}

impl Ticket {
    /// Counts the operation once every earlier ticket has had its turn.
    pub async fn count(&self) -> Verdict {
        // Nearly always the ticket's turn has come (operations on a connection rarely overtake
        // each other): then there is nothing to wait for, nor a receiver to make.
        if !self.budget.has_turn(self.seq) {
            self.wait_turn().await;
        }
        let verdict = self.budget.consume();
        self.release();
        verdict
    }

    async fn wait_turn(&self) {
        loop {
            // Registered before the check, so a turn that moves on in between still wakes it.
            let turned = self.budget.turned.notified();
            tokio::pin!(turned);
            turned.as_mut().enable();
            if self.budget.has_turn(self.seq) {
                return;
            }
            turned.await;
        }
    }

    /// Gives up the turn without counting (exempt operations).
    pub fn release(&self) {
        self.budget.finish(self.seq);
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;

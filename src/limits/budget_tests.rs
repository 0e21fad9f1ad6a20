//! Tests of `budget`.
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::*;
use crate::config::Config;

fn live(limit: u32) -> LiveConfig {
    let mut config = Config::default();
    config.operations.rate_limit.limit = limit;
    config.operations.rate_limit.window = crate::config::units::Duration::secs(3600);
    Arc::new(ArcSwap::from_pointee(config))
}

#[test]
fn the_warning_comes_at_the_80th_of_100_once_and_the_101st_is_refused() {
    let budget = Budget::new(live(100));
    let mut warned_at = Vec::new();
    for n in 1..=100 {
        match budget.consume() {
            Verdict::Pass(s) => assert_eq!(s.current, n),
            Verdict::Warn(s) => warned_at.push(s.current),
            Verdict::Refuse(..) => panic!("operation {n} refused"),
        }
    }
    assert_eq!(warned_at, [80]);
    match budget.consume() {
        Verdict::Refuse(s, on_exceed) => {
            assert_eq!((s.current, s.limit, s.window_seconds), (100, 100, 3600));
            assert_eq!(on_exceed, OnExceed::Disconnect);
            assert!(s.retry_after_seconds >= 1, "{s:?}");
        }
        _ => panic!("operation 101 passed"),
    }
}

#[tokio::test]
async fn tickets_are_counted_in_the_order_they_were_taken_whatever_order_they_ask_in() {
    let budget = Arc::new(Budget::new(live(2)));
    let [first, second, third, fourth] = [(); 4].map(|()| budget.ticket());
    let fourth = tokio::spawn(async move { fourth.count().await });
    let third = tokio::spawn(async move { third.count().await });
    tokio::task::yield_now().await;
    assert!(!third.is_finished() && !fourth.is_finished());
    // The first operation was dropped before it was counted: its turn passes on.
    drop(first);
    assert!(matches!(second.count().await, Verdict::Pass(s) if s.current == 1));
    assert!(matches!(third.await.unwrap(), Verdict::Warn(s) if s.current == 2));
    assert!(matches!(fourth.await.unwrap(), Verdict::Refuse(..)));
}

#[tokio::test]
async fn a_ticket_released_before_its_turn_holds_up_no_later_one() {
    let budget = Arc::new(Budget::new(live(10)));
    let [first, second, third] = [(); 3].map(|()| budget.ticket());
    second.release();
    let third = tokio::spawn(async move { third.count().await });
    assert!(matches!(first.count().await, Verdict::Pass(s) if s.current == 1));
    assert!(matches!(third.await.unwrap(), Verdict::Pass(s) if s.current == 2));
}

#[test]
fn only_the_first_closing_refusal_may_warn() {
    let budget = Budget::new(live(1));
    assert!(budget.close_once());
    assert!(!budget.close_once());
}

#[test]
fn a_small_limit_rounds_the_threshold_up() {
    let budget = Budget::new(live(3));
    assert!(matches!(budget.consume(), Verdict::Pass(_)));
    assert!(matches!(budget.consume(), Verdict::Pass(_)));
    assert!(matches!(budget.consume(), Verdict::Warn(s) if s.current == 3));
    assert!(matches!(budget.consume(), Verdict::Refuse(..)));
}

#[test]
fn a_reloaded_limit_applies_to_a_live_budget() {
    let config = live(100);
    let budget = Budget::new(config.clone());
    for _ in 0..10 {
        budget.consume();
    }
    let mut stricter = (**config.load()).clone();
    stricter.operations.rate_limit.limit = 2;
    stricter.operations.rate_limit.on_exceed = OnExceed::Reject;
    config.store(Arc::new(stricter));
    assert!(matches!(budget.consume(), Verdict::Pass(s) if s.limit == 2));
    assert!(matches!(budget.consume(), Verdict::Warn(s) if s.current == 2));
    assert!(matches!(
        budget.consume(),
        Verdict::Refuse(_, OnExceed::Reject)
    ));
}

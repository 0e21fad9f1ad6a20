//! A member's queue as the subscriber's stream of deliveries.

use futures_util::Stream;
use futures_util::stream;

use super::{GapCause, Live, Member};
use crate::bus::{Delivery, EventId};

impl Member {
    /// Live deliveries. Events up to `seam` were replayed already and are dropped; `last` is the
    /// newest event the subscriber has, which a `Gap` reports as its `after`.
    pub fn live(
        self,
        seam: Option<EventId>,
        last: Option<EventId>,
    ) -> impl Stream<Item = Delivery> + Send + 'static {
        // `gapped`: the last delivery was a gap. Another one before any event adds nothing (it
        // reports the same hole), so it is not delivered, nor counted.
        stream::unfold(
            (self, seam, last, false),
            |(mut member, mut seam, mut last, gapped)| async move {
                loop {
                    // The sender lives in the fan-out until this member leaves, so the queue only
                    // ends if the whole fan-out is gone.
                    match member.rx.recv().await? {
                        Live::Event(event) => {
                            if seam.is_some_and(|seam| event.id <= seam) {
                                continue;
                            }
                            // Later events of the shard all come after this one.
                            seam = None;
                            last = Some(event.id);
                            let state = (member, seam, last, false);
                            return Some((Delivery::Event(event), state));
                        }
                        Live::Gap(cause) => {
                            if cause == GapCause::RedisReset {
                                // The new stream's ids need not be above the old ones.
                                seam = None;
                            }
                            if gapped {
                                continue;
                            }
                            if let Some(metrics) = &member.fanout.metrics {
                                metrics.bus_gaps.with_label_values(&[cause.label()]).inc();
                            }
                            let state = (member, seam, last, true);
                            return Some((Delivery::Gap { after: last }, state));
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;
    use futures_util::StreamExt;
    use serde_json::Value;

    use super::super::Fanout;
    use super::*;
    use crate::bus::Event;
    use crate::metrics::Metrics;

    fn event(topic: &str, ms: u64) -> Arc<Event> {
        Arc::new(Event {
            id: EventId { ms, seq: 0 },
            topic: topic.into(),
            kind: "k".into(),
            payload: Value::Null,
            published_at: Utc::now(),
        })
    }

    fn shown(delivery: Delivery) -> String {
        match delivery {
            Delivery::Event(e) => e.id.ms.to_string(),
            Delivery::Gap { after } => format!("GAP after {:?}", after.map(|a| a.ms)),
        }
    }

    #[tokio::test]
    async fn replayed_events_are_dropped_at_the_seam_and_gaps_reach_every_topic_of_the_shard() {
        let metrics = Arc::new(Metrics::new("test"));
        let fanout = Fanout::new(1, 8, Some(metrics.clone()));
        let seam = Some(EventId { ms: 2, seq: 0 });
        let mut t = Box::pin(fanout.join(0, "t").live(seam, seam));
        let mut u = Box::pin(fanout.join(0, "u").live(None, None));
        for ms in [1, 2, 3] {
            fanout.deliver(0, &event("t", ms));
        }
        fanout.gap(0, GapCause::RedisReset);
        fanout.deliver(0, &event("t", 1));
        let got: Vec<String> = t.by_ref().take(3).map(shown).collect().await;
        assert_eq!(got, ["3", "GAP after Some(3)", "1"]);
        assert_eq!(shown(u.next().await.unwrap()), "GAP after None");
        let counted = metrics.bus_gaps.with_label_values(&["redis_reset"]).get();
        assert_eq!(counted, 2, "one per subscriber told");
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_one_gap_right_after_its_last_event() {
        let metrics = Arc::new(Metrics::new("test"));
        let fanout = Fanout::new(1, 2, Some(metrics.clone()));
        let mut slow = Box::pin(fanout.join(0, "t").live(None, None));
        let mut fast = Box::pin(fanout.join(0, "t").live(None, None));
        for ms in 1..=5 {
            fanout.deliver(0, &event("t", ms));
            assert_eq!(shown(fast.next().await.unwrap()), ms.to_string());
        }
        // 3 to 5 were lost; the gap is there without waiting for another event.
        let got: Vec<String> = slow.by_ref().take(3).map(shown).collect().await;
        assert_eq!(got, ["1", "2", "GAP after Some(2)"]);
        fanout.deliver(0, &event("t", 6));
        assert_eq!(shown(slow.next().await.unwrap()), "6");
        let counted = metrics.bus_gaps.with_label_values(&["lagged"]).get();
        assert_eq!(counted, 1);
    }

    #[tokio::test]
    async fn a_reset_that_finds_the_queue_full_still_clears_the_seam_without_a_second_gap() {
        let fanout = Fanout::new(1, 2, None);
        let seam = Some(EventId { ms: 9, seq: 0 });
        let mut live = Box::pin(fanout.join(0, "t").live(seam, seam));
        for ms in [8, 9, 10] {
            fanout.deliver(0, &event("t", ms));
        }
        // Full, ending with the gap for 10: the reset waits, and must still reset the seam.
        fanout.gap(0, GapCause::RedisReset);
        fanout.gap(0, GapCause::Lagged);
        assert_eq!(shown(live.next().await.unwrap()), "GAP after Some(9)");
        let mut next = live.next();
        assert!(futures_util::poll!(&mut next).is_pending());
        fanout.deliver(0, &event("t", 1));
        assert_eq!(shown(next.await.unwrap()), "1");
    }
}

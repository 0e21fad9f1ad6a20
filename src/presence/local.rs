//! This instance's presence, as the worker keeps it: which connections hold subscriptions to
//! which topics, and which are lingering.
//!
//! A connection whose last subscription to a topic ends stays present for `streams.presence_linger`
//! before it leaves; subscribing again meanwhile keeps it present as if it had never gone. So a
//! client cycling subscribe and complete on a topic costs one JOIN, one `online` row, and, once it
//! stops for longer than the linger, one LEAVE and one `offline` row: what presence subscribers are
//! sent and what `presence_log` holds for a user on a topic is at most one pair per connection per
//! linger, however fast the client churns. A flap (a re-subscribe within the linger) is never
//! published at all.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::{Entry, Op};

/// Subscriptions of one connection to one topic: the connection is present while there is one,
/// or while it lingers after the last.
struct Present {
    user: String,
    subscriptions: usize,
    /// When a lingering connection leaves; `None` while it has subscriptions.
    leaves_at: Option<Instant>,
    /// It has an item in the linger queue (at most one, so churn cannot grow the queue).
    queued: bool,
}

type Key = (String, String);

pub struct Local {
    present: HashMap<Key, Present>,
    linger: Duration,
    /// Lingering connections in the order they went quiet; an item whose connection subscribed
    /// again, or went quiet again later, is settled when it comes up.
    lingering: VecDeque<(Instant, Key)>,
}

impl Local {
    pub fn new(linger: Duration) -> Self {
        Self {
            present: HashMap::new(),
            linger,
            lingering: VecDeque::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    /// A subscription started: the join to apply, if the connection was not present already.
    pub fn enter(&mut self, entry: Entry) -> Option<(Op, Entry)> {
        let key = (entry.topic.clone(), entry.connection.clone());
        let present = self.present.entry(key).or_insert_with(|| Present {
            user: entry.user.clone(),
            subscriptions: 0,
            leaves_at: None,
            queued: false,
        });
        present.subscriptions += 1;
        let lingered = present.leaves_at.take().is_some();
        (present.subscriptions == 1 && !lingered).then_some((Op::Join, entry))
    }

    /// A subscription ended: the leave to apply now, if the connection does not linger.
    pub fn exit(&mut self, entry: Entry, now: Instant) -> Option<(Op, Entry)> {
        let key = (entry.topic.clone(), entry.connection.clone());
        let Slot::Occupied(mut slot) = self.present.entry(key) else {
            return None;
        };
        let present = slot.get_mut();
        present.subscriptions = present.subscriptions.saturating_sub(1);
        if present.subscriptions > 0 {
            return None;
        }
        if self.linger.is_zero() {
            slot.remove();
            return Some((Op::Leave, entry));
        }
        let at = now + self.linger;
        present.leaves_at = Some(at);
        if !present.queued {
            present.queued = true;
            self.lingering.push_back((at, slot.key().clone()));
        }
        None
    }

    /// When the next lingering connection may leave.
    pub fn next_due(&self) -> Option<Instant> {
        self.lingering.front().map(|(at, _)| *at)
    }

    /// The leaves of connections that lingered until `now`.
    pub fn due(&mut self, now: Instant) -> Vec<(Op, Entry)> {
        let mut leaves = Vec::new();
        while let Some((at, _)) = self.lingering.front()
            && *at <= now
        {
            let Some((_, key)) = self.lingering.pop_front() else {
                break;
            };
            let Slot::Occupied(mut slot) = self.present.entry(key) else {
                continue;
            };
            match slot.get().leaves_at {
                Some(leaves_at) if leaves_at <= now => {
                    let ((topic, connection), present) = slot.remove_entry();
                    let entry = Entry {
                        topic,
                        connection,
                        user: present.user,
                    };
                    leaves.push((Op::Leave, entry));
                }
                // Went quiet again after this item was queued: it waits for the new time.
                Some(leaves_at) => {
                    let key = slot.key().clone();
                    self.lingering.push_back((leaves_at, key));
                }
                // Subscribed again.
                None => slot.get_mut().queued = false,
            }
        }
        leaves
    }

    /// Every present connection, lingering or not, for re-leasing.
    pub fn entries(&self) -> Vec<Entry> {
        self.present
            .iter()
            .map(|((topic, connection), present)| Entry {
                topic: topic.clone(),
                connection: connection.clone(),
                user: present.user.clone(),
            })
            .collect()
    }

    /// The leaves of every present connection, at shutdown.
    pub fn drain(&mut self) -> Vec<(Op, Entry)> {
        self.lingering.clear();
        self.present
            .drain()
            .map(|((topic, connection), present)| {
                let entry = Entry {
                    topic,
                    connection,
                    user: present.user,
                };
                (Op::Leave, entry)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str) -> Entry {
        Entry {
            topic: topic.into(),
            connection: "c".into(),
            user: "u".into(),
        }
    }

    fn ops(ops: &[(Op, Entry)]) -> Vec<(Op, &str)> {
        ops.iter().map(|(op, e)| (*op, e.topic.as_str())).collect()
    }

    #[test]
    fn churn_within_the_linger_joins_once_and_leaves_once_it_stops() {
        let second = Duration::from_secs(1);
        let mut local = Local::new(second);
        let start = Instant::now();
        assert_eq!(local.enter(entry("t")).map(|o| o.0), Some(Op::Join));
        for n in 0..1000 {
            let now = start + Duration::from_millis(n);
            assert!(local.exit(entry("t"), now).is_none());
            assert!(local.due(now).is_empty());
            assert!(local.enter(entry("t")).is_none(), "a flap is no JOIN");
        }
        let quiet = start + second;
        assert!(local.exit(entry("t"), quiet).is_none());
        assert_eq!(
            local.lingering.len(),
            1,
            "one item per connection and topic"
        );
        assert!(local.due(quiet + second / 2).is_empty());
        assert_eq!(ops(&local.due(quiet + second)), [(Op::Leave, "t")]);
        assert!(local.is_empty() && local.lingering.is_empty());
    }

    #[test]
    fn without_a_linger_the_last_exit_leaves_at_once() {
        let mut local = Local::new(Duration::ZERO);
        local.enter(entry("t"));
        local.enter(entry("t"));
        assert!(local.exit(entry("t"), Instant::now()).is_none());
        let left = local.exit(entry("t"), Instant::now());
        assert_eq!(left.map(|o| o.0), Some(Op::Leave));
        assert!(local.is_empty());
    }
}

//! Presence state of a single instance, in this process: nothing expires, because a process that
//! dies takes its connections and their state along.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;

use super::{Entry, Online, Op, Outcome, Snapshot};

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last timestamp handed out: transitions get strictly increasing ones, so a subscriber
    /// can order them even within one microsecond.
    clock: i64,
    topics: HashMap<String, Topic>,
}

#[derive(Default)]
struct Topic {
    /// Present connections and their user.
    connections: HashMap<String, String>,
    /// Online users: since when, and how many connections.
    users: HashMap<String, (i64, u32)>,
}

impl State {
    fn tick(&mut self) -> i64 {
        self.clock = Utc::now().timestamp_micros().max(self.clock + 1);
        self.clock
    }
}

impl MemoryStore {
    pub fn apply(&self, ops: Vec<(Op, Entry)>) -> Vec<Outcome> {
        let mut state = self.state.lock().expect("presence lock poisoned");
        ops.into_iter()
            .map(|(op, entry)| {
                let at = state.tick();
                let (applied, changed) = match op {
                    Op::Join => join(&mut state.topics, &entry, at),
                    Op::Leave => leave(&mut state.topics, &entry),
                };
                Outcome {
                    op,
                    entry,
                    applied,
                    changed,
                    at,
                }
            })
            .collect()
    }

    pub fn online(&self, topic: &str) -> Snapshot {
        let mut state = self.state.lock().expect("presence lock poisoned");
        let at = state.tick();
        let users = state.topics.get(topic).map_or_else(Vec::new, |t| {
            t.users
                .iter()
                .map(|(user, &(since, connections))| Online {
                    user: user.clone(),
                    connections,
                    since,
                })
                .collect()
        });
        Snapshot { at, users }
    }
}

/// Returns (entry added, user came online).
fn join(topics: &mut HashMap<String, Topic>, entry: &Entry, at: i64) -> (bool, bool) {
    let topic = topics.entry(entry.topic.clone()).or_default();
    if topic
        .connections
        .insert(entry.connection.clone(), entry.user.clone())
        .is_some()
    {
        return (false, false);
    }
    let (_, count) = topic.users.entry(entry.user.clone()).or_insert((at, 0));
    *count += 1;
    (true, *count == 1)
}

/// Returns (entry removed, user went offline). Empty topics are forgotten.
fn leave(topics: &mut HashMap<String, Topic>, entry: &Entry) -> (bool, bool) {
    let Some(topic) = topics.get_mut(&entry.topic) else {
        return (false, false);
    };
    let Some(user) = topic.connections.remove(&entry.connection) else {
        return (false, false);
    };
    let offline = match topic.users.get_mut(&user) {
        Some((_, count)) if *count > 1 => {
            *count -= 1;
            false
        }
        _ => {
            topic.users.remove(&user);
            true
        }
    };
    if topic.connections.is_empty() {
        topics.remove(&entry.topic);
    }
    (true, offline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(connection: &str, user: &str) -> Entry {
        Entry {
            topic: "t".into(),
            connection: connection.into(),
            user: user.into(),
        }
    }

    fn changes(outcomes: &[Outcome]) -> Vec<(bool, bool)> {
        outcomes.iter().map(|o| (o.applied, o.changed)).collect()
    }

    #[test]
    fn a_user_joins_with_the_first_connection_and_leaves_with_the_last() {
        let store = MemoryStore::default();
        let joined = store.apply(vec![
            (Op::Join, entry("c1", "alice")),
            (Op::Join, entry("c2", "alice")),
            (Op::Join, entry("c2", "alice")),
        ]);
        assert_eq!(
            changes(&joined),
            [(true, true), (true, false), (false, false)]
        );
        let online = store.online("t");
        assert_eq!(online.users.len(), 1);
        assert_eq!(online.users[0].connections, 2);
        assert_eq!(online.users[0].since, joined[0].at);
        assert!(online.at > joined[2].at);

        let left = store.apply(vec![
            (Op::Leave, entry("c1", "alice")),
            (Op::Leave, entry("c2", "alice")),
            (Op::Leave, entry("c2", "alice")),
        ]);
        assert_eq!(
            changes(&left),
            [(true, false), (true, true), (false, false)]
        );
        assert!(store.online("t").users.is_empty());
        assert!(
            store.state.lock().unwrap().topics.is_empty(),
            "nothing leaks"
        );
    }
}

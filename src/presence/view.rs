//! What one presence subscriber has been told, so that it sees each user's JOINs and LEAVEs
//! alternate in the order they happened.
//!
//! Transitions of one user may be published by different instances (a client reconnecting from
//! one instance to another: LEAVE on the first, JOIN on the second), and so reach the bus in
//! either order. Each carries the time it happened on the store's clock; the view drops any
//! transition no newer than what it already knows about that user, and any that changes nothing.

use std::collections::HashMap;

use super::{Change, Snapshot, Transition};

/// How late a transition may arrive behind a newer one and still be ordered against it; older
/// knowledge of offline users is forgotten, so the view stays as small as the online set.
const REORDER_WINDOW: i64 = 60_000_000;

#[derive(Debug, Default)]
pub struct View {
    /// Transitions at or before this are already reflected in what was sent.
    floor: i64,
    /// Per user: online or not, and when that last changed.
    users: HashMap<String, (bool, i64)>,
    /// When offline users were last forgotten.
    pruned_at: i64,
}

impl View {
    /// Brings the view to `snapshot`; returns the transitions that tell a subscriber so: a JOIN
    /// (at `since`) for each user newly online, a LEAVE (at the snapshot's time) for each gone.
    pub fn resync(&mut self, topic: &str, snapshot: Snapshot) -> Vec<Transition> {
        let transition = |change, user: &str, at| Transition {
            change,
            user: user.to_string(),
            topic: topic.to_string(),
            at,
        };
        let mut sent: Vec<Transition> = self
            .users
            .iter()
            .filter(|(user, (online, _))| {
                *online && !snapshot.users.iter().any(|o| &o.user == *user)
            })
            .map(|(user, _)| transition(Change::Leave, user, snapshot.at))
            .collect();
        let mut users = HashMap::with_capacity(snapshot.users.len());
        for online in snapshot.users {
            if !self.users.get(&online.user).is_some_and(|(on, _)| *on) {
                sent.push(transition(Change::Join, &online.user, online.since));
            }
            users.insert(online.user, (true, online.since));
        }
        self.users = users;
        self.floor = self.floor.max(snapshot.at);
        sent
    }

    /// Whether `transition` should be sent: it is newer than anything known about its user and
    /// changes whether they are online.
    pub fn apply(&mut self, transition: &Transition) -> bool {
        if transition.at <= self.floor {
            return false;
        }
        let online = transition.change == Change::Join;
        let was_online = match self.users.get(&transition.user) {
            Some(&(_, at)) if at >= transition.at => return false,
            Some(&(was, _)) => was,
            None => false,
        };
        self.users
            .insert(transition.user.clone(), (online, transition.at));
        self.prune(transition.at);
        was_online != online
    }

    fn prune(&mut self, now: i64) {
        if now - self.pruned_at < REORDER_WINDOW {
            return;
        }
        let cutoff = now - REORDER_WINDOW;
        self.users.retain(|_, (online, at)| *online || *at > cutoff);
        self.floor = self.floor.max(cutoff);
        self.pruned_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Online;
    use super::*;

    fn t(change: Change, user: &str, at: i64) -> Transition {
        Transition {
            change,
            user: user.into(),
            topic: "t".into(),
            at,
        }
    }

    fn online(user: &str, since: i64) -> Online {
        Online {
            user: user.into(),
            connections: 1,
            since,
        }
    }

    #[test]
    fn a_leave_arriving_after_a_newer_join_is_dropped() {
        let mut view = View::default();
        assert!(view.apply(&t(Change::Join, "alice", 10)));
        // Reconnected elsewhere: JOIN at 30 arrives before the LEAVE at 20.
        assert!(!view.apply(&t(Change::Join, "alice", 30)));
        assert!(!view.apply(&t(Change::Leave, "alice", 20)));
        assert!(view.apply(&t(Change::Leave, "alice", 40)));
        assert!(
            !view.apply(&t(Change::Join, "alice", 35)),
            "older than the leave"
        );
    }

    #[test]
    fn a_snapshot_sends_joins_and_leaves_and_hides_what_it_already_covers() {
        let mut view = View::default();
        let first = view.resync(
            "t",
            Snapshot {
                at: 100,
                users: vec![online("alice", 50)],
            },
        );
        assert_eq!(first, [t(Change::Join, "alice", 50)]);
        assert!(
            !view.apply(&t(Change::Join, "alice", 50)),
            "covered by the snapshot"
        );
        assert!(
            !view.apply(&t(Change::Join, "bob", 90)),
            "covered by the snapshot"
        );
        assert!(view.apply(&t(Change::Join, "carol", 110)));

        let again = view.resync(
            "t",
            Snapshot {
                at: 200,
                users: vec![online("carol", 110), online("dave", 150)],
            },
        );
        assert_eq!(
            again,
            [t(Change::Leave, "alice", 200), t(Change::Join, "dave", 150)]
        );
    }

    #[test]
    fn offline_users_are_forgotten_after_the_reorder_window() {
        let mut view = View::default();
        view.apply(&t(Change::Join, "alice", 1));
        view.apply(&t(Change::Leave, "alice", 2));
        view.apply(&t(Change::Join, "bob", REORDER_WINDOW + 10));
        assert_eq!(view.users.len(), 1);
        assert!(
            !view.apply(&t(Change::Join, "alice", 3)),
            "stale, behind the floor"
        );
    }
}

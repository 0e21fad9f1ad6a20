//! Topic authorization: the declarative rules of `topics.rules` decide who may subscribe to or
//! publish on a topic. The first rule whose pattern matches decides; no match means denied.

use std::collections::HashMap;

use serde_json::Value;

use crate::auth::Identity;
use crate::config::{Grant, Topics};
use crate::db::Database;
use crate::on_pool;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
        }
    }
}

/// The outcome of a check: allowed, or why not (for the audit trail; clients only see FORBIDDEN).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied(String),
}

/// Topics starting with this are the server's own (cluster control, presence events): no client
/// may subscribe to or publish on them, whatever the rules say.
pub const INTERNAL_PREFIX: char = '$';

/// Whether `topic` is one of the server's own (see [`INTERNAL_PREFIX`]).
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with(INTERNAL_PREFIX)
}

/// The event type of a chat message. Only `sendMessage` writes it, with the sender taken from the
/// caller and the content checked; `messages` reads nothing else.
pub const CHAT_MESSAGE: &str = "message";

/// The event type `events` gives the marker of missed events.
pub const GAP: &str = "GAP";

/// Event types only the server writes: a raw publish of one could pass for a chat message or a gap.
const SERVER_EVENT_TYPES: [&str; 2] = [CHAT_MESSAGE, GAP];

/// Values bound to a pattern's placeholders, e.g. `{workspace}` → `acme`.
type Bindings<'a> = HashMap<&'a str, &'a str>;

/// Matches `topic` against `pattern` segment by segment; a placeholder takes one whole segment.
fn bind<'a>(pattern: &'a str, topic: &'a str) -> Option<Bindings<'a>> {
    let mut bindings = HashMap::new();
    let mut pattern_segments = pattern.split(':');
    let mut topic_segments = topic.split(':');
    loop {
        match (pattern_segments.next(), topic_segments.next()) {
            (None, None) => return Some(bindings),
            (Some(p), Some(t)) if p.starts_with('{') && p.ends_with('}') && !t.is_empty() => {
                bindings.insert(&p[1..p.len() - 1], t);
            }
            (Some(p), Some(t)) if p == t => {}
            _ => return None,
        }
    }
}

/// Checks `action` on `topic` for `identity` (`None`: anonymous).
pub async fn check(
    topics: &Topics,
    db: &Database,
    identity: Option<&Identity>,
    topic: &str,
    action: Action,
) -> anyhow::Result<Decision> {
    if is_internal(topic) {
        return Ok(Decision::Denied("internal topic".into()));
    }
    let Some((rule, bindings)) = topics
        .rules
        .iter()
        .find_map(|r| bind(&r.pattern, topic).map(|b| (r, b)))
    else {
        return Ok(Decision::Denied(format!(
            "no rule matches topic for {}",
            action.as_str()
        )));
    };
    let grants = match action {
        Action::Subscribe => &rule.subscribe,
        Action::Publish => &rule.publish,
    };
    for grant in grants {
        if granted(grant, topics, db, identity, &bindings).await? {
            return Ok(Decision::Allowed);
        }
    }
    Ok(Decision::Denied(format!(
        "no grant of rule `{}` allows {}",
        rule.pattern,
        action.as_str()
    )))
}

/// Checks a raw publish (the `publish` mutation, `POST /api/publish`) of an event of type `kind`:
/// the topic's `publish` grant, and that `kind` is not one only the server writes (compared
/// without case, so no spelling of it passes for the real one).
pub async fn check_raw_publish(
    topics: &Topics,
    db: &Database,
    identity: Option<&Identity>,
    topic: &str,
    kind: &str,
) -> anyhow::Result<Decision> {
    if let Some(reserved) = SERVER_EVENT_TYPES
        .iter()
        .find(|reserved| reserved.eq_ignore_ascii_case(kind))
    {
        return Ok(Decision::Denied(format!(
            "event type `{reserved}` is written only by the server"
        )));
    }
    check(topics, db, identity, topic, Action::Publish).await
}

async fn granted(
    grant: &Grant,
    topics: &Topics,
    db: &Database,
    identity: Option<&Identity>,
    bindings: &Bindings<'_>,
) -> anyhow::Result<bool> {
    let Some(identity) = identity else {
        return Ok(false);
    };
    let bound = |placeholder: &str| bindings.get(placeholder).copied();
    Ok(match grant {
        Grant::Authenticated => true,
        Grant::Subject(placeholder) => bound(placeholder) == Some(identity.user_id.as_str()),
        Grant::Role(role) => claim_contains(identity.claims.get(&topics.roles_claim), role),
        Grant::Claim { name, contains } => match bound(contains) {
            Some(value) => claim_contains(identity.claims.get(name), value),
            None => false,
        },
        Grant::Member {
            table,
            user_column,
            key_column,
            placeholder,
        } => match bound(placeholder) {
            Some(value) => {
                is_member(db, table, user_column, key_column, &identity.user_id, value).await?
            }
            None => false,
        },
    })
}

/// A claim equal to `value`, or an array containing it (numbers compare by their text).
fn claim_contains(claim: Option<&Value>, value: &str) -> bool {
    let matches = |v: &Value| match v {
        Value::String(s) => s == value,
        Value::Number(n) => n.to_string() == value,
        _ => false,
    };
    match claim {
        Some(Value::Array(items)) => items.iter().any(matches),
        Some(other) => matches(other),
        None => false,
    }
}

#[tracing::instrument(skip(db))]
async fn is_member(
    db: &Database,
    table: &str,
    user_column: &str,
    key_column: &str,
    user: &str,
    key: &str,
) -> anyhow::Result<bool> {
    // Identifiers come from validated configuration (plain SQL identifiers), values are bound.
    let sql = format!(
        "SELECT COUNT(*) FROM \"{table}\" WHERE \"{user_column}\" = $1 AND \"{key_column}\" = $2"
    );
    let count: i64 = on_pool!(db, |pool| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .bind(user)
            .bind(key)
            .fetch_one(pool)
            .await
    })?;
    Ok(count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_bind_whole_segments_and_literals_must_match() {
        let b = bind("workspace:{workspace}:{feed}", "workspace:acme:dashboard").unwrap();
        assert_eq!((b["workspace"], b["feed"]), ("acme", "dashboard"));
        assert!(bind("workspace:{workspace}:{feed}", "workspace:acme").is_none());
        assert!(bind("user:{user}", "user:").is_none());
        assert!(bind("user:{user}", "users:bob").is_none());
        assert!(bind("user:{user}", "user:bob:extra").is_none());
    }

    #[test]
    fn a_claim_matches_by_equality_or_array_membership() {
        assert!(claim_contains(Some(&serde_json::json!(["a", "b"])), "b"));
        assert!(claim_contains(Some(&serde_json::json!("a")), "a"));
        assert!(claim_contains(Some(&serde_json::json!([7])), "7"));
        assert!(!claim_contains(Some(&serde_json::json!({"a": 1})), "a"));
        assert!(!claim_contains(None, "a"));
    }
}

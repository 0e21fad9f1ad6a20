//! Stream entries to events. Anyone with access to Redis can add entries (a backend publishing
//! with a plain `XADD`), so every field is checked and a bad entry is reported, never trusted.

use chrono::{DateTime, Utc};
use redis::Value;
use redis::streams::StreamId;

use crate::bus::{Event, EventId};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Malformed {
    #[error("the `{0}` field is missing")]
    Missing(&'static str),
    #[error("the `{0}` field is not UTF-8 text")]
    NotText(&'static str),
    #[error("the payload is not JSON: {0}")]
    Payload(String),
    #[error("{0}")]
    Id(String),
}

/// When an entry was added, by Redis's clock: the same on every instance.
pub fn added_at(id: EventId) -> DateTime<Utc> {
    i64::try_from(id.ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now)
}

fn text<'a>(entry: &'a StreamId, field: &'static str) -> Result<&'a str, Malformed> {
    match entry.map.get(field) {
        None => Err(Malformed::Missing(field)),
        Some(Value::BulkString(bytes)) => {
            std::str::from_utf8(bytes).map_err(|_| Malformed::NotText(field))
        }
        Some(Value::SimpleString(text)) => Ok(text),
        Some(_) => Err(Malformed::NotText(field)),
    }
}

pub fn id(entry: &StreamId) -> Result<EventId, Malformed> {
    entry.id.parse().map_err(Malformed::Id)
}

/// The entry's topic: all a reader needs to know whether anyone here follows it.
pub fn topic(entry: &StreamId) -> Result<&str, Malformed> {
    text(entry, "topic")
}

/// The bytes of the entry's field values: what holding it, or sending it on, costs.
pub fn size(entry: &StreamId) -> usize {
    entry
        .map
        .values()
        .map(|value| match value {
            Value::BulkString(bytes) => bytes.len(),
            Value::SimpleString(text) => text.len(),
            _ => 0,
        })
        .sum()
}

/// The whole event; parsing the payload is left to here, for entries someone follows.
pub fn event(entry: &StreamId) -> Result<Event, Malformed> {
    let id = id(entry)?;
    let payload = text(entry, "payload")?;
    Ok(Event {
        id,
        topic: topic(entry)?.to_string(),
        kind: text(entry, "type")?.to_string(),
        payload: serde_json::from_str(payload).map_err(|e| Malformed::Payload(e.to_string()))?,
        published_at: added_at(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> StreamId {
        StreamId {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.to_vec())))
                .collect(),
            ..StreamId::default()
        }
    }

    #[test]
    fn an_entry_in_the_documented_format_is_an_event() {
        let e = entry(
            "1700000000000-3",
            &[
                ("topic", b"user:alice"),
                ("type", b"dm"),
                ("payload", br#"{"n":1}"#),
            ],
        );
        let event = event(&e).unwrap();
        assert_eq!(
            event.id,
            EventId {
                ms: 1_700_000_000_000,
                seq: 3
            }
        );
        assert_eq!(
            (event.topic.as_str(), event.kind.as_str()),
            ("user:alice", "dm")
        );
        assert_eq!(event.payload, json!({ "n": 1 }));
        assert_eq!(event.published_at.timestamp_millis(), 1_700_000_000_000);
    }

    #[test]
    fn entries_with_missing_or_bad_fields_are_reported() {
        let no_topic = entry("1-0", &[("type", b"t"), ("payload", b"1")]);
        assert_eq!(topic(&no_topic), Err(Malformed::Missing("topic")));
        let binary_topic = entry("1-0", &[("topic", &[0xff, 0xfe])]);
        assert_eq!(topic(&binary_topic), Err(Malformed::NotText("topic")));
        let not_json = entry(
            "1-0",
            &[("topic", b"t"), ("type", b"t"), ("payload", b"{oops")],
        );
        assert!(matches!(event(&not_json), Err(Malformed::Payload(_))));
        let no_type = entry("1-0", &[("topic", b"t"), ("payload", b"null")]);
        assert_eq!(event(&no_type).unwrap_err(), Malformed::Missing("type"));
        let bad_id = entry(
            "later",
            &[("topic", b"t"), ("type", b"t"), ("payload", b"1")],
        );
        assert!(matches!(event(&bad_id), Err(Malformed::Id(_))));
    }
}

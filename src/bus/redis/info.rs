//! What a stream's metadata says about entries a reader or a resuming subscriber never saw:
//! trimmed away (`max-deleted-entry-id`, Redis 7.0), or lost with a Redis that restarted empty
//! (the stream is missing, or its last id went back).

use std::sync::LazyLock;

use anyhow::Context;
use redis::Script;
use redis::aio::ConnectionLike;

use crate::bus::EventId;

/// `XINFO STREAM` fails on a missing key and carries the first and last entries whole; the script
/// tells "missing" apart without parsing an error message and returns only three ids.
static SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local out = {'', '', ''}
for i = 1, #info, 2 do
  local field, value = info[i], info[i + 1]
  if field == 'last-generated-id' then out[1] = value
  elseif field == 'max-deleted-entry-id' then out[2] = value
  elseif field == 'first-entry' and value then out[3] = value[1]
  end
end
return out
",
    )
});

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamInfo {
    pub last_generated: EventId,
    /// The newest id removed by trimming (0-0 if none).
    pub max_deleted: EventId,
    /// `None` when the stream is empty.
    pub first_entry: Option<EventId>,
}

/// The stream's metadata; `None` when it does not exist.
pub async fn fetch(
    conn: &mut impl ConnectionLike,
    key: &str,
) -> anyhow::Result<Option<StreamInfo>> {
    let ids: Option<Vec<String>> = SCRIPT
        .key(key)
        .invoke_async(conn)
        .await
        .with_context(|| format!("reading the metadata of {key}"))?;
    let Some(ids) = ids else { return Ok(None) };
    let id = |i: usize| -> anyhow::Result<Option<EventId>> {
        match ids.get(i).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(anyhow::Error::msg),
        }
    };
    let zero = EventId { ms: 0, seq: 0 };
    Ok(Some(StreamInfo {
        last_generated: id(0)?.unwrap_or(zero),
        max_deleted: id(1)?.unwrap_or(zero),
        first_entry: id(2)?,
    }))
}

/// For a reader that delivered up to `last`: the stream is older than what it read, so Redis lost
/// it (restarted empty, or from an older snapshot).
pub fn went_back(info: Option<&StreamInfo>, last: EventId) -> bool {
    info.map_or(EventId { ms: 0, seq: 0 }, |i| i.last_generated) < last
}

/// For a reader that delivered up to `last`: entries after it were trimmed before it read them.
pub fn trimmed_past(info: Option<&StreamInfo>, last: EventId) -> bool {
    info.is_some_and(|i| i.max_deleted > last)
}

/// For a subscriber resuming after `after`: events it did not see may be gone, because they were
/// trimmed, or because `after` never was an entry of this stream (Redis lost the stream it came
/// from, or `streams.shards` changed). An entry that existed is still there, or was deleted and
/// so is at most `max-deleted-entry-id`.
pub fn resume_misses(info: Option<&StreamInfo>, after: EventId) -> bool {
    let zero = EventId { ms: 0, seq: 0 };
    let Some(info) = info else {
        return after > zero;
    };
    let still_there = info.first_entry.is_some_and(|first| first <= after);
    info.max_deleted > after || (!still_there && info.max_deleted < after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn info(first: Option<u64>, max_deleted: u64, last: u64) -> Option<StreamInfo> {
        Some(StreamInfo {
            last_generated: id(last),
            max_deleted: id(max_deleted),
            first_entry: first.map(id),
        })
    }

    #[test]
    fn a_reader_notices_a_stream_that_went_back_or_was_trimmed_past_it() {
        assert!(went_back(None, id(5)));
        assert!(!went_back(None, id(0)));
        assert!(went_back(info(Some(1), 0, 4).as_ref(), id(5)));
        assert!(!went_back(info(Some(1), 0, 5).as_ref(), id(5)));
        assert!(trimmed_past(info(Some(7), 6, 9).as_ref(), id(5)));
        assert!(!trimmed_past(info(Some(7), 5, 9).as_ref(), id(5)));
        assert!(!trimmed_past(None, id(5)));
    }

    #[test]
    fn a_resume_misses_events_only_when_they_may_be_gone() {
        // `after` is still in the stream, or was the newest trimmed entry: nothing lost.
        assert!(!resume_misses(info(Some(3), 2, 9).as_ref(), id(5)));
        assert!(!resume_misses(info(Some(6), 5, 9).as_ref(), id(5)));
        // Entries after `after` were trimmed.
        assert!(resume_misses(info(Some(7), 6, 9).as_ref(), id(5)));
        // The stream starts after `after` and never lost anything: `after` is from another life.
        assert!(resume_misses(info(Some(7), 0, 9).as_ref(), id(5)));
        assert!(resume_misses(info(None, 0, 0).as_ref(), id(5)));
        assert!(resume_misses(None, id(5)));
        // Resuming from the very beginning misses only what was trimmed.
        assert!(!resume_misses(info(Some(7), 0, 9).as_ref(), id(0)));
        assert!(!resume_misses(None, id(0)));
    }
}

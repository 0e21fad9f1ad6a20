//! A look at a raw client message before it is deserialized: which type it claims to be, its id,
//! and how deep its lists and objects nest.
//!
//! serde_json refuses a document nested deeper than its recursion limit, so without this look a
//! `subscribe` with deep `variables` could only be answered by closing the whole connection. The
//! scan is one pass over the bytes that never recurses and skips strings, so its cost is linear in
//! a message already bounded by `payload.max_message_bytes`.

/// Containers serde_json reads nested before it gives up (its recursion limit is 128).
pub const PARSER_NESTING: usize = 127;

/// Levels a `subscribe` adds above its variables' values: the message, `payload`, `variables`.
pub const ENVELOPE: usize = 3;

/// What the scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The deepest nesting of lists and objects; the message's own object is 1.
    pub depth: usize,
    /// The top-level `type`, when it is a string given once.
    pub kind: Option<String>,
    /// The top-level `id`, when it is a string given once.
    pub id: Option<String>,
}

impl Envelope {
    /// The nesting of the deepest value below the envelope, measured as `limits::document` measures
    /// variables: a variable's own list or object is level 1.
    pub fn input_nesting(&self) -> usize {
        self.depth.saturating_sub(ENVELOPE)
    }
}

/// A top-level member the scan keeps.
#[derive(Clone, Copy)]
enum Member {
    Type,
    Id,
    Other,
}

/// A kept member's value: not seen yet, a string, or anything else (not a string, or given twice),
/// which serde would refuse just as well.
enum Seen {
    Missing,
    Text(String),
    Invalid,
}

impl Seen {
    fn set(&mut self, value: Option<String>) {
        *self = match (&self, value) {
            (Seen::Missing, Some(text)) => Seen::Text(text),
            _ => Seen::Invalid,
        };
    }

    fn text(self) -> Option<String> {
        match self {
            Seen::Text(text) => Some(text),
            _ => None,
        }
    }
}

pub fn scan(raw: &[u8]) -> Envelope {
    let (mut depth, mut deepest, mut pos) = (0usize, 0usize, 0usize);
    let (mut kind, mut id) = (Seen::Missing, Seen::Missing);
    // At depth 1 of an object: whether a key comes next, and the member whose value comes next.
    let (mut expect_key, mut value_of) = (false, None::<Member>);
    let mut record = |member: Member, value: Option<String>| match member {
        Member::Type => kind.set(value),
        Member::Id => id.set(value),
        Member::Other => {}
    };
    while pos < raw.len() {
        let byte = raw[pos];
        match byte {
            b'"' => {
                let start = pos;
                pos = string_end(raw, pos + 1);
                if depth == 1 {
                    let text = &raw[start..pos];
                    if std::mem::take(&mut expect_key) {
                        let member = match decode(text).as_deref() {
                            Some("type") => Member::Type,
                            Some("id") => Member::Id,
                            _ => Member::Other,
                        };
                        value_of = Some(member);
                        pos = colon(raw, pos, &mut value_of);
                    } else if let Some(member) = value_of.take() {
                        record(member, decode(text));
                    }
                }
                continue;
            }
            b'{' | b'[' => {
                if depth == 1
                    && let Some(member) = value_of.take()
                {
                    record(member, None);
                }
                depth += 1;
                deepest = deepest.max(depth);
                expect_key = depth == 1 && byte == b'{';
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => {
                expect_key = true;
                value_of = None;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ if depth == 1 => {
                if let Some(member) = value_of.take() {
                    record(member, None);
                }
            }
            _ => {}
        }
        pos += 1;
    }
    Envelope {
        depth: deepest,
        kind: kind.text(),
        id: id.text(),
    }
}

/// Skips whitespace and the colon after a key at `pos`; a key not followed by a colon keeps no
/// value.
fn colon(raw: &[u8], mut pos: usize, value_of: &mut Option<Member>) -> usize {
    while pos < raw.len() && raw[pos].is_ascii_whitespace() {
        pos += 1;
    }
    if raw.get(pos) == Some(&b':') {
        pos + 1
    } else {
        *value_of = None;
        pos
    }
}

/// The index after the string starting at `pos` (just past its opening quote), or the end of the
/// input for an unterminated one.
fn string_end(raw: &[u8], mut pos: usize) -> usize {
    while pos < raw.len() {
        match raw[pos] {
            b'\\' => pos += 2,
            b'"' => return pos + 1,
            _ => pos += 1,
        }
    }
    raw.len()
}

/// A quoted JSON string's value. Only strings with escapes go through serde_json, which for a flat
/// string does not recurse.
fn decode(quoted: &[u8]) -> Option<String> {
    let inner = quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        serde_json::from_slice(quoted).ok()
    } else {
        String::from_utf8(inner.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
    }

    #[test]
    fn the_type_and_id_are_found_whatever_the_member_order() {
        let found = scan(br#"{"payload":{"id":"inner","type":"x"},"id":"7","type":"subscribe"}"#);
        assert_eq!(found.kind.as_deref(), Some("subscribe"));
        assert_eq!(
            found.id.as_deref(),
            Some("7"),
            "the nested id is not the message's"
        );
        assert_eq!(found.depth, 2);
    }

    #[test]
    fn brackets_inside_strings_count_for_nothing() {
        let found = scan(br#"{"type":"ping","payload":{"q":"[[[{{{\"]]]"}}"#);
        assert_eq!(found.depth, 2);
        assert_eq!(found.kind.as_deref(), Some("ping"));
    }

    #[test]
    fn deep_variables_are_measured_below_the_envelope() {
        let raw = format!(
            r#"{{"id":"d","type":"subscribe","payload":{{"query":"q","variables":{{"v":{}}}}}}}"#,
            nested(200)
        );
        let found = scan(raw.as_bytes());
        assert_eq!(found.input_nesting(), 200);
        assert_eq!(found.id.as_deref(), Some("d"));
        assert!(serde_json::from_str::<serde_json::Value>(&raw).is_err());
    }

    #[test]
    fn an_escaped_key_or_value_is_decoded_as_serde_would() {
        let found = scan(br#"{"\u0074ype":"sub\u0073cribe", "id" : "a\"b"}"#);
        assert_eq!(found.kind.as_deref(), Some("subscribe"));
        assert_eq!(found.id.as_deref(), Some("a\"b"));
    }

    #[test]
    fn a_repeated_or_non_string_member_is_not_kept() {
        assert_eq!(scan(br#"{"type":"ping","type":"pong"}"#).kind, None);
        assert_eq!(scan(br#"{"type":"subscribe","id":7}"#).id, None);
        assert_eq!(scan(br#"{"type":"subscribe","id":["7"]}"#).id, None);
        assert_eq!(scan(br#"["type","subscribe"]"#).kind, None);
    }

    #[test]
    fn malformed_input_is_measured_without_panicking() {
        for raw in [
            &b"{\"type"[..],
            b"}}}]]",
            b"{\"id\":\"\\",
            b"",
            b"\"",
            b"{\"a\" 1}",
        ] {
            scan(raw);
        }
        assert_eq!(scan(b"[[[[").depth, 4);
    }
}

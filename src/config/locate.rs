//! Finds where a key path (`operations.rate_limit.warn_at`, `topics.rules[1]`) stands in the YAML text, so a
//! rule checked after deserialization can still point at a line and column.

use saphyr_parser::{Event, Parser, Span};

/// 1-based line and column of the value at `path`, or of its deepest ancestor present in the text
/// (a rule can fail on a default the file never mentions).
pub fn locate(yaml: &str, path: &str) -> Option<(usize, usize)> {
    let mut parser = Parser::new_from_str(yaml);
    loop {
        match parser.next_event()?.ok()? {
            (Event::DocumentStart(_), _) => break,
            (Event::StreamEnd, _) => return None,
            _ => {}
        }
    }
    // `topics.rules[1].pattern` → topics, rules, 1, pattern
    let segments: Vec<&str> = path
        .split(['.', '[', ']'])
        .filter(|s| !s.is_empty())
        .collect();
    let span = descend(&mut parser, &segments)?;
    Some((span.start.line(), span.start.col() + 1))
}

fn descend(parser: &mut Parser<'_, saphyr_parser::StrInput<'_>>, path: &[&str]) -> Option<Span> {
    let (event, span) = parser.next_event()?.ok()?;
    let Some((want, rest)) = path.split_first() else {
        return Some(span);
    };
    match event {
        Event::MappingStart(..) => loop {
            let (key, _) = parser.next_event()?.ok()?;
            match key {
                Event::MappingEnd => return Some(span),
                Event::Scalar(text, ..) if text == *want => {
                    return descend(parser, rest).or(Some(span));
                }
                other => {
                    skip_rest_of(parser, &other)?;
                    skip_node(parser)?;
                }
            }
        },
        Event::SequenceStart(..) => {
            let index: usize = want.parse().ok()?;
            for _ in 0..index {
                if skip_node(parser)? {
                    return Some(span);
                }
            }
            descend(parser, rest).or(Some(span))
        }
        _ => Some(span),
    }
}

/// Skips one whole node; returns true when it met the end of the enclosing collection instead.
fn skip_node(parser: &mut Parser<'_, saphyr_parser::StrInput<'_>>) -> Option<bool> {
    let (event, _) = parser.next_event()?.ok()?;
    if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
        return Some(true);
    }
    skip_rest_of(parser, &event)?;
    Some(false)
}

/// After a collection's start event, consumes events up to its matching end.
fn skip_rest_of(
    parser: &mut Parser<'_, saphyr_parser::StrInput<'_>>,
    first: &Event<'_>,
) -> Option<()> {
    if !matches!(first, Event::MappingStart(..) | Event::SequenceStart(..)) {
        return Some(());
    }
    let mut depth = 1usize;
    while depth > 0 {
        match parser.next_event()?.ok()?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth -= 1,
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::locate;

    const YAML: &str = "server:\n  listen: 0.0.0.0:8080\noperations:\n  per_operation:\n    a: {limit: 1}\n  rate_limit:\n    warn_at: 1.5\ntopics:\n  rules:\n    - pattern: a\n    - pattern: 'b:{'\n";

    #[test]
    fn a_nested_key_is_found_after_skipping_siblings() {
        assert_eq!(locate(YAML, "operations.rate_limit.warn_at"), Some((7, 14)));
    }

    #[test]
    fn a_list_index_is_followed() {
        assert_eq!(locate(YAML, "topics.rules[1].pattern"), Some((11, 16)));
    }

    #[test]
    fn a_missing_key_falls_back_to_its_nearest_ancestor() {
        assert_eq!(locate(YAML, "operations.rate_limit.window"), Some((7, 5)));
    }
}

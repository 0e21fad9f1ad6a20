//! Logging: `tracing` to stderr, as JSON lines or human-readable text (`logging.format`),
//! filtered by `RUST_LOG` when set, else by `logging.filter`. Lines about a connection carry its
//! `connection_id`, `user_id` and `instance` through the connection's span.
//!
//! Log fields carry what clients sent (close reasons, user agents, operation names, topics), so the
//! logging layer escapes it, never the call sites: a newline would start a forged line, an ANSI or
//! C1 sequence would repaint the operator's terminal, a bidirectional override would reorder what
//! it shows. In `pretty`, every field value (the message included) is written with those
//! characters escaped; in `json`, serde_json escapes C0 controls and the writer escapes the rest.

use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal};

use tracing::Subscriber;
use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{Writer, debug_fn};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, Logging};

pub fn init(logging: &Logging) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&logging.filter));
    let ansi = logging.format == LogFormat::Pretty && io::stderr().is_terminal();
    // A second init (tests) keeps the first subscriber.
    drop(subscriber(logging.format, filter, ansi, io::stderr).try_init());
}

/// The subscriber `init` installs, writing to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(EscapingWriter(writer))
                .finish(),
        ),
        LogFormat::Pretty => Box::new(
            builder
                .fmt_fields(debug_fn(pretty_field).delimited(" "))
                .with_writer(writer)
                .finish(),
        ),
    }
}

/// One field of a `pretty` line, as tracing's default formatter writes it (`name=value`, the
/// message bare), with unsafe characters escaped.
fn pretty_field(writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let mut escaped = Escaping(writer);
    match field.name() {
        "message" => write!(escaped, "{value:?}"),
        name => write!(escaped, "{}={value:?}", name.trim_start_matches("r#")),
    }
}

/// Characters that must not reach a log raw: controls (C0, DEL, C1), bidirectional overrides and
/// isolates, and the Unicode line and paragraph separators.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Writes through to `W`, escaping unsafe characters the way Rust's `{:?}` does (`\n`, `\u{1b}`).
struct Escaping<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for part in s.split_inclusive(unsafe_char) {
            match part.chars().last().filter(|c| unsafe_char(*c)) {
                Some(c) => {
                    self.0.write_str(&part[..part.len() - c.len_utf8()])?;
                    write!(self.0, "{}", c.escape_debug())?;
                }
                None => self.0.write_str(part)?,
            }
        }
        Ok(())
    }
}

/// For JSON lines: escapes, as `\uXXXX`, the unsafe characters serde_json leaves raw (it escapes
/// only those below U+0020). Outside strings a JSON line is ASCII, so they can only be inside one,
/// where the escape is valid JSON; the line's own final newline is kept.
struct EscapingWriter<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for EscapingWriter<M> {
    type Writer = JsonLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonLine(self.0.make_writer())
    }
}

struct JsonLine<W>(W);

impl<W: io::Write> io::Write for JsonLine<W> {
    /// The formatter hands over each line whole, in one call.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Ok(text) = std::str::from_utf8(buf) else {
            return self.0.write_all(buf).map(|()| buf.len());
        };
        if !text.trim_end_matches('\n').contains(unsafe_char) {
            return self.0.write_all(buf).map(|()| buf.len());
        }
        let (body, newline) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (text, ""),
        };
        let mut line = String::with_capacity(text.len() + 16);
        for c in body.chars() {
            if unsafe_char(c) {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(line, "\\u{unit:04x}");
                }
            } else {
                line.push(c);
            }
        }
        line.push_str(newline);
        self.0.write_all(line.as_bytes()).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A `MakeWriter` that collects what is written.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    const FORGED: &str =
        "bye\n2026-12-01T00:00:00Z ERROR palisade: \x1b[31mdisk full\u{202e}\u{85}";

    fn logged(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, EnvFilter::new("info"), ansi, buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("connection", user_id = %FORGED);
            let _entered = span.enter();
            tracing::info!(code = 1000, reason = %FORGED, agent = FORGED, "closed: {FORGED}");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn client_text_cannot_start_a_line_or_send_escapes_in_the_pretty_format() {
        for ansi in [false, true] {
            let text = logged(LogFormat::Pretty, ansi);
            assert_eq!(text.lines().count(), 1, "{text}");
            let client = |c: char| matches!(c, '\u{202e}' | '\u{85}');
            assert!(!text.contains(client), "{text:?}");
            if !ansi {
                assert!(!text.contains('\x1b'), "{text:?}");
            }
            assert!(text.contains(r"reason=bye\n2026"), "{text}");
            assert!(text.contains(r"\u{1b}[31m"), "{text}");
            assert!(
                text.contains(r"user_id=bye\n"),
                "the span's fields too: {text}"
            );
        }
    }

    #[test]
    fn client_text_is_escaped_in_the_json_format() {
        let text = logged(LogFormat::Json, false);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            !text.contains(|c: char| unsafe_char(c) && c != '\n'),
            "{text:?}"
        );
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["fields"]["reason"], FORGED);
        assert_eq!(line["span"]["user_id"], FORGED);
    }
}

//! Log output: one line per event, as text or JSON, to standard error.
//! `RUST_LOG` picks the level (default `info`). Control characters in
//! anything logged (names from certificates, replies, header values) are
//! escaped, so no value can start a forged line or reach the terminal as
//! an escape sequence; `escape_controls` does the same for CLI output.
//! In text, a value with a space, `=`, `"` or `\\` in it is written quoted
//! (`reply="250 2.0.0 Ok"`), and so is a message with `=` or an odd
//! number of `"` in it, so no value can add a forged `key=value` to its
//! line (a Message-ID of `<a event=bounced>`).

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub fn init(format: Format) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format == Format::Json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || Escaping {
            out: io::stderr(),
            json,
        });
    match format {
        Format::Text => builder
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                    let text = format!("{value:?}");
                    match field.name() {
                        "message" => write!(w, "{}", message_text(&text)),
                        name => write!(w, "{name}={}", quoted_if_needed(&text)),
                    }
                })
                .delimited(" "),
            )
            .with_ansi(false)
            .init(),
        Format::Json => builder.json().flatten_event(true).init(),
    }
}

/// `text` with control characters (C0, DEL, C1; line breaks too unless
/// `keep_newlines`) and the invisible characters that reorder or hide
/// text (bidirectional controls such as U+202E, zero-width characters)
/// written as visible escapes: `\r`, `\n`, `\t`, `\x1b`, `\u{202e}`.
/// Text without any comes back borrowed.
pub fn escape_controls(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    escape(text, keep_newlines, false)
}

/// As [`escape_controls`]; with `json`, every escape is one JSON reads
/// inside a string (`\u001b`, `\u202e`), so a JSON log line stays JSON.
fn escape(text: &str, keep_newlines: bool, json: bool) -> Cow<'_, str> {
    let bad = |c: char| (c.is_control() || reorders_or_hides(c)) && !(keep_newlines && c == '\n');
    if !text.chars().any(bad) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !bad(c) => out.push(c),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if json => {
                // JSON escapes UTF-16 units: a pair above the BMP.
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// Whether `c` is a character a terminal or viewer acts on without
/// showing it, or shows as nothing: the format characters (bidirectional
/// marks, embeddings, overrides and isolates, zero-width spaces and
/// joiners, invisible operators, the soft hyphen, the byte order mark,
/// interlinear annotation, tag characters, variation selectors), the line
/// and paragraph separators, and the letters that render blank (Hangul
/// fillers, Khmer inherent vowels, musical formatting).
fn reorders_or_hides(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}'
        | '\u{17b5}' | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{3164}'
        | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}'
        | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// `text` as one field value of a text log line: as it is when it cannot
/// be mistaken for more than one value (or is a quoted string already, as
/// `?` and string fields are written), otherwise quoted with `"` and `\\`
/// escaped.
pub fn quoted_if_needed(text: &str) -> Cow<'_, str> {
    let plain = !text.is_empty()
        && !text.contains(|c: char| c.is_whitespace() || matches!(c, '=' | '"' | '\\'));
    if plain || is_quoted(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{text:?}"))
    }
}

/// The event's sentence: as it is unless it could pass for fields or
/// leave a quote open for the fields after it.
fn message_text(text: &str) -> Cow<'_, str> {
    if !text.contains('=') && text.matches('"').count() % 2 == 0 {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{text:?}"))
    }
}

/// Whether `text` is one string literal as `Debug` writes it: quotes at
/// both ends and every quote between them escaped.
fn is_quoted(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return false;
    };
    let mut escaped = false;
    for c in inner.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return false,
            _ => {}
        }
    }
    !escaped
}

/// A writer that gets one whole event per write (as tracing-subscriber's
/// fmt layer writes them) and escapes every control character in it but
/// the newline that ends it (JSON's way when `json`).
struct Escaping<W> {
    out: W,
    json: bool,
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (line, newline) = match text.strip_suffix('\n') {
            Some(l) => (l, true),
            None => (&*text, false),
        };
        let mut out = escape(line, false, self.json).into_owned();
        if newline {
            out.push('\n');
        }
        self.out.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_cannot_add_a_field_to_its_line() {
        assert_eq!(quoted_if_needed("250"), "250");
        assert_eq!(quoted_if_needed("\"delivered\""), "\"delivered\"");
        assert_eq!(
            quoted_if_needed("<a event=bounced recipient=ceo@x>"),
            "\"<a event=bounced recipient=ceo@x>\""
        );
        assert_eq!(
            quoted_if_needed("\"a\" event=\"bounced\""),
            "\"\\\"a\\\" event=\\\"bounced\\\"\""
        );
        assert_eq!(quoted_if_needed("a\\"), "\"a\\\\\"");
        assert_eq!(quoted_if_needed(""), "\"\"");
        assert!(!is_quoted("\"a\\\""));
        assert_eq!(
            message_text("rule \"courts\": bounce"),
            "rule \"courts\": bounce"
        );
        assert_eq!(message_text("not sent to \"x"), "\"not sent to \\\"x\"");
        assert_eq!(message_text("a=b"), "\"a=b\"");
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape_controls("plain æøå", false), "plain æøå");
        assert_eq!(
            escape_controls("a\r\nb\x1b[2J\u{9b}c\x7f", false),
            "a\\r\\nb\\x1b[2J\\x9bc\\x7f"
        );
        assert_eq!(escape_controls("a\nb\r", true), "a\nb\\r");
        // A right-to-left override turns "exe.PDF" into what reads "FDP.exe".
        assert_eq!(
            escape_controls("x\u{202e}FDP.exe\u{202c} y\u{200b}", false),
            "x\\u{202e}FDP.exe\\u{202c} y\\u{200b}"
        );
        assert_eq!(escape_controls("Søren Ærø, 北京", true), "Søren Ærø, 北京");
        // Tag characters ("ASCII smuggling") and a blank Hangul letter.
        assert_eq!(
            escape_controls("ev\u{e0041}il\u{3164}@x", false),
            "ev\\u{e0041}il\\u{3164}@x"
        );
        let mut w = Escaping {
            out: Vec::new(),
            json: false,
        };
        w.write_all(b"line one\nforged\x1b]0;x\x07\n").unwrap();
        assert_eq!(w.out, b"line one\\nforged\\x1b]0;x\\x07\n");
        // A JSON line stays JSON: DEL, C1 and bidirectional controls are
        // written as JSON escapes.
        let mut w = Escaping {
            out: Vec::new(),
            json: true,
        };
        w.write_all("{\"a\":\"x\u{7f}\u{9b}\u{202e}y\u{e0041}\"}\n".as_bytes())
            .unwrap();
        let line = String::from_utf8(w.out).unwrap();
        assert_eq!(line, "{\"a\":\"x\\u007f\\u009b\\u202ey\\udb40\\udc41\"}\n");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["a"], "x\u{7f}\u{9b}\u{202e}y\u{e0041}");
    }
}

//! How deep mail-parser would nest a message's MIME parts, and how many
//! parts it would make, found before it makes them. mail-parser follows
//! attached messages (`message/rfc822` without a transfer encoding) and
//! multiparts with no limit, keeps every part (about a kilobyte each, for
//! a few bytes of input), and drops its chain of attached messages
//! recursively: 25 000 levels in 800 kB overflow a 2 MiB thread stack.
//!
//! [`check`] walks the message as mail-parser's parser does, with its own
//! pieces (its header parser, its boundary searches, its decoders where it
//! decodes an attached message), so the structure measured is the one
//! mail-parser would build; but it keeps only the containers still open
//! and stops at the first level or part over the caps. [`parse`] is the
//! full parse behind that check: every full parse of bytes from outside
//! goes through it. Pure.

use mail_parser::parsers::MessageStream;
use mail_parser::{ContentType, GetHeader, HeaderName, HeaderValue, Message, MessageParser};

/// Deepest nesting of containers (multiparts and attached messages) read;
/// the same bound as the nesting of a CMS structure (`smime::limits`).
pub const MAX_DEPTH: usize = 32;
/// Most MIME parts read in one message, attached messages' parts included.
pub const MAX_PARTS: usize = 10_000;
/// Most lines in one header section, and in all of a message's header
/// sections together: mail-parser keeps some 80 octets per field, so 6 MB
/// of `A: b` lines would cost it 125 MB.
pub const MAX_SECTION_LINES: usize = 10_000;
pub const MAX_HEADER_LINES: usize = 100_000;
/// Most RFC 2231 parameter pieces (`name*3=`) in one header section:
/// mail-parser joins each piece to those before it by copying them all,
/// so 9,000 pieces of 800 octets cost it 41 s (review 25); mail has a few.
pub const MAX_PIECES: usize = 256;
/// How many times mail-parser decodes and parses an encoded attached
/// message inside another (its `MAX_NESTED_ENCODED`).
const ENCODED_LEVELS: usize = 3;

/// Why a message was not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooComplex {
    #[error("MIME parts nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_PARTS} MIME parts")]
    TooManyParts,
    #[error("a header section of more than {MAX_SECTION_LINES} lines, or more than {MAX_HEADER_LINES} in all")]
    TooManyHeaderLines,
    #[error("more than {MAX_PIECES} parameter pieces (RFC 2231) in one header section")]
    TooManyPieces,
    /// HTML under more attached messages than the EFAIL defence follows.
    #[error("attached messages nested deeper than the EFAIL defence follows ({0})")]
    TooDeepToMakeInert(usize),
    /// Its parse and the RFC reading differ (`mail::readings`).
    #[error("it reads two ways ({0})")]
    TwoWays(#[from] super::readings::TwoWays),
}

/// The lines of the header section at the start of `raw` (up to its empty
/// line, or the end, as [`section_len`] reads it), counted without
/// parsing; stops counting past `max`.
pub fn header_lines(raw: &[u8], max: usize) -> usize {
    let mut lines = 0;
    let mut at = 0;
    let mut previous: &[u8] = b"";
    while lines <= max {
        match memchr::memchr(b'\n', &raw[at..]) {
            Some(k) => {
                let line = &raw[at..at + k];
                if ends_section(previous, line) {
                    break;
                }
                previous = line;
                lines += 1;
                at += k + 1;
            }
            None => {
                lines += usize::from(at < raw.len());
                break;
            }
        }
    }
    lines
}

/// Whether `line` (without its LF) is the empty line that ends a header
/// section after `previous`, for every reader: mail-parser takes the line
/// end after a one-letter time zone (`Date: … 12:00:00 Z`) as part of the
/// date and reads on into the body (review 27), so an empty line after a
/// line with a time of day that ends in a one-letter word does not end
/// what is counted.
fn ends_section(previous: &[u8], line: &[u8]) -> bool {
    let empty = line.is_empty() || line == b"\r";
    let previous = previous.trim_ascii_end();
    let one_letter = previous.len() >= 2
        && previous[previous.len() - 1].is_ascii_alphabetic()
        && matches!(previous[previous.len() - 2], b' ' | b'\t' | b')');
    let time_of_day = previous
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b':' && w[2].is_ascii_digit());
    empty && !(one_letter && time_of_day)
}

/// How many RFC 2231 parameter pieces the header section at the start of
/// `raw` may hold, counted without parsing: every `*` in it. mail-parser
/// reads a piece number after `*` across white space, folding, comments
/// and quotes alike (`name*+1=`, `name*(c)1=`, `x*"1=`: reviews 26, 27),
/// so no narrower count is safe; a header section holds few `*`
/// otherwise. Stops counting past `max`.
pub fn parameter_pieces(raw: &[u8], max: usize) -> usize {
    let section = &raw[..section_len(raw)];
    memchr::memchr_iter(b'*', section)
        .take(max.saturating_add(1))
        .count()
}

/// The length of the header section at the start of `raw`, up to its
/// empty line ([`ends_section`]) or the end.
fn section_len(raw: &[u8]) -> usize {
    let mut at = 0;
    let mut previous: &[u8] = b"";
    while let Some(k) = memchr::memchr(b'\n', &raw[at..]) {
        let line = &raw[at..at + k];
        if ends_section(previous, line) {
            return at;
        }
        previous = line;
        at += k + 1;
    }
    raw.len()
}

/// Whether mail-parser may read the header section at the start of `raw`
/// at a cost its size bounds: at most [`MAX_SECTION_LINES`] lines and
/// [`MAX_PIECES`] parameter pieces.
pub fn section_within_caps(raw: &[u8]) -> bool {
    header_lines(raw, MAX_SECTION_LINES) <= MAX_SECTION_LINES
        && parameter_pieces(raw, MAX_PIECES) <= MAX_PIECES
}

/// mail-parser's full parse of `raw` (`None` when it finds no header
/// section), once [`check`] has found its structure within the caps.
pub fn parse(raw: &[u8]) -> Result<Option<Message<'_>>, TooComplex> {
    check(raw)?;
    Ok(MessageParser::default().parse(raw))
}

/// Checks the structure mail-parser would build from `raw` against
/// [`MAX_DEPTH`] and [`MAX_PARTS`].
pub fn check(raw: &[u8]) -> Result<(), TooComplex> {
    Walk::new(MAX_DEPTH, MAX_PARTS).message(raw, 0, ENCODED_LEVELS)
}

/// What mail-parser makes of a part's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A message: the whole input, or an attached one.
    Message,
    Multipart,
    /// `multipart/digest`: its parts without a type are messages.
    Digest,
    Leaf,
}

/// mail-parser's reading of a Content-Type (its `mime_type`), as far as
/// structure goes; the same comparisons, on the same parsed value.
fn kind(ct: Option<&ContentType<'_>>, parent: Kind) -> Kind {
    match ct {
        Some(ct) => match ct.ctype() {
            "multipart" if ct.subtype() == Some("digest") => Kind::Digest,
            "multipart" => Kind::Multipart,
            "message" if matches!(ct.subtype(), Some("rfc822" | "global")) => Kind::Message,
            _ => Kind::Leaf,
        },
        None if parent == Kind::Digest => Kind::Message,
        None => Kind::Leaf,
    }
}

/// A container being read: its kind and the boundary its parts end at.
struct Level {
    kind: Kind,
    boundary: Option<Vec<u8>>,
}

/// The caps, and what the walk has seen.
struct Walk {
    max_depth: usize,
    max_parts: usize,
    /// The deepest nesting reached (for the tests' comparison).
    #[cfg(test)]
    deepest: usize,
    /// Parts read, in all.
    parts: usize,
    /// Header lines read, in all.
    header_lines: usize,
}

impl Walk {
    fn new(max_depth: usize, max_parts: usize) -> Self {
        Walk {
            max_depth,
            max_parts,
            #[cfg(test)]
            deepest: 0,
            parts: 0,
            header_lines: 0,
        }
    }

    /// Reads the message `raw` whose top sits `base` levels deep, as
    /// mail-parser's `parse_` does (`encoded`: its remaining depth of
    /// encoded attached messages).
    fn message(&mut self, raw: &[u8], base: usize, encoded: usize) -> Result<(), TooComplex> {
        let parser = MessageParser::default();
        let mut stream = MessageStream::new(raw);
        let mut headers = Vec::new();
        let mut state = Level {
            kind: Kind::Message,
            boundary: None,
        };
        // The containers around `state`, each with whether it was left for
        // an attached message (mail-parser keeps that message's parent).
        let mut open: Vec<(Level, bool)> = Vec::new();
        loop {
            headers.clear();
            // Counted before mail-parser reads them (its reading is what
            // costs).
            let section = &raw[stream.offset().min(raw.len())..];
            let lines = header_lines(section, MAX_SECTION_LINES);
            self.header_lines += lines;
            if lines > MAX_SECTION_LINES || self.header_lines > MAX_HEADER_LINES {
                return Err(TooComplex::TooManyHeaderLines);
            }
            if parameter_pieces(section, MAX_PIECES) > MAX_PIECES {
                return Err(TooComplex::TooManyPieces);
            }
            let read = stream.parse_headers(&parser, &mut headers);
            if read || !headers.is_empty() {
                // A header section cut short is kept as a part too.
                self.parts += 1;
                if self.parts > self.max_parts {
                    return Err(TooComplex::TooManyParts);
                }
            }
            if !read {
                return Ok(());
            }
            let ct = headers
                .header_value(&HeaderName::ContentType)
                .and_then(|c| c.as_content_type());
            let mut kind = kind(ct, state.kind);
            if matches!(kind, Kind::Multipart | Kind::Digest) {
                if let Some(boundary) = ct.and_then(|c| c.attribute("boundary")) {
                    if stream.seek_next_part(boundary.as_bytes()) {
                        let inner = Level {
                            kind,
                            boundary: Some(boundary.as_bytes().to_vec()),
                        };
                        open.push((std::mem::replace(&mut state, inner), false));
                        self.deeper(base + open.len())?;
                        stream.skip_crlf();
                        continue;
                    }
                }
                // No boundary, or none found: one part.
                kind = Kind::Leaf;
            }
            let encoding = match headers.header_value(&HeaderName::ContentTransferEncoding) {
                Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("base64") => Some(true),
                Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("quoted-printable") => {
                    Some(false)
                }
                _ => None,
            };
            match (kind, encoding) {
                (Kind::Message, None) => {
                    // Its parts follow at once, up to the parent's boundary.
                    let inner = Level {
                        kind: Kind::Message,
                        boundary: state.boundary.take(),
                    };
                    open.push((std::mem::replace(&mut state, inner), true));
                    self.deeper(base + open.len())?;
                    continue;
                }
                (Kind::Message, Some(base64)) => {
                    // Decoded and parsed on its own, as mail-parser does;
                    // where decoding fails it reads on as for any part.
                    let boundary = state.boundary.as_deref().unwrap_or_default();
                    let (end, decoded) = if base64 {
                        stream.decode_base64_mime(boundary)
                    } else {
                        stream.decode_quoted_printable_mime(boundary)
                    };
                    if end == usize::MAX {
                        self.rest_of_part(&mut stream, &mut state);
                    } else if encoded > 0 {
                        let depth = base + open.len() + 1;
                        self.deeper(depth)?;
                        self.message(&decoded, depth, encoded - 1)?;
                    }
                }
                // mail-parser decodes a leaf's body, but its decoders stop
                // at the first delimiter line, as this search does, or give
                // up and fall back on it.
                _ => self.rest_of_part(&mut stream, &mut state),
            }
            if state.boundary.is_some() {
                loop {
                    if state.kind == Kind::Message {
                        // An attached message ends with its parent's part.
                        match open.pop() {
                            Some((mut parent, true)) => {
                                parent.boundary = state.boundary.take();
                                state = parent;
                            }
                            _ => return Ok(()),
                        }
                    }
                    if !stream.is_multipart_end() {
                        break;
                    }
                    // The last part of a multipart: on with its parent's.
                    let Some((parent, _)) = open.pop() else {
                        return Ok(());
                    };
                    state = parent;
                    match &state.boundary {
                        Some(b) if stream.seek_next_part_offset(b).is_some() => {}
                        _ => return Ok(()),
                    }
                }
            } else if stream.offset() >= raw.len() {
                return Ok(());
            }
        }
    }

    /// Skips to the end of the part being read (after its delimiter);
    /// without one, to the end, and the container's boundary is dropped.
    fn rest_of_part(&self, stream: &mut MessageStream<'_>, state: &mut Level) {
        let (_, found) = stream.seek_part_end(state.boundary.as_deref());
        if !found {
            state.boundary = None;
        }
    }

    fn deeper(&mut self, depth: usize) -> Result<(), TooComplex> {
        #[cfg(test)]
        {
            self.deepest = self.deepest.max(depth);
        }
        if depth > self.max_depth {
            return Err(TooComplex::TooDeep);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "nesting_tests.rs"]
mod tests;

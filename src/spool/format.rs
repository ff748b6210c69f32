//! The bytes of every spool file, in every format version the gateway has
//! ever written: new files are written in [`VERSION`], and every older
//! version is still read, so mail queued before an upgrade is delivered
//! after it.
//!
//! Format 2 (written now). Each file is a header line naming its kind and
//! version, its content, and a trailer:
//!
//! ```text
//! SMIMEGW-SPOOL 2 <json length>\n<envelope JSON>\n<message bytes>   message  (<id>.msg)
//! SMIMEGW-STATE 2\n<state JSON>                                      state    (<id>.state)
//! SMIMEGW-RETRY 2\n<queue id>                                        retry    (<id>.retry)
//! SMIMEGW-REASON 2\n<text>                                           reason   (<id>.reason)
//! \nSMIMEGW-END <length, 16 hex> <CRC-32, 8 hex>\n                    trailer, every file
//! ```
//!
//! The trailer's length and CRC-32 cover every byte before it, the header
//! line included, so any torn or altered byte of any file is seen.
//!
//! Format 1 (up to commit 2b8d10e): the message file had the same layout
//! with `SMIMEGW-SPOOL 1`, but its trailer counted and checked the message
//! bytes only; the state was bare JSON, the retry marker an empty file and
//! the quarantine reason plain text, none of them checked.
//!
//! Times in envelopes and states must be usable spool times (see
//! [`super::time`]); a file naming one after the year 9999 is corrupt.

use super::envelope::{Envelope, QueueState};
use super::time::{self, TimeError};

/// The format version written now.
pub const VERSION: u32 = 2;

const MESSAGE_MAGIC: &str = "SMIMEGW-SPOOL";
const STATE_MAGIC: &str = "SMIMEGW-STATE";
const RETRY_MAGIC: &str = "SMIMEGW-RETRY";
const REASON_MAGIC: &str = "SMIMEGW-REASON";
const TRAILER_TAG: &[u8] = b"\nSMIMEGW-END ";
/// `\nSMIMEGW-END ` + 16 hex length + space + 8 hex CRC + `\n`.
pub const TRAILER_LEN: usize = 13 + 16 + 1 + 8 + 1;

/// Why bytes are not a valid spool file (or cannot become one).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("no header line")]
    NoHeader,
    #[error("header line {0:?} is not a spool header")]
    BadHeader(String),
    #[error(
        "{kind} format version {version:?} is unknown to this gateway (written by a newer one?)"
    )]
    UnknownVersion { kind: &'static str, version: String },
    #[error("file is shorter than its header says (torn write?)")]
    Short,
    #[error("trailer missing (torn write?)")]
    NoTrailer,
    #[error("trailer malformed: {0}")]
    BadTrailer(&'static str),
    #[error("{actual} bytes where the trailer says {recorded} (torn write?)")]
    Length { actual: u64, recorded: u64 },
    #[error("checksum does not match: the file was altered")]
    Checksum,
    #[error("{what} is not valid: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Time {
        what: &'static str,
        #[source]
        source: TimeError,
    },
    #[error("retry marker names message {found:?}, not {expected:?}")]
    WrongId { found: String, expected: String },
}

/// The header line of a message file in the current version, followed by
/// the envelope: what [`super::store::Incoming`] writes first.
pub fn message_head(envelope: &Envelope) -> Result<Vec<u8>, FormatError> {
    check_time("envelope received", envelope.received)?;
    let json = serde_json::to_vec(envelope).map_err(|source| FormatError::Json {
        what: "envelope",
        source,
    })?;
    let mut out = format!("{MESSAGE_MAGIC} {VERSION} {}\n", json.len()).into_bytes();
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(out)
}

/// The trailer for `len` bytes with CRC-32 `crc`.
pub fn trailer(len: u64, crc: u32) -> Vec<u8> {
    let mut t = TRAILER_TAG.to_vec();
    t.extend_from_slice(format!("{len:016x} {crc:08x}\n").as_bytes());
    t
}

/// `content` with its trailer.
fn seal(mut content: Vec<u8>) -> Vec<u8> {
    let t = trailer(content.len() as u64, crc32fast::hash(&content));
    content.extend_from_slice(&t);
    content
}

/// A whole message file.
pub fn encode_message(envelope: &Envelope, body: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut bytes = message_head(envelope)?;
    bytes.extend_from_slice(body);
    Ok(seal(bytes))
}

/// A state file. A next attempt after the last usable time is recorded as
/// that time: both mean "not in this calendar".
pub fn encode_state(state: &QueueState) -> Result<Vec<u8>, FormatError> {
    let json = if state.next_attempt > time::MAX_SECS {
        let mut clamped = state.clone();
        clamped.next_attempt = time::MAX_SECS;
        serde_json::to_vec_pretty(&clamped)
    } else {
        serde_json::to_vec_pretty(state)
    }
    .map_err(|source| FormatError::Json {
        what: "state",
        source,
    })?;
    let mut bytes = format!("{STATE_MAGIC} {VERSION}\n").into_bytes();
    bytes.extend_from_slice(&json);
    Ok(seal(bytes))
}

/// A retry marker for message `id`.
pub fn encode_retry(id: &str) -> Vec<u8> {
    seal(format!("{RETRY_MAGIC} {VERSION}\n{id}").into_bytes())
}

/// A quarantine reason.
pub fn encode_reason(reason: &str) -> Vec<u8> {
    seal(format!("{REASON_MAGIC} {VERSION}\n{reason}").into_bytes())
}

/// Splits a message file (any version) into envelope and body, checking
/// every part.
pub fn decode_message(bytes: &[u8]) -> Result<(Envelope, &[u8]), FormatError> {
    let (first, after) = header_line(bytes)?;
    let bad = || FormatError::BadHeader(first.to_string());
    let (version, json_len) = first
        .strip_prefix(MESSAGE_MAGIC)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|rest| rest.split_once(' '))
        .ok_or_else(bad)?;
    let json_len: usize = json_len.trim().parse().map_err(|_| bad())?;
    let (envelope, body) = if version == "1" {
        decode_message_v1(bytes, after, json_len)?
    } else {
        // Checked first, so an altered version number reads as altered.
        let covered = unseal(bytes)?;
        if version != "2" {
            return Err(FormatError::UnknownVersion {
                kind: "message",
                version: version.to_string(),
            });
        }
        let json_end = after.checked_add(json_len).ok_or(FormatError::Short)?;
        if covered.get(json_end) != Some(&b'\n') {
            return Err(FormatError::Short);
        }
        let envelope = envelope_from(&covered[after..json_end])?;
        (envelope, &covered[json_end + 1..])
    };
    check_time("envelope received", envelope.received)?;
    Ok((envelope, body))
}

/// Format 1: the trailer counts and checks the body only.
fn decode_message_v1(
    bytes: &[u8],
    json_start: usize,
    json_len: usize,
) -> Result<(Envelope, &[u8]), FormatError> {
    let body_start = json_start
        .checked_add(json_len)
        .and_then(|n| n.checked_add(1))
        .filter(|n| {
            n.checked_add(TRAILER_LEN)
                .is_some_and(|end| end <= bytes.len())
        })
        .ok_or(FormatError::Short)?;
    let envelope = envelope_from(&bytes[json_start..json_start + json_len])?;
    let body_end = bytes.len() - TRAILER_LEN;
    let (len, crc) = read_trailer(&bytes[body_end..])?;
    let body = &bytes[body_start..body_end];
    if body.len() as u64 != len {
        return Err(FormatError::Length {
            actual: body.len() as u64,
            recorded: len,
        });
    }
    if crc32fast::hash(body) != crc {
        return Err(FormatError::Checksum);
    }
    Ok((envelope, body))
}

/// A state file, any version.
pub fn decode_state(bytes: &[u8]) -> Result<QueueState, FormatError> {
    let json = if bytes.starts_with(STATE_MAGIC.as_bytes()) {
        versioned(bytes, STATE_MAGIC, "state")?
    } else {
        // Format 1: bare JSON.
        bytes
    };
    let state: QueueState = serde_json::from_slice(json).map_err(|source| FormatError::Json {
        what: "state",
        source,
    })?;
    check_time("state next_attempt", state.next_attempt)?;
    Ok(state)
}

/// Checks a retry marker for message `id`, any version.
pub fn decode_retry(bytes: &[u8], id: &str) -> Result<(), FormatError> {
    if bytes.is_empty() {
        // Format 1: an empty file.
        return Ok(());
    }
    let found = versioned(bytes, RETRY_MAGIC, "retry marker")?;
    if found != id.as_bytes() {
        return Err(FormatError::WrongId {
            found: String::from_utf8_lossy(found).into_owned(),
            expected: id.to_string(),
        });
    }
    Ok(())
}

/// A quarantine reason, any version.
pub fn decode_reason(bytes: &[u8]) -> Result<String, FormatError> {
    let text = if bytes.starts_with(REASON_MAGIC.as_bytes()) {
        versioned(bytes, REASON_MAGIC, "reason")?
    } else {
        // Format 1: plain text.
        bytes
    };
    Ok(String::from_utf8_lossy(text).into_owned())
}

/// The content of a format 2 file of kind `magic`: checked as a whole,
/// header line removed.
fn versioned<'a>(
    bytes: &'a [u8],
    magic: &str,
    kind: &'static str,
) -> Result<&'a [u8], FormatError> {
    let covered = unseal(bytes)?;
    let (first, after) = header_line(covered)?;
    let version = first
        .strip_prefix(magic)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| FormatError::BadHeader(first.to_string()))?;
    if version != "2" {
        return Err(FormatError::UnknownVersion {
            kind,
            version: version.to_string(),
        });
    }
    Ok(&covered[after..])
}

/// The first line (without its `\n`) and where the next one starts.
fn header_line(bytes: &[u8]) -> Result<(&str, usize), FormatError> {
    let nl = bytes
        .iter()
        .take(256)
        .position(|&b| b == b'\n')
        .ok_or(FormatError::NoHeader)?;
    let first = std::str::from_utf8(&bytes[..nl])
        .map_err(|_| FormatError::BadHeader(String::from_utf8_lossy(&bytes[..nl]).into_owned()))?;
    Ok((first, nl + 1))
}

/// Checks the trailer of a format 2 file against everything before it and
/// returns that.
fn unseal(bytes: &[u8]) -> Result<&[u8], FormatError> {
    let end = bytes
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or(FormatError::Short)?;
    let (len, crc) = read_trailer(&bytes[end..])?;
    let covered = &bytes[..end];
    if covered.len() as u64 != len {
        return Err(FormatError::Length {
            actual: covered.len() as u64,
            recorded: len,
        });
    }
    if crc32fast::hash(covered) != crc {
        return Err(FormatError::Checksum);
    }
    Ok(covered)
}

/// Length and CRC from the last [`TRAILER_LEN`] bytes of a file.
fn read_trailer(t: &[u8]) -> Result<(u64, u32), FormatError> {
    if t.len() != TRAILER_LEN || !t.starts_with(TRAILER_TAG) || t.last() != Some(&b'\n') {
        return Err(FormatError::NoTrailer);
    }
    let fields = std::str::from_utf8(&t[TRAILER_TAG.len()..TRAILER_LEN - 1])
        .map_err(|_| FormatError::BadTrailer("not text"))?;
    let (len, crc) = fields
        .split_once(' ')
        .ok_or(FormatError::BadTrailer("no separator"))?;
    let len = u64::from_str_radix(len, 16).map_err(|_| FormatError::BadTrailer("length"))?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| FormatError::BadTrailer("checksum"))?;
    Ok((len, crc))
}

fn envelope_from(json: &[u8]) -> Result<Envelope, FormatError> {
    serde_json::from_slice(json).map_err(|source| FormatError::Json {
        what: "envelope",
        source,
    })
}

fn check_time(what: &'static str, secs: u64) -> Result<(), FormatError> {
    time::check(secs)
        .map(|_| ())
        .map_err(|source| FormatError::Time { what, source })
}

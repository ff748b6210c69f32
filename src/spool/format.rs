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
//!
//! Why one long file: half of it is unit tests (every flipped byte, every
//! cut, every version), which belong next to the formats they check.

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
    // Exactly as written (lower-case hex, no sign), so that no altered
    // byte reads as the same number.
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(len) || !hex(crc) {
        return Err(FormatError::BadTrailer("not lower-case hex"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::envelope::{RcptState, RcptStatus};

    const V1_MSG_PARTIAL: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/spool-v1/queue/066170214BE607.msg"
    ));
    const V1_STATE_PARTIAL: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/spool-v1/queue/066170214BE607.state"
    ));
    const V1_MSG_FRESH: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/spool-v1/queue/066170214BFB30.msg"
    ));

    fn envelope(received: u64) -> Envelope {
        Envelope {
            mail_from: "a@example.org".into(),
            rcpts: vec!["b@example.dk".into(), "c@example.dk".into()],
            received,
            client: "127.0.0.1".into(),
            helo: "client".into(),
            eight_bit: true,
            smtputf8: false,
            released: false,
            submission: false,
        }
    }

    fn state(next_attempt: u64) -> QueueState {
        QueueState {
            attempts: 2,
            next_attempt,
            rcpts: vec![
                RcptState {
                    addr: "b@example.dk".into(),
                    status: RcptStatus::Delivered,
                    reply: Some("250 ok".into()),
                    hop: Some("hop:25".into()),
                },
                RcptState {
                    addr: "c@example.dk".into(),
                    status: RcptStatus::Pending,
                    reply: None,
                    hop: None,
                },
            ],
        }
    }

    /// A format 1 message exactly as the format 1 writer laid it out.
    fn v1_message(envelope_json: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!("SMIMEGW-SPOOL 1 {}\n", envelope_json.len()).into_bytes();
        out.extend_from_slice(envelope_json.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        out.extend_from_slice(
            format!(
                "\nSMIMEGW-END {:016x} {:08x}\n",
                body.len(),
                crc32fast::hash(body)
            )
            .as_bytes(),
        );
        out
    }

    /// A format 2 message with any envelope text, correctly sealed: what an
    /// altered file with a recomputed checksum looks like.
    fn v2_message(envelope_json: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!("SMIMEGW-SPOOL 2 {}\n", envelope_json.len()).into_bytes();
        out.extend_from_slice(envelope_json.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        seal(out)
    }

    fn v2_state(json: &str) -> Vec<u8> {
        seal(format!("SMIMEGW-STATE 2\n{json}").into_bytes())
    }

    fn envelope_json(received: &str) -> String {
        format!(
            r#"{{"mail_from":"a@example.org","rcpts":["b@example.dk"],"received":{received},"client":"127.0.0.1","helo":"c","eight_bit":false,"smtputf8":false}}"#
        )
    }

    fn state_json(next_attempt: &str) -> String {
        format!(
            r#"{{"attempts":1,"next_attempt":{next_attempt},"rcpts":[{{"addr":"b@example.dk","status":"pending"}}]}}"#
        )
    }

    #[test]
    fn version_2_roundtrips() {
        let body = b"Subject: x\r\n\r\n\xc3\xa6\r\n.\r\n";
        let bytes = encode_message(&envelope(1_767_225_600), body).unwrap();
        assert!(bytes.starts_with(b"SMIMEGW-SPOOL 2 "));
        let (env, got) = decode_message(&bytes).unwrap();
        assert_eq!(env, envelope(1_767_225_600));
        assert_eq!(got, body);

        let bytes = encode_state(&state(1_767_225_660)).unwrap();
        assert!(bytes.starts_with(b"SMIMEGW-STATE 2\n{"));
        assert_eq!(decode_state(&bytes).unwrap(), state(1_767_225_660));

        let bytes = encode_retry("066170214BE607");
        assert!(bytes.starts_with(b"SMIMEGW-RETRY 2\n066170214BE607\nSMIMEGW-END "));
        decode_retry(&bytes, "066170214BE607").unwrap();
        assert!(matches!(
            decode_retry(&bytes, "066170214BE608"),
            Err(FormatError::WrongId { .. })
        ));

        let bytes = encode_reason("cannot decrypt");
        assert_eq!(decode_reason(&bytes).unwrap(), "cannot decrypt");
    }

    #[test]
    fn the_trailer_covers_every_byte_of_every_file() {
        let files = [
            (
                "message",
                encode_message(&envelope(1_767_225_600), b"Subject: x\r\n\r\nbody\r\n").unwrap(),
            ),
            ("state", encode_state(&state(1_767_225_660)).unwrap()),
            ("retry", encode_retry("066170214BE607")),
            ("reason", encode_reason("cannot decrypt")),
        ];
        for (kind, good) in &files {
            let check = |bytes: &[u8]| -> bool {
                match *kind {
                    "message" => decode_message(bytes).is_ok(),
                    "state" => decode_state(bytes).is_ok(),
                    "retry" => decode_retry(bytes, "066170214BE607").is_ok(),
                    _ => {
                        // A format 1 reason is any text: only a file that
                        // still says it is format 2 must check out.
                        !bytes.starts_with(REASON_MAGIC.as_bytes()) || decode_reason(bytes).is_ok()
                    }
                }
            };
            assert!(check(good), "{kind}");
            for i in 0..good.len() {
                for flip in [0x01u8, 0x20, 0x80] {
                    let mut bad = good.clone();
                    bad[i] ^= flip;
                    let accepted = check(&bad)
                        && (*kind != "reason" || bad.starts_with(REASON_MAGIC.as_bytes()));
                    assert!(!accepted, "{kind}: byte {i} ^ {flip:#x} not detected");
                }
            }
            for cut in 0..good.len() {
                let torn = &good[..cut];
                let accepted =
                    check(torn) && (*kind != "reason" || torn.starts_with(REASON_MAGIC.as_bytes()));
                // An empty retry marker is a valid format 1 marker.
                if !(*kind == "retry" && cut == 0) {
                    assert!(!accepted, "{kind}: torn at {cut} not detected");
                }
            }
        }
    }

    #[test]
    fn version_1_files_written_by_the_old_code_are_read() {
        let (env, body) = decode_message(V1_MSG_PARTIAL).unwrap();
        assert_eq!(env.mail_from, "alice@example.org");
        assert_eq!(
            env.rcpts,
            vec![
                "now@example-law.dk".to_string(),
                "later@example-law.dk".into()
            ]
        );
        assert_eq!(env.received, 1_767_225_600);
        assert_eq!(env.client, "192.0.2.10");
        assert_eq!(env.helo, "client.example.org");
        assert!(!env.eight_bit && !env.smtputf8 && !env.released);
        // Written before the submission path existed: not submitted.
        assert!(!env.submission);
        assert!(body.starts_with(b"From: Alice <alice@example.org>\r\n"));
        assert!(body.ends_with(b"\r\n\r\none delivered, one pending\r\n"));
        assert_eq!(body.len(), 0xb4);

        let st = decode_state(V1_STATE_PARTIAL).unwrap();
        assert_eq!(st.attempts, 1);
        assert_eq!(st.next_attempt, 1_767_225_660);
        assert_eq!(st.rcpts[0].status, RcptStatus::Delivered);
        assert_eq!(st.rcpts[0].reply.as_deref(), Some("250 2.0.0 Ok"));
        assert_eq!(st.rcpts[1].addr, "later@example-law.dk");
        assert_eq!(st.rcpts[1].status, RcptStatus::Pending);
        assert_eq!(st.rcpts[1].hop.as_deref(), Some("127.0.0.1:10026"));

        let (env, body) = decode_message(V1_MSG_FRESH).unwrap();
        assert!(env.eight_bit);
        assert!(body.ends_with("K\u{f8}benhavn, \u{e6}bler og \u{e5}l\r\n".as_bytes()));

        decode_retry(b"", "066170214BE607").unwrap();
        assert_eq!(
            decode_reason(b"cannot decrypt: no key").unwrap(),
            "cannot decrypt: no key"
        );
    }

    #[test]
    fn version_1_built_from_literal_bytes() {
        // Released from quarantine by the format 1 code: `released` written.
        let json = r#"{"mail_from":"","rcpts":["x@example-law.dk"],"received":1700000000,"client":"127.0.0.1","helo":"gw","eight_bit":false,"smtputf8":true,"released":true}"#;
        let bytes = v1_message(json, b"Subject: r\r\n\r\nx\r\n");
        let (env, body) = decode_message(&bytes).unwrap();
        assert!(env.released && env.smtputf8 && env.is_null_sender());
        assert_eq!(body, b"Subject: r\r\n\r\nx\r\n");
        // Format 1 checks the body and the trailer.
        let mut bad = bytes.clone();
        let at = bad.len() - TRAILER_LEN - 2;
        bad[at] ^= 1;
        assert!(matches!(decode_message(&bad), Err(FormatError::Checksum)));
        assert!(matches!(
            decode_message(&bytes[..bytes.len() - 1]),
            Err(FormatError::NoTrailer)
        ));
        // An empty body.
        let bytes = v1_message(json, b"");
        assert_eq!(decode_message(&bytes).unwrap().1, b"");
        // A format 1 state as `to_vec_pretty` wrote it, without the
        // optional fields.
        let st = b"{\n  \"attempts\": 0,\n  \"next_attempt\": 1700000000,\n  \"rcpts\": [\n    {\n      \"addr\": \"x@example-law.dk\",\n      \"status\": \"quarantined\"\n    }\n  ]\n}";
        let st = decode_state(st).unwrap();
        assert_eq!(st.rcpts[0].status, RcptStatus::Quarantined);
        assert_eq!(st.rcpts[0].reply, None);
    }

    #[test]
    fn altered_version_numbers_and_unknown_versions() {
        let good = encode_message(&envelope(1_767_225_600), b"x").unwrap();
        // 2 -> 1: read as format 1, whose trailer then does not fit.
        let mut one = good.clone();
        one[14] = b'1';
        assert!(decode_message(&one).is_err());
        // 2 -> 3 without a new checksum: altered.
        let mut three = good.clone();
        three[14] = b'3';
        assert!(matches!(decode_message(&three), Err(FormatError::Checksum)));
        // A sealed version 3: not ours.
        let json = envelope_json("1700000000");
        let mut v3 = format!("SMIMEGW-SPOOL 3 {}\n{json}\nbody", json.len()).into_bytes();
        v3 = seal(v3);
        assert!(matches!(
            decode_message(&v3),
            Err(FormatError::UnknownVersion { version, .. }) if version == "3"
        ));
        let st = seal(format!("SMIMEGW-STATE 3\n{}", state_json("1")).into_bytes());
        assert!(matches!(
            decode_state(&st),
            Err(FormatError::UnknownVersion { .. })
        ));
        assert!(matches!(
            decode_message(b"garbage"),
            Err(FormatError::NoHeader)
        ));
        assert!(decode_state(b"garbage").is_err());
        assert!(decode_retry(b"x", "066170214BE607").is_err());
    }

    #[test]
    fn envelope_times_at_the_boundaries() {
        let max = time::MAX_SECS.to_string();
        let (env, _) = decode_message(&v2_message(&envelope_json(&max), b"x")).unwrap();
        assert_eq!(env.received, time::MAX_SECS);
        assert!(decode_message(&v1_message(&envelope_json(&max), b"x")).is_ok());
        for late in [
            "253402300800",         // 10000-01-01 00:00:00
            "9223372036854775807",  // i64::MAX: beyond chrono
            "9223372036854775808",  // i64::MAX + 1: overflows i64
            "18446744073709551615", // u64::MAX
        ] {
            for bytes in [
                v2_message(&envelope_json(late), b"x"),
                v1_message(&envelope_json(late), b"x"),
            ] {
                assert!(
                    matches!(decode_message(&bytes), Err(FormatError::Time { .. })),
                    "{late}"
                );
            }
        }
        // Beyond u64: not a number serde takes.
        assert!(matches!(
            decode_message(&v2_message(&envelope_json("18446744073709551616"), b"x")),
            Err(FormatError::Json { .. })
        ));
        // Nothing out of range is written.
        assert!(encode_message(&envelope(time::MAX_SECS), b"x").is_ok());
        for late in [time::MAX_SECS + 1, i64::MAX as u64 + 1, u64::MAX] {
            assert!(matches!(
                encode_message(&envelope(late), b"x"),
                Err(FormatError::Time { .. })
            ));
            assert!(message_head(&envelope(late)).is_err());
        }
    }

    #[test]
    fn state_times_at_the_boundaries() {
        let max = time::MAX_SECS.to_string();
        assert_eq!(
            decode_state(&v2_state(&state_json(&max)))
                .unwrap()
                .next_attempt,
            time::MAX_SECS
        );
        assert!(decode_state(state_json(&max).as_bytes()).is_ok());
        for late in [
            "253402300800",
            "9223372036854775808",
            "18446744073709551615",
        ] {
            assert!(matches!(
                decode_state(&v2_state(&state_json(late))),
                Err(FormatError::Time { .. })
            ));
            // Format 1 (bare JSON) too.
            assert!(matches!(
                decode_state(state_json(late).as_bytes()),
                Err(FormatError::Time { .. })
            ));
        }
        // A next attempt past the calendar is written as its last second.
        for late in [time::MAX_SECS + 1, u64::MAX] {
            let bytes = encode_state(&state(late)).unwrap();
            assert_eq!(decode_state(&bytes).unwrap().next_attempt, time::MAX_SECS);
        }
    }
}

//! MULTIAPPEND (RFC 3502): several messages appended to one folder by one
//! IMAP command, which the server commits as one transaction (all or
//! none), with LITERAL+ (RFC 7888) when the server offers it so the whole
//! command goes out without waiting for `+` after each literal. async-imap
//! speaks only single APPEND; this room only encodes the command and reads
//! the UIDs of the new messages from the `APPENDUID` response code
//! (UIDPLUS, RFC 4315). Sending it is [`super::imap`]'s job.

use super::source::NewMessage as Item;

/// An IMAP date-time for APPEND (`"29-Nov-2026 23:04:18 +0000"`).
pub fn imap_date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("\"%d-%b-%Y %H:%M:%S +0000\"").to_string())
        .unwrap_or_else(|| "\"01-Jan-1970 00:00:00 +0000\"".into())
}

/// Why a command cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("nothing to append")]
    Empty,
    #[error("the folder name {0:?} cannot be sent as a quoted string")]
    Folder(String),
    #[error("the flag {0:?} is not an IMAP flag")]
    Flag(String),
}

/// A MULTIAPPEND command in the pieces it is sent in: `first` is the
/// command line after the tag (sent as a command, CRLF added by the
/// client), and each of `literals` is sent once the server is ready for
/// it: the message's octets followed by the next message's
/// `(flags) "date" {n}` line, or by the final CRLF. Without LITERAL+ the
/// client waits for a `+` continuation before each piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub first: String,
    pub literals: Vec<Vec<u8>>,
}

/// The command appending `items` to `folder`, in order.
pub fn encode(
    folder: &str,
    items: &[Item<'_>],
    literal_plus: bool,
) -> Result<Command, EncodeError> {
    if items.is_empty() {
        return Err(EncodeError::Empty);
    }
    let name = quoted(folder).ok_or_else(|| EncodeError::Folder(folder.to_string()))?;
    // The first head ends the command line: the client adds its CRLF.
    let first = format!("APPEND {name} {}", head(&items[0], literal_plus)?);
    let mut literals = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut piece = Vec::with_capacity(item.message.len() + 64);
        piece.extend_from_slice(item.message);
        match items.get(i + 1) {
            Some(next) => {
                piece.push(b' ');
                piece.extend_from_slice(head(next, literal_plus)?.as_bytes());
                piece.extend_from_slice(b"\r\n");
            }
            None => piece.extend_from_slice(b"\r\n"),
        }
        literals.push(piece);
    }
    Ok(Command { first, literals })
}

/// `(flags) "date" {n}` (or `{n+}`) for one message.
fn head(item: &Item<'_>, literal_plus: bool) -> Result<String, EncodeError> {
    let mut flags = Vec::new();
    for f in item.flags {
        if f.eq_ignore_ascii_case("\\Recent") {
            continue;
        }
        if !is_flag(f) {
            return Err(EncodeError::Flag(f.clone()));
        }
        flags.push(f.as_str());
    }
    Ok(format!(
        "({}) {} {{{}{}}}",
        flags.join(" "),
        imap_date(item.internal_date),
        item.message.len(),
        if literal_plus { "+" } else { "" }
    ))
}

/// A system flag (`\Seen`) or a keyword: an atom, no specials.
fn is_flag(f: &str) -> bool {
    let atom = f.strip_prefix('\\').unwrap_or(f);
    !atom.is_empty()
        && atom.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
        })
}

/// A quoted string, for ASCII names without CR or LF.
fn quoted(s: &str) -> Option<String> {
    if s.bytes()
        .any(|b| b == b'\r' || b == b'\n' || b == 0 || !b.is_ascii())
    {
        return None;
    }
    Some(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// A UID set member of an `APPENDUID` or `COPYUID` code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidPart {
    One(u32),
    Range(u32, u32),
}

/// The UIDs of `APPENDUID`'s set in the order of the appended messages,
/// when there are exactly `count` of them (RFC 4315: a range lists them
/// in order; `b:a` with b > a means the same as `a:b`).
pub fn uids_in_order(set: &[UidPart], count: usize) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(count);
    for part in set {
        match *part {
            UidPart::One(u) => out.push(u),
            UidPart::Range(a, b) => {
                let (lo, hi) = (a.min(b), a.max(b));
                if (hi - lo) as usize >= count {
                    return None;
                }
                out.extend(lo..=hi);
            }
        }
        if out.len() > count {
            return None;
        }
    }
    (out.len() == count).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_messages_with_literal_plus_in_one_go() {
        let (a, b) = (flags(&["\\Seen", "\\Recent"]), flags(&[]));
        let items = [
            Item {
                message: b"Subject: a\r\n\r\nA\r\n",
                flags: &a,
                internal_date: 1_600_000_000,
            },
            Item {
                message: b"Subject: b\r\n\r\nBB\r\n",
                flags: &b,
                internal_date: 0,
            },
        ];
        let c = encode("Sager/2019", &items, true).unwrap();
        assert_eq!(
            c.first,
            "APPEND \"Sager/2019\" (\\Seen) \"13-Sep-2020 12:26:40 +0000\" {17+}"
        );
        assert_eq!(c.literals.len(), 2);
        assert_eq!(
            c.literals[0],
            b"Subject: a\r\n\r\nA\r\n () \"01-Jan-1970 00:00:00 +0000\" {18+}\r\n".to_vec()
        );
        assert_eq!(c.literals[1], b"Subject: b\r\n\r\nBB\r\n\r\n".to_vec());
        // Each literal announces the exact length of the message it carries.
        assert_eq!(items[0].message.len(), 17);
        assert_eq!(items[1].message.len(), 18);
    }

    #[test]
    fn synchronising_literals_without_literal_plus() {
        let f = flags(&["$Forwarded"]);
        let items = [Item {
            message: b"x",
            flags: &f,
            internal_date: 0,
        }];
        let c = encode("INBOX", &items, false).unwrap();
        assert_eq!(
            c.first,
            "APPEND \"INBOX\" ($Forwarded) \"01-Jan-1970 00:00:00 +0000\" {1}"
        );
        assert_eq!(c.literals, vec![b"x\r\n".to_vec()]);
    }

    #[test]
    fn what_cannot_be_sent_is_refused() {
        let bad = flags(&["\\Seen)"]);
        let item = |f| Item {
            message: b"x",
            flags: f,
            internal_date: 0,
        };
        assert_eq!(encode("INBOX", &[], true), Err(EncodeError::Empty));
        assert_eq!(
            encode("INBOX", &[item(&bad)], true),
            Err(EncodeError::Flag("\\Seen)".into()))
        );
        assert_eq!(
            encode("a\r\nb", &[item(&[])], true),
            Err(EncodeError::Folder("a\r\nb".into()))
        );
        assert_eq!(
            encode("a\"b", &[item(&[])], true).unwrap().first,
            "APPEND \"a\\\"b\" () \"01-Jan-1970 00:00:00 +0000\" {1+}"
        );
    }

    #[test]
    fn appenduid_sets_are_read_in_order_and_counted() {
        use UidPart::*;
        assert_eq!(uids_in_order(&[Range(7, 9)], 3), Some(vec![7, 8, 9]));
        assert_eq!(uids_in_order(&[Range(9, 7)], 3), Some(vec![7, 8, 9]));
        assert_eq!(
            uids_in_order(&[One(4), Range(10, 11)], 3),
            Some(vec![4, 10, 11])
        );
        // Too few or too many: not trusted.
        assert_eq!(uids_in_order(&[Range(7, 8)], 3), None);
        assert_eq!(uids_in_order(&[Range(1, 4_000_000_000)], 3), None);
        assert_eq!(uids_in_order(&[One(1), One(2)], 1), None);
    }
}

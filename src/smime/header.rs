//! The `X-SMIME-Gateway` trace header that tells the mailbox what the
//! gateway did: decrypted with which key, how the signature stands, or
//! why nothing could be done. Any such header that arrives from outside is
//! removed first, so the mailbox can trust the one it sees.

use super::mime;

pub const NAME: &str = "X-SMIME-Gateway";
const NAME_LOWER: &str = "x-smime-gateway";

/// Longest value `quote` keeps, in characters (a longer one is cut and
/// marked), so that no parameter can push a header line past 998 octets.
const MAX_QUOTED: usize = 200;
/// Marks a value `quote` cut.
pub const TRUNCATED: &str = "...[truncated]";
/// Lines are folded to this many octets where a space allows it.
const FOLD_AT: usize = 78;
/// The hard limit of RFC 5322 for a line, without its CRLF.
const MAX_LINE: usize = 998;

/// A quoted parameter value: no control characters (each becomes a
/// space), quotes and backslashes escaped, at most 200 characters of the
/// value (then `...[truncated]`).
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_QUOTED * 2) + 2);
    out.push('"');
    for (i, c) in value.chars().enumerate() {
        if i == MAX_QUOTED {
            out.push_str(TRUNCATED);
            break;
        }
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `NAME: value` folded at spaces so that lines stay within 78 octets
/// where the words allow and never exceed 998 (a word that would is cut).
/// Control characters in `value` become spaces. Ends with CRLF.
pub fn field(value: &str) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = String::with_capacity(clean.len() + 32);
    let mut line = format!("{NAME}:");
    for word in clean.split(' ') {
        let mut word = word.to_string();
        // Room on any line, the first (after the name) included.
        let room = MAX_LINE - NAME.len() - 2;
        if word.len() > room {
            let mut cut = room - TRUNCATED.len();
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            word.truncate(cut);
            word.push_str(TRUNCATED);
        }
        if !word.is_empty() && line.len() + 1 + word.len() > FOLD_AT && line.len() > NAME.len() + 1
        {
            out.push_str(&line);
            out.push_str("\r\n");
            line.clear();
        }
        line.push(' ');
        line.push_str(&word);
    }
    out.push_str(&line);
    out.push_str("\r\n");
    out
}

/// Fields that ask the recipient's client for a read receipt (RFC 8098
/// and older spellings), in lower case.
const RECEIPT_REQUESTS: [&str; 5] = [
    "disposition-notification-to",
    "disposition-notification-options",
    "return-receipt-to",
    "read-receipt-to",
    "x-confirm-reading-to",
];

/// `message` without the fields that ask for a read receipt, when it has
/// any. A receipt goes to the address the sender wrote, and clients
/// attach the header section they showed: on mail that arrived encrypted
/// that carries this trace header (decrypted or not) and the decrypted
/// Content-* fields, and whether a receipt comes at all tells delivered
/// from quarantined. So such mail loses its request, whatever became of it.
///
/// A message sent whole inside the encryption (RFC 8551 3.1: the content
/// is `message/rfc822`) loses the requests of the message it wraps too,
/// a few levels down.
pub fn without_receipt_requests(message: &[u8]) -> Option<Vec<u8>> {
    without_receipt_requests_within(message, 4)
}

fn without_receipt_requests_within(message: &[u8], levels: usize) -> Option<Vec<u8>> {
    let (headers, body) = mime::split(message);
    let asks = |n: &str| RECEIPT_REQUESTS.contains(&n);
    let mut any = false;
    let mut wraps = false;
    mime::each_field(headers, |name, field| {
        any |= asks(&name);
        wraps |= name == "content-type" && is_message_type(field);
    });
    let inner = (wraps && levels > 0)
        .then(|| without_receipt_requests_within(body, levels - 1))
        .flatten();
    if !any && inner.is_none() {
        return None;
    }
    let kept = mime::without(headers, asks);
    let body = inner.as_deref().unwrap_or(body);
    let mut out = Vec::with_capacity(message.len());
    out.extend_from_slice(&kept);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Some(out)
}

/// Whether a Content-Type field (name, value and line ends) names
/// `message/rfc822` (or the internationalised `message/global`).
fn is_message_type(field: &[u8]) -> bool {
    let field = String::from_utf8_lossy(field);
    let value = field.split_once(':').map_or("", |(_, v)| v);
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("message/rfc822") || media.eq_ignore_ascii_case("message/global")
}

/// `message` without any `X-SMIME-Gateway` field.
pub fn strip(message: &[u8]) -> Vec<u8> {
    let (headers, body) = mime::split(message);
    let kept = mime::without(headers, |n| n == NAME_LOWER);
    let mut out = Vec::with_capacity(message.len());
    out.extend_from_slice(&kept);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// `message` with its own `X-SMIME-Gateway: value` on top and none other.
pub fn set(message: &[u8], value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + value.len() + 24);
    // Writing to a vector cannot fail.
    let _ = write_set(message, value, &mut out);
    out
}

/// Writes `message` with its own `X-SMIME-Gateway: value` on top and none
/// other to `w`, its body not copied.
pub fn write_set(message: &[u8], value: &str, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let (headers, body) = mime::split(message);
    let kept = mime::without(headers, |n| n == NAME_LOWER);
    // Lines folded onto nothing at the very start would become part of
    // the field put in front of them: a sender could extend what the
    // mailbox is told. They belong to no field; they are dropped.
    let mut rest: &[u8] = &kept;
    while rest.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        rest = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => &rest[i + 1..],
            None => &[],
        };
    }
    w.write_all(field(value).as_bytes())?;
    w.write_all(rest)?;
    w.write_all(b"\r\n")?;
    w.write_all(body)
}

/// True when `message` carries an `X-SMIME-Gateway` field.
pub fn present(message: &[u8]) -> bool {
    let (headers, _) = mime::split(message);
    let mut found = false;
    mime::each_field(headers, |n, _| found |= n == NAME_LOWER);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_folded_line_cannot_extend_the_field() {
        let m =
            b" ; signature=valid; signer=\"CN=The Court\"\r\n\tmore\r\nSubject: x\r\n\r\nbody\r\n";
        let out = set(m, "undecryptable");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "X-SMIME-Gateway: undecryptable\r\nSubject: x\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn forged_header_is_replaced() {
        let m = b"X-SMIME-Gateway: decrypted; signature=valid\r\nSubject: x\r\n\r\nbody\r\n";
        let out = set(m, "undecryptable; reason=\"no key\"");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("X-SMIME-Gateway").count(), 1);
        assert!(text.starts_with("X-SMIME-Gateway: undecryptable"));
        assert!(text.ends_with("Subject: x\r\n\r\nbody\r\n"));
        assert_eq!(quote("a\"b\r\n"), "\"a\\\"b  \"");
    }

    #[test]
    fn long_values_are_folded_and_bounded() {
        let dn = format!(
            "CN=Evil\r\nX-Forged: yes, {}",
            "OU=abcdefghij, ".repeat(300)
        );
        let value = format!("undecryptable; reason={}", quote(&format!("no key: {dn}")));
        let m = set(b"Subject: x\r\n\r\nbody\r\n", &value);
        let text = String::from_utf8(m).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "body\r\n");
        for line in head.split("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
            assert!(!line.starts_with("X-Forged"));
        }
        assert!(head.contains(TRUNCATED));
        // Unfolding gives the value back.
        let unfolded = head.replace("\r\n ", " ");
        assert!(unfolded.starts_with(
            "X-SMIME-Gateway: undecryptable; reason=\"no key: CN=Evil  X-Forged: yes, OU="
        ));
        // A word longer than a line is cut below 998.
        let long = "x".repeat(3000);
        let f = field(&long);
        assert!(f.split("\r\n").all(|l| l.len() <= 998), "{}", f.len());
    }

    #[test]
    fn read_receipt_requests_are_removed_and_nothing_else() {
        let m = b"From: a@x\r\nDisposition-Notification-To: <spy@evil.example>\r\n\
                  Subject: s\r\nreturn-receipt-to: spy@evil.example\r\n\
                  X-Confirm-Reading-To:\r\n spy@evil.example\r\n\
                  Disposition-Notification-Options: signed-receipt-protocol=optional,pkcs7-signature\r\n\
                  \r\nbody: Disposition-Notification-To: stays\r\n";
        let out = without_receipt_requests(m).expect("had some");
        assert_eq!(
            out,
            b"From: a@x\r\nSubject: s\r\n\r\nbody: Disposition-Notification-To: stays\r\n"
        );
        assert_eq!(without_receipt_requests(b"From: a@x\r\n\r\nhi\r\n"), None);
    }

    #[test]
    fn a_message_wrapped_whole_loses_its_receipt_request_too() {
        let m = b"From: a@x\r\nContent-Type: Message/RFC822; x=y\r\n\r\n\
                  From: a@x\r\nDisposition-Notification-To: a@x\r\n\r\nhi\r\n";
        let out = without_receipt_requests(m).expect("inner request");
        let text = String::from_utf8(out).unwrap();
        assert!(!text.to_ascii_lowercase().contains("disposition"), "{text}");
        assert!(text.ends_with("From: a@x\r\n\r\nhi\r\n"), "{text}");
        // Not in a part that is not the wrapped message.
        let other = b"Content-Type: text/plain\r\n\r\nDisposition-Notification-To: a@x\r\n\r\n";
        assert_eq!(without_receipt_requests(other), None);
    }
}

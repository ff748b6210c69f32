//! The `X-SMIME-Gateway` trace header that tells the mailbox what the
//! gateway did: decrypted with which key, how the signature stands, or
//! why nothing could be done. Any such header that arrives from outside is
//! removed first, so the mailbox can trust the one it sees.

use super::mime;

pub const NAME: &str = "X-SMIME-Gateway";
const NAME_LOWER: &str = "x-smime-gateway";

/// A quoted parameter value: no CR/LF, quotes and backslashes escaped.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
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
    let stripped = strip(message);
    let mut out = Vec::with_capacity(stripped.len() + value.len() + 24);
    out.extend_from_slice(format!("{NAME}: {value}\r\n").as_bytes());
    out.extend_from_slice(&stripped);
    out
}

/// True when `message` carries an `X-SMIME-Gateway` field.
pub fn present(message: &[u8]) -> bool {
    let (headers, _) = mime::split(message);
    mime::fields(headers).iter().any(|(n, _)| n == NAME_LOWER)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

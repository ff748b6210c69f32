//! The MIME side of S/MIME: what shape a message has (enveloped, signed
//! detached or opaque, plain), the exact bytes a detached signature covers,
//! header sections taken apart and put together, CRLF normalisation and
//! base64 for output. Parsing is mail-parser's; this module only asks it
//! the questions S/MIME needs answered.

use std::borrow::Cow;

use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// What a message (or entity) is, as far as S/MIME goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `application/(x-)pkcs7-mime` holding enveloped or authEnveloped data
    /// (or a `.p7m` without smime-type); the CMS bytes, decoded.
    Enveloped {
        cms: Vec<u8>,
    },
    /// `application/(x-)pkcs7-mime; smime-type=signed-data`.
    OpaqueSigned {
        cms: Vec<u8>,
    },
    /// `multipart/signed` with a PKCS#7 signature: the exact bytes of the
    /// first part (what was signed) and the signature's CMS bytes.
    DetachedSigned {
        content: Vec<u8>,
        signature: Vec<u8>,
    },
    /// Encrypted or signed data sits inside a multipart next to other parts:
    /// never spliced back together with them.
    Mixed,
    Plain,
}

fn is_pkcs7_mime(ctype: &str, subtype: Option<&str>) -> bool {
    ctype.eq_ignore_ascii_case("application")
        && subtype.is_some_and(|s| {
            s.eq_ignore_ascii_case("pkcs7-mime") || s.eq_ignore_ascii_case("x-pkcs7-mime")
        })
}

fn is_pkcs7_signature(ctype: &str, subtype: Option<&str>) -> bool {
    ctype.eq_ignore_ascii_case("application")
        && subtype.is_some_and(|s| {
            s.eq_ignore_ascii_case("pkcs7-signature") || s.eq_ignore_ascii_case("x-pkcs7-signature")
        })
}

/// Classifies the message or entity in `raw`.
pub fn shape(raw: &[u8]) -> Shape {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Shape::Plain;
    };
    let Some(root) = msg.parts.first() else {
        return Shape::Plain;
    };
    let Some(ct) = root.content_type() else {
        return Shape::Plain;
    };
    if is_pkcs7_mime(ct.ctype(), ct.subtype()) {
        return pkcs7_mime_shape(root);
    }
    if !ct.ctype().eq_ignore_ascii_case("multipart") {
        return Shape::Plain;
    }
    let PartType::Multipart(children) = &root.body else {
        return Shape::Plain;
    };
    if ct
        .subtype()
        .is_some_and(|s| s.eq_ignore_ascii_case("signed"))
        && children.len() == 2
    {
        let first = &msg.parts[children[0] as usize];
        let second = &msg.parts[children[1] as usize];
        let sig_ok = second
            .content_type()
            .is_some_and(|c| is_pkcs7_signature(c.ctype(), c.subtype()));
        let content = raw.get(first.offset_header as usize..first.offset_end as usize);
        if let (true, Some(content)) = (sig_ok, content) {
            return Shape::DetachedSigned {
                content: content.to_vec(),
                signature: second.contents().to_vec(),
            };
        }
        return Shape::Plain;
    }
    // Any other multipart: S/MIME inside is used only when it is the one
    // and only part (the body carried as a single attachment).
    let smime_parts: Vec<u32> = children
        .iter()
        .copied()
        .filter(|&i| {
            msg.parts[i as usize]
                .content_type()
                .is_some_and(|c| is_pkcs7_mime(c.ctype(), c.subtype()))
        })
        .collect();
    match (children.len(), smime_parts.len()) {
        (_, 0) => Shape::Plain,
        (1, 1) => pkcs7_mime_shape(&msg.parts[smime_parts[0] as usize]),
        _ => Shape::Mixed,
    }
}

fn pkcs7_mime_shape(part: &mail_parser::MessagePart<'_>) -> Shape {
    let ct = part.content_type();
    let smime_type = ct
        .and_then(|c| c.attribute("smime-type"))
        .map(|s| s.to_ascii_lowercase());
    let cms = part.contents().to_vec();
    match smime_type.as_deref() {
        Some("signed-data") => Shape::OpaqueSigned { cms },
        Some("enveloped-data") | Some("authenveloped-data") => Shape::Enveloped { cms },
        // No smime-type (or an unknown one): the CMS content type decides.
        _ => match super::cms::kind(&cms) {
            Some(super::cms::Kind::Signed) => Shape::OpaqueSigned { cms },
            Some(_) => Shape::Enveloped { cms },
            None => Shape::Plain,
        },
    }
}

/// Splits a message into its header section (with the CRLF ending the last
/// field, without the blank line) and its body.
pub fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    if raw.starts_with(b"\r\n") {
        return (&[], &raw[2..]);
    }
    match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&raw[..i + 2], &raw[i + 4..]),
        None => (raw, &[]),
    }
}

/// The header fields of `headers` (each with its folded continuation
/// lines), as (lower-case name, raw bytes).
pub fn fields(headers: &[u8]) -> Vec<(String, &[u8])> {
    let mut out: Vec<(String, &[u8])> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < headers.len() {
        let line_end = headers[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| i + p + 2)
            .unwrap_or(headers.len());
        let next_is_continuation = headers
            .get(line_end)
            .is_some_and(|b| *b == b' ' || *b == b'\t');
        if !next_is_continuation {
            let field = &headers[start..line_end];
            let name = field
                .iter()
                .position(|b| *b == b':')
                .map(|c| {
                    String::from_utf8_lossy(&field[..c])
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            out.push((name, field));
            start = line_end;
        }
        i = line_end;
    }
    out
}

/// True for the fields that describe a MIME entity's content.
pub fn is_content_field(name: &str) -> bool {
    name.starts_with("content-") || name == "mime-version"
}

/// `headers` without the fields for which `drop` is true.
pub fn without(headers: &[u8], drop: impl Fn(&str) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len());
    for (name, raw) in fields(headers) {
        if !drop(&name) {
            out.extend_from_slice(raw);
        }
    }
    out
}

/// Makes every line end in CRLF (bare LF and bare CR become CRLF).
pub fn crlf(bytes: &[u8]) -> Cow<'_, [u8]> {
    let clean = bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    });
    if clean {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// base64 in lines of 76 characters, each ending in CRLF.
pub fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = Vec::with_capacity(text.len() + text.len() / 38 + 2);
    for chunk in text.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// True when a header section looks like one (first line is a field).
pub fn looks_like_headers(raw: &[u8]) -> bool {
    let first = raw.split(|b| *b == b'\n').next().unwrap_or(&[]);
    match first.iter().position(|b| *b == b':') {
        Some(c) if c > 0 => first[..c].iter().all(|b| b.is_ascii_graphic()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_signed_content_is_exact() {
        let m = b"From: a\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=\"BB\"\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n\r\n--BB\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--BB--\r\n";
        match shape(m) {
            Shape::DetachedSigned { content, signature } => {
                assert_eq!(content, b"Content-Type: text/plain\r\n\r\nhello\r\n");
                assert_eq!(signature, vec![0, 1, 2]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_fields_and_filtering() {
        let h = b"From: a\r\nSubject: x\r\n y\r\nContent-Type: text/plain;\r\n\tcharset=utf-8\r\n";
        let f = fields(h);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].0, "subject");
        assert_eq!(
            without(h, is_content_field),
            b"From: a\r\nSubject: x\r\n y\r\n"
        );
    }

    #[test]
    fn crlf_normalisation() {
        assert_eq!(&*crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert!(matches!(crlf(b"a\r\nb"), Cow::Borrowed(_)));
    }

    #[test]
    fn mixed_multipart_is_not_spliced() {
        let m = b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nattacker text\r\n--X\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--X--\r\n";
        assert_eq!(shape(m), Shape::Mixed);
    }
}

//! mail-parser's parse of a message, without the work nothing asks for.
//! mail-parser decodes every body as it parses (base64 through a
//! byte-at-a-time decoder, text through a UTF-8 check), which at 1 MiB was
//! a fifth of the gateway's CPU per message. Almost every message on the
//! S/MIME paths is one leaf entity: a base64 `application/pkcs7-mime`
//! coming in, a text part going out or just decrypted. For those:
//!
//! - [`leaf`] reads only the header section (mail-parser's own header
//!   parser, so the fields and offsets are the ones its full parse gives)
//!   and says whether the message is a single leaf entity; questions about
//!   type and name are answered from it without reading the body;
//! - [`message`] is the full parse, the same [`Message`] mail-parser
//!   returns, except that the body of a single binary leaf is decoded by
//!   `base64-simd` (strictly: anything but the alphabet, padding at the
//!   end and line breaks goes to mail-parser's decoder as before).
//!
//! Unit tests compare both with mail-parser's own parse.

use std::borrow::Cow;

use mail_parser::parsers::MessageStream;
use mail_parser::{
    Encoding, GetHeader, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders,
    PartType,
};

use crate::mail::nesting::{self, TooComplex};

/// The message in `raw` when it is one leaf entity (not multipart, not an
/// attached message): its header fields and offsets as mail-parser's full
/// parse gives them (`offset_header` 0, `offset_body` after the blank
/// line, `offset_end` the end). Its body is not read: `body` is empty
/// text. `None` when a full parse is needed to tell.
pub fn leaf(raw: &[u8]) -> Option<MessagePart<'_>> {
    // A header section too long to read is left to the full parse, which
    // refuses it (`nesting`).
    if !nesting::section_within_caps(raw) {
        return None;
    }
    let mut stream = MessageStream::new(raw);
    let mut headers = Vec::new();
    if !stream.parse_headers(&MessageParser::default(), &mut headers) || headers.is_empty() {
        return None;
    }
    let part = MessagePart {
        headers,
        is_encoding_problem: false,
        body: PartType::Text(Cow::Borrowed("")),
        encoding: Encoding::None,
        offset_header: 0,
        offset_body: u32::try_from(stream.offset()).ok()?,
        offset_end: u32::try_from(raw.len()).ok()?,
    };
    let nested = part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart") || ct.ctype().eq_ignore_ascii_case("message")
    });
    (!nested).then_some(part)
}

/// Whether `raw` is one leaf entity whose body is `content` and nothing
/// else: strict base64 of exactly those bytes (line breaks aside), or
/// those bytes unencoded. What a message holds beside its ciphertext (a
/// multipart's preamble, text after the base64) would travel in clear.
pub fn body_is_only(raw: &[u8], content: &[u8]) -> bool {
    let Some(part) = leaf(raw) else {
        return false;
    };
    let Some(body) = raw.get(part.offset_body as usize..) else {
        return false;
    };
    match part
        .headers
        .header_value(&HeaderName::ContentTransferEncoding)
    {
        Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("base64") => {
            decode_base64(body).is_some_and(|b| b == content)
        }
        Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("quoted-printable") => false,
        _ => body == content || body.strip_suffix(b"\r\n") == Some(content),
    }
}

/// True when the leaf's type could make mail-parser read it as HTML
/// (checked broadly: `text/html` in any case).
pub fn may_be_html(part: &MessagePart<'_>) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("text")
            && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("html"))
    })
}

/// mail-parser's parse of `raw` (`None` when it finds no header section);
/// a single binary leaf has its body decoded by `base64-simd`. Anything
/// but a single leaf is parsed through `mail::nesting` (an error over its
/// caps); a leaf cannot nest.
pub fn message(raw: &[u8]) -> Result<Option<Message<'_>>, TooComplex> {
    match leaf(raw) {
        Some(part) => Ok(message_from_leaf(part, raw)),
        None => nesting::parse(raw),
    }
}

/// [`message`] for a message [`leaf`] already read (one part: its full
/// parse, where one is needed, cannot nest).
pub fn message_from_leaf<'x>(part: MessagePart<'x>, raw: &'x [u8]) -> Option<Message<'x>> {
    match binary_leaf(part, raw) {
        Some(one) => Some(Message {
            attachments: vec![0],
            parts: vec![one],
            raw_message: Cow::Borrowed(raw),
            ..Default::default()
        }),
        None => MessageParser::default().parse(raw),
    }
}

/// The leaf `part` with its body, when mail-parser would read it as an
/// attachment (a type it gives no meaning to) that is base64 decodable
/// strictly, or not encoded at all.
fn binary_leaf<'x>(mut part: MessagePart<'x>, raw: &'x [u8]) -> Option<MessagePart<'x>> {
    let ct = part.content_type()?;
    let known = ["multipart", "text", "image", "audio", "video", "message"];
    if known.iter().any(|k| ct.ctype().eq_ignore_ascii_case(k)) {
        return None;
    }
    let body = raw.get(part.offset_body as usize..)?;
    let (encoding, bytes) = match part
        .headers
        .header_value(&HeaderName::ContentTransferEncoding)
    {
        Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("base64") => {
            (Encoding::Base64, Cow::Owned(decode_base64(body)?))
        }
        Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("quoted-printable") => return None,
        _ => (Encoding::None, Cow::Borrowed(body)),
    };
    part.encoding = encoding;
    part.body = PartType::Binary(bytes);
    Some(part)
}

/// `text` decoded as base64 in lines: the alphabet with canonical padding
/// at the end, in lines ending in LF or CRLF. `None` for anything else
/// (spaces, padding inside, other characters: mail-parser's lenient
/// decoder then reads it). The lines are gathered and decoded in pieces of
/// whole 4-character groups, so no compact copy of the text is made.
pub fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    /// Characters gathered before they are decoded (a multiple of 4).
    const PIECE: usize = 64 * 1024;
    let engine = &base64_simd::STANDARD;
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 3);
    let mut piece: Vec<u8> = Vec::with_capacity(PIECE + 128);
    let mut rest = text;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        piece.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        rest = rest.get(end + 1..).unwrap_or_default();
        if piece.len() >= PIECE {
            let whole = piece.len() - piece.len() % 4;
            // Padding can only end the text: more follows here.
            if piece[whole - 1] == b'=' {
                return None;
            }
            engine.decode_append(&piece[..whole], &mut out).ok()?;
            piece.drain(..whole);
        }
    }
    engine.decode_append(&piece, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::smime::mime::base64_lines;
    use base64::Engine;

    /// Messages of every kind the fast paths take or refuse.
    pub(crate) fn samples() -> Vec<Vec<u8>> {
        let der: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 256) as u8).collect();
        let b64 = base64_lines(&der);
        let b64_64: Vec<u8> = base64::engine::general_purpose::STANDARD
            .encode(&der)
            .as_bytes()
            .chunks(64)
            .flat_map(|c| [c, b"\r\n"].concat())
            .collect();
        let with = |head: &str, body: &[u8]| [head.as_bytes(), body].concat();
        let p7m = "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\n";
        let mut tabbed = b64.clone();
        tabbed.splice(10..10, *b"\t \t");
        let mut broken = b64.clone();
        broken.splice(100..100, *b"*");
        let mut dashes = b64.clone();
        dashes.splice(80..80, *b"--x\r\n");
        vec![
            with(p7m, &b64),
            with(p7m, &b64_64),
            with(p7m, &tabbed),
            with(p7m, &broken),
            with(p7m, &dashes),
            with(p7m, b"AAEC"),
            with(p7m, b"AAE=\r\n"),
            with(p7m, b"AAE\r\n"),
            with(p7m, b""),
            with(
                "Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: binary\r\n\r\n",
                &der,
            ),
            with(
                "Content-Type: Application/Octet-Stream; name=smime.p7m\r\nContent-Transfer-Encoding: BASE64\r\n\r\n",
                &b64,
            ),
            with(
                "Content-Type: application/x-pkcs7-mime\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
                b"a=3Db\r\n",
            ),
            with("Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n", &b64),
            with("Subject: x\r\n\r\n", b"plain text\r\n"),
            with("Content-Type: text/html\r\n\r\n", b"<img src=x>\r\n"),
            with("Content-Type: text/plain; name=a.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n", &b64),
            with(
                "Content-Type: multipart/mixed; boundary=B\r\n\r\n",
                b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n",
            ),
            with("Content-Type: message/rfc822\r\n\r\n", b"Subject: in\r\n\r\nbody\r\n"),
            with("Content-Type: application/pdf\n\n", b"%PDF\n"),
            b"\r\nno headers".to_vec(),
            b"Subject: no body".to_vec(),
            Vec::new(),
        ]
    }

    #[test]
    fn the_parse_is_mail_parsers() {
        let mut fast = 0;
        for raw in samples() {
            let reference = MessageParser::default().parse(&raw[..]);
            assert_eq!(
                message(&raw),
                Ok(reference.clone()),
                "{}",
                String::from_utf8_lossy(&raw)
            );
            if let Some(part) = leaf(&raw) {
                let whole = reference.expect("a leaf is a message");
                assert_eq!(whole.parts.len(), 1);
                let p = &whole.parts[0];
                assert_eq!(part.headers, p.headers);
                assert_eq!(
                    (part.offset_header, part.offset_body, part.offset_end),
                    (p.offset_header, p.offset_body, p.offset_end)
                );
                fast += usize::from(binary_leaf(part, &raw).is_some());
            }
        }
        // Positive control: the fast decoder served the base64 samples.
        assert!(fast >= 5, "{fast}");
        // Nested past the caps: refused, not parsed.
        let deep = b"Content-Type: message/rfc822\r\n\r\n".repeat(nesting::MAX_DEPTH + 1);
        assert_eq!(message(&deep), Err(TooComplex::TooDeep));
    }

    #[test]
    fn strict_base64_only() {
        assert_eq!(
            decode_base64(b"AAEC\r\nAw==\r\n").as_deref(),
            Some(&[0, 1, 2, 3][..])
        );
        assert!(decode_base64(b"AA EC\tAw==").is_none());
        // Pieces are decoded apart: the same bytes as one decode.
        let long: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(decode_base64(&base64_lines(&long)), Some(long.clone()));
        let mut padded = base64_lines(&long[..100_000]);
        padded.extend_from_slice(&base64_lines(&long[..1]));
        assert!(decode_base64(&padded).is_none(), "padding inside");
        assert!(decode_base64(b"AAEC-").is_none());
        assert!(decode_base64(b"AAE").is_none());
        assert!(decode_base64(b"AA==AAEC").is_none());
    }
}

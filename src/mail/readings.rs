//! Where mail-parser reads a message otherwise than RFC 5322 and 2045
//! do, as mail clients and the gateway's own writer read it. The gateway
//! decides from mail-parser's parse (is it signed, encrypted, HTML?) but
//! vouches, signs and rewrites by the RFC reading (`mail::section`); a
//! message that reads two ways could make it vouch for content a client
//! does not show, or leave HTML live that it took for plain text. Known
//! ways: a one-letter time zone (`Date: … Z`) makes mail-parser 0.11 read
//! the line end after it as part of the date, so it reads the next field,
//! or the body's first lines, as header fields; of a field written twice
//! mail-parser uses the last, clients the first; it decodes an encoded
//! word in a boundary and joins RFC 2231 pieces past a gap, and it splits
//! a multipart at `--boundary` anywhere, mid-line too, where RFC 2046
//! readers split only at whole delimiter lines.
//!
//! The rooms that decide from a parse ask [`structure`] (shape, signature
//! verdicts) or [`rendering`] (the EFAIL defence, which also needs every
//! part decoded cleanly and every multipart closed) and treat a message
//! that reads two ways as one they cannot read. Pure.

use mail_parser::{HeaderName, Message, MessagePart, MimeHeaders, PartType};

use super::section;

/// How a message reads two ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TwoWays {
    #[error("its header section ends elsewhere for the parser than by RFC 5322")]
    HeaderEnd,
    #[error("a {0} field is written twice, or read by one parser only")]
    Field(&'static str),
    #[error("a Content-Type parameter is given twice")]
    Parameter,
    #[error("a multipart's boundary reads two ways")]
    Boundary,
    #[error("a part's transfer encoding is broken")]
    Encoding,
    #[error("a multipart is not closed")]
    Unclosed,
}

/// Fields whose reading decides what a part is and who sent it.
const DECIDING: [(&str, HeaderName<'static>); 4] = [
    ("content-type", HeaderName::ContentType),
    (
        "content-transfer-encoding",
        HeaderName::ContentTransferEncoding,
    ),
    ("mime-version", HeaderName::MimeVersion),
    ("from", HeaderName::From),
];

/// Whether mail-parser's parse `msg` of `raw` and the RFC reading agree on
/// where each part's header section ends and on its deciding fields (each
/// at most once, and as often in both readings), in attached messages
/// too.
pub fn structure(msg: &Message<'_>, raw: &[u8]) -> Result<(), TwoWays> {
    walk(msg, raw, false)
}

/// [`structure`], and every part's transfer encoding decoded without a
/// problem and every multipart closed: what must hold before deciding
/// which parts a client renders as HTML.
pub fn rendering(msg: &Message<'_>, raw: &[u8]) -> Result<(), TwoWays> {
    walk(msg, raw, true)
}

fn walk(msg: &Message<'_>, raw: &[u8], rendering: bool) -> Result<(), TwoWays> {
    for part in &msg.parts {
        part_agrees(part, raw)?;
        // (A part without a body has a "problem" too: nothing to render.)
        if rendering && part.is_encoding_problem && part.offset_body < part.offset_end {
            return Err(TwoWays::Encoding);
        }
        match &part.body {
            PartType::Multipart(_) if rendering && !closed(part, raw) => {
                return Err(TwoWays::Unclosed)
            }
            PartType::Message(inner) => walk(inner, inner.raw_message.as_ref(), rendering)?,
            _ => {}
        }
    }
    Ok(())
}

/// [`structure`] for one part mail-parser read from `raw` (a leaf whose
/// header section alone was parsed).
pub fn part(part: &MessagePart<'_>, raw: &[u8]) -> Result<(), TwoWays> {
    part_agrees(part, raw)
}

/// One part: its header section ends where RFC 5322 ends it (at its
/// first empty line); each deciding field appears at most once, as often
/// in both readings and without control characters; no Content-Type
/// parameter but a file name is given twice; and a multipart's boundary
/// reads one way
/// and stands only on whole delimiter lines.
fn part_agrees(part: &MessagePart<'_>, raw: &[u8]) -> Result<(), TwoWays> {
    let (start, body, end) = (
        part.offset_header as usize,
        part.offset_body as usize,
        (part.offset_end as usize).min(raw.len()),
    );
    let Some(span) = raw.get(start..end.max(start)) else {
        return Err(TwoWays::HeaderEnd);
    };
    let head_len = match empty_line(span) {
        Some((at, after)) => {
            if start + after != body {
                return Err(TwoWays::HeaderEnd);
            }
            at
        }
        None => span.len(),
    };
    let mut counts = [0usize; DECIDING.len()];
    let mut controls = None;
    let mut content_type = None;
    // Lines may end in LF alone (as mail-parser also reads them).
    let head = super::lines::crlf(&span[..head_len]);
    section::each_field(&head, |name, field| {
        if let Some(i) = DECIDING.iter().position(|(n, _)| *n == name) {
            counts[i] += 1;
            // A NUL or other control ends the value for some readers only.
            let control = |b: &u8| (*b < 0x20 && !b"\r\n\t".contains(b)) || *b == 0x7f;
            if field.iter().any(control) {
                controls.get_or_insert(DECIDING[i].0);
            }
            if i == 0 {
                content_type = Some(field);
            }
        }
    });
    if let Some(name) = controls {
        return Err(TwoWays::Field(name));
    }
    for (i, (name, header)) in DECIDING.iter().enumerate() {
        let parsed = part.headers.iter().filter(|h| h.name == *header).count();
        if counts[i] > 1 || parsed != counts[i] {
            return Err(TwoWays::Field(name));
        }
    }
    // `boundary` twice: mail-parser splits at the first, others the last.
    // A file name given plainly and in RFC 2231 form (`name="a.pdf";
    // name*=UTF-8''%C3%A6.pdf`, the fallback RFC 6266 recommends) only
    // names a file: whichever reading a client takes, the rooms that
    // decide by name take every one (`file_names`), and ciphertext is
    // known by its content too (`smime::mime`). One pass, so thousands of
    // parameters cost their number, not its square.
    let params = part.content_type().and_then(|ct| ct.attributes.as_deref());
    if let Some(params) = params {
        let mut seen = std::collections::HashSet::with_capacity(params.len());
        let twice = params
            .iter()
            .filter(|a| !a.name.eq_ignore_ascii_case("name"))
            .any(|a| !seen.insert(a.name.to_ascii_lowercase()));
        if twice {
            return Err(TwoWays::Parameter);
        }
    }
    // The type itself: `type/subtype` of tokens, as mail-parser read it.
    // (Thunderbird keeps what follows a `?` in it, mail-parser reads a
    // `(` as a comment: `text/plain(?text/html` is HTML to one only.)
    if let Some(field) = content_type {
        if !same_type(field, part) {
            return Err(TwoWays::Field("content-type"));
        }
    }
    // A multipart's parts are where its boundary says: the one RFC 2045
    // reading of it must be the one mail-parser split at, and mail-parser
    // must split only where RFC 2046 does (it takes `--boundary` anywhere,
    // mid-line too, for a delimiter).
    let parsed_multipart = matches!(part.body, PartType::Multipart(_));
    if parsed_multipart && !delimiters_on_lines(part, raw) {
        return Err(TwoWays::Boundary);
    }
    let raw = content_type.map(strict_multipart).unwrap_or(Ok(None));
    match raw {
        Ok(None) if !parsed_multipart => Ok(()),
        Ok(Some(boundary))
            if parsed_multipart
                && part.content_type().and_then(|ct| ct.attribute("boundary"))
                    == Some(boundary.as_str()) =>
        {
            Ok(())
        }
        _ => Err(TwoWays::Boundary),
    }
}

/// Whether the raw Content-Type `field` starts with `type/subtype` made
/// of RFC 2045 tokens (up to `;` or white space) equal to the type
/// mail-parser read for `part`.
fn same_type(field: &[u8], part: &MessagePart<'_>) -> bool {
    let text = String::from_utf8_lossy(field).replace("\r\n", "");
    let value = text.split_once(':').map(|(_, v)| v).unwrap_or_default();
    let value = value.trim_start_matches([' ', '\t']);
    let end = value.find([';', ' ', '\t']).unwrap_or(value.len());
    let Some((ctype, subtype)) = value[..end].split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c))
    };
    let Some(parsed) = part.content_type() else {
        return false;
    };
    token(ctype)
        && token(subtype)
        && parsed.ctype().eq_ignore_ascii_case(ctype)
        && parsed
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
}

/// The boundary of a raw Content-Type field when it names a multipart
/// (`None` when it does not), read strictly by RFC 2045: parameters are
/// tokens or quoted strings separated by `;`, and `boundary` is given
/// once, plainly (no RFC 2231 form, no encoded word), not empty. An error
/// for a multipart whose parameters read otherwise: readers differ on it
/// (an unquoted `b c`, continuations with a gap, an encoded word decoded
/// by one reader only).
fn strict_multipart(field: &[u8]) -> Result<Option<String>, ()> {
    let text = String::from_utf8_lossy(field).replace("\r\n", "");
    let value = text.split_once(':').map(|(_, v)| v).unwrap_or_default();
    let wsp: &[char] = &[' ', '\t'];
    let mut rest = value.trim_start_matches(wsp);
    let end = rest.find([';', ' ', '\t', '(']).unwrap_or(rest.len());
    let is_multipart = rest[..end]
        .split('/')
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("multipart"));
    if !is_multipart {
        return Ok(None);
    }
    rest = &rest[end..];
    let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c);
    let mut boundary = None;
    loop {
        rest = rest.trim_start_matches(wsp);
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix(';').ok_or(())?.trim_start_matches(wsp);
        // An empty parameter (`;;`) is read alike by all.
        if rest.is_empty() || rest.starts_with(';') {
            continue;
        }
        let eq = rest.find('=').ok_or(())?;
        let name = rest[..eq].trim_end_matches(wsp);
        if name.is_empty() || !name.chars().all(|c| token(c) || c == '*') {
            return Err(());
        }
        rest = rest[eq + 1..].trim_start_matches(wsp);
        let value = match rest.strip_prefix('"') {
            Some(quoted) => {
                let mut v = String::new();
                let mut chars = quoted.char_indices();
                let mut close = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => v.push(chars.next().ok_or(())?.1),
                        '"' => {
                            close = Some(i + 1);
                            break;
                        }
                        c => v.push(c),
                    }
                }
                rest = &quoted[close.ok_or(())?..];
                v
            }
            // Unquoted: up to `;` or a space, as readers take it, and
            // `/`, `=` or `.` inside (`type=multipart/alternative`,
            // `boundary=----=_Part_1.2`) are read alike; a quote or a
            // comment inside is not.
            None => {
                let end = rest.find([';', ' ', '\t']).unwrap_or(rest.len());
                let v = rest[..end].to_string();
                if v.contains(['"', '(', ')', '\\']) {
                    return Err(());
                }
                rest = &rest[end..];
                v
            }
        };
        let name = name.to_ascii_lowercase();
        if name.starts_with("boundary") {
            if name != "boundary" || boundary.is_some() || value.is_empty() || value.contains("=?")
            {
                return Err(());
            }
            boundary = Some(value);
        }
    }
    boundary.map(Some).ok_or(())
}

/// The first empty line of `span`: where it starts (the header section's
/// length, its last line end included) and where the body after it
/// starts. LF alone ends a line too, as mail-parser reads it.
fn empty_line(span: &[u8]) -> Option<(usize, usize)> {
    let mut at = 0;
    loop {
        let rest = span.get(at..)?;
        if rest.starts_with(b"\r\n") {
            return Some((at, at + 2));
        }
        if rest.starts_with(b"\n") {
            return Some((at, at + 1));
        }
        at += memchr::memchr(b'\n', rest)? + 1;
    }
}

/// Whether every `--boundary` in a multipart's body is a whole RFC 2046
/// delimiter line: at a line start, then `--` or nothing, then only
/// spaces or tabs to the line end.
fn delimiters_on_lines(part: &MessagePart<'_>, raw: &[u8]) -> bool {
    let Some((boundary, body)) = boundary_and_body(part, raw) else {
        return false;
    };
    let dash = format!("--{boundary}");
    memchr::memmem::find_iter(body, dash.as_bytes()).all(|i| {
        let at_line_start = i == 0 || body[i - 1] == b'\n';
        let rest = &body[i + dash.len()..];
        let rest = rest.strip_prefix(b"--").unwrap_or(rest);
        let pad = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        let rest = &rest[pad..];
        at_line_start && (rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n"))
    })
}

/// A multipart's boundary as mail-parser read it, and its body in `raw`.
fn boundary_and_body<'a>(part: &'a MessagePart<'_>, raw: &'a [u8]) -> Option<(&'a str, &'a [u8])> {
    let boundary = part.content_type()?.attribute("boundary")?;
    let end = (part.offset_end as usize).min(raw.len());
    Some((boundary, raw.get(part.offset_body as usize..end)?))
}

/// Whether a multipart's body holds its closing delimiter line.
fn closed(part: &MessagePart<'_>, raw: &[u8]) -> bool {
    let Some((boundary, body)) = boundary_and_body(part, raw) else {
        return false;
    };
    let close = format!("--{boundary}--");
    memchr::memmem::find_iter(body, close.as_bytes()).any(|i| i == 0 || body[i - 1] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    fn check(raw: &[u8], rendering_too: bool) -> Result<(), TwoWays> {
        let msg = MessageParser::default().parse(raw).expect("parsed");
        if rendering_too {
            rendering(&msg, raw)
        } else {
            structure(&msg, raw)
        }
    }

    #[test]
    fn plain_and_multipart_mail_reads_one_way() {
        let plain = b"From: a@x\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\n\
                      Subject: s\r\n\r\nbody\r\n";
        assert_eq!(check(plain, true), Ok(()));
        let multi = b"From: a@x\r\nMIME-Version: 1.0\r\n\
                      Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                      --b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n\
                      --b\r\nContent-Type: text/plain\r\n\r\ny\r\n--b--\r\n";
        assert_eq!(check(multi, true), Ok(()));
        let lf = b"From: a@x\nContent-Type: text/plain\n\nbody\n";
        assert_eq!(check(lf, true), Ok(()));
        let no_body = b"From: a@x\r\nSubject: s\r\n";
        assert_eq!(check(no_body, true), Ok(()));
    }

    #[test]
    fn a_one_letter_zone_moves_the_header_end() {
        // The last field: mail-parser reads the body's lines as fields.
        let m = b"From: ceo@x\r\nDate: Mon, 30 Nov 2026 12:00:00 Z\r\n\r\n\
                  From: bob@x\r\n\r\nbody\r\n";
        assert_eq!(check(m, false), Err(TwoWays::HeaderEnd));
        // Not the last: the next field is swallowed by the date.
        let m = b"Date: Mon, 30 Nov 2026 12:00:00 Z\r\nFrom: ceo@x\r\n\r\nbody\r\n";
        assert_eq!(check(m, false), Err(TwoWays::Field("from")));
        // In a part: its Content-Type is swallowed.
        let m = b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                  --b\r\nResent-Date: Mon, 30 Nov 2026 12:00:00 Z\r\n\
                  Content-Type: text/html\r\n\r\n<img src=x>\r\n--b--\r\n";
        assert_eq!(check(m, false), Err(TwoWays::Field("content-type")));
    }

    #[test]
    fn fields_written_twice_read_two_ways() {
        let m = b"Content-Type: multipart/mixed; boundary=\"E\"\r\n\
                  Content-Type: text/plain\r\n\r\nx\r\n";
        assert_eq!(check(m, false), Err(TwoWays::Field("content-type")));
        let m = b"From: a@x\r\nFrom: b@y\r\n\r\nx\r\n";
        assert_eq!(check(m, false), Err(TwoWays::Field("from")));
        let m = b"Content-Type: multipart/mixed; boundary=\"a\"; Boundary=\"b\"\r\n\r\n\
                  --b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--b--\r\n";
        assert_eq!(check(m, false), Err(TwoWays::Parameter));
        // A file name plainly and in RFC 2231 form: one file.
        let m = b"Content-Type: application/pdf; name=\"aebler.pdf\"; name*=UTF-8''%C3%A6bler.pdf\r\n\r\nx\r\n";
        assert_eq!(check(m, false), Ok(()));
        // Whichever of them names S/MIME content: the rooms that decide by
        // name take every reading (`file_names`).
        for m in [
            &b"Content-Type: application/octet-stream; name=\"a.pdf\"; name*=UTF-8''smime.p7m\r\n\r\nx\r\n"[..],
            b"Content-Type: application/octet-stream; name=\"a.pdf\"; name*0=\"smime.\"; name*1=\"p7m\"\r\n\r\nx\r\n",
            b"Content-Type: application/octet-stream; name=smime.p7m\r\n\
              Content-Disposition: attachment; filename=\"scan.pdf\"\r\n\r\nx\r\n",
        ] {
            assert_eq!(check(m, false), Ok(()));
        }
        let m = b"Content-Type: text/plain; charset=utf-8; charset=iso-8859-1\r\n\r\nx\r\n";
        assert_eq!(check(m, false), Err(TwoWays::Parameter));
        let m = b"Content-Type: text/plain; Charset=utf-8; charset=iso-8859-1\r\n\r\nx\r\n";
        assert_eq!(check(m, false), Err(TwoWays::Parameter));
        // Names given in both fields: one way.
        let m = b"Content-Type: application/pkcs7-mime; name=smime.p7m\r\n\
                  Content-Disposition: attachment; filename=\"mail.p7m\"\r\n\r\nx\r\n";
        assert_eq!(check(m, false), Ok(()));
        let m = b"Content-Type: application/pdf; name*0=\"a\"; name*1=\".pdf\"\r\n\
                  Content-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nx\r\n";
        assert_eq!(check(m, false), Ok(()));
    }

    #[test]
    fn a_boundary_reads_one_way_or_the_multipart_is_refused() {
        let with = |ct: &str| {
            format!(
                "Content-Type: {ct}\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n\
                 --b--\r\n"
            )
            .into_bytes()
        };
        for ok in [
            "multipart/mixed; boundary=\"b\"",
            "multipart/mixed; boundary=b",
            "Multipart/Mixed;\r\n boundary=\"b\";",
            "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=b",
            "multipart/related; type=multipart/alternative;; boundary=b",
            "multipart/signed; protocol=application/pkcs7-signature; ; boundary=b",
        ] {
            assert_eq!(check(&with(ok), true), Ok(()), "{ok}");
        }
        for two_ways in [
            "multipart/mixed; boundary=\"=?us-ascii?q?b?=\"",
            "multipart/mixed; boundary=b c",
            "multipart/mixed; boundary*0=\"b\"; boundary*2=\"c\"",
            "multipart/mixed; boundary=\"\"; boundary=\"b\"",
            "multipart/mixed",
            "multipart/mixed; boundary=\"b\" (comment)",
        ] {
            assert_eq!(
                check(&with(two_ways), false),
                Err(TwoWays::Boundary),
                "{two_ways}"
            );
        }
        // mail-parser splits at `--b` mid-line; RFC 2046 readers do not.
        for mid_line in [
            "hello x--b--\r\n--b\r\nContent-Type: text/html\r\n\r\n<img src=x>\r\n--b--\r\n",
            "hello\r\n--bX-Junk: 1\r\nContent-Type: text/html\r\n\r\n<img src=x>\r\n--b--\r\n",
        ] {
            let m = format!(
                "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
                 Content-Type: text/plain\r\n\r\n{mid_line}"
            );
            assert_eq!(
                check(m.as_bytes(), false),
                Err(TwoWays::Boundary),
                "{mid_line}"
            );
        }
        // Control: padding after a delimiter is allowed.
        let padded = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b \t\r\n\
                       Content-Type: text/plain\r\n\r\nx\r\n--b--\r\n";
        assert_eq!(check(padded, true), Ok(()));
        // A type one reader cuts at `?` and the other at `(`.
        for odd in [
            "text/plain(?text/html;)",
            "application/octet-stream(?text/html",
            "text/plain(?multipart/mixed; boundary=\"b\"",
            "text/ plain",
            "text",
        ] {
            let m = format!("Content-Type: {odd}\r\n\r\n<img src=x>\r\n");
            assert_eq!(
                check(m.as_bytes(), false),
                Err(TwoWays::Field("content-type")),
                "{odd}"
            );
        }
        let fine = b"Content-Type:\r\n text/HTML ;charset=utf-8 (c)\r\n\r\n<p>x</p>\r\n";
        assert_eq!(check(fine, true), Ok(()));
        // A NUL ends the type for some readers.
        let nul = b"Content-Type: text/plain\0html\r\n\r\n<p>x</p>\r\n";
        assert_eq!(check(nul, false), Err(TwoWays::Field("content-type")));
    }

    #[test]
    fn rendering_also_needs_clean_encodings_and_closed_multiparts() {
        let unclosed = b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                         --b\r\nContent-Type: text/html\r\n\r\n<img src=x>\r\n";
        assert_eq!(check(unclosed, false), Ok(()));
        assert_eq!(check(unclosed, true), Err(TwoWays::Unclosed));
        let b64 = b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                    PGltZyBzcmM9eD4!\r\n";
        assert_eq!(check(b64, false), Ok(()));
        assert_eq!(check(b64, true), Err(TwoWays::Encoding));
        // An attached message is read the same way.
        let nested = b"Content-Type: message/rfc822\r\n\r\n\
                       Content-Type: text/html\r\nContent-Type: text/plain\r\n\r\nx\r\n";
        assert_eq!(check(nested, false), Err(TwoWays::Field("content-type")));
    }
}

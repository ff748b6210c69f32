//! Outgoing protection: a detached `multipart/signed` (SHA-256; RSASSA-
//! PKCS1-v1_5 or RSASSA-PSS; signer certificate and chain included;
//! SMIMECapabilities announced), then `application/pkcs7-mime` enveloped
//! data for the recipients. The signed entity is made 7-bit safe first, so
//! no later hop has to re-encode it and break the signature (all but what
//! a signature of the sender's own covers, which must stay as it is).

use std::borrow::Cow;

use crate::mail::nesting::{self, TooComplex};
use mail_parser::{MimeHeaders, PartType};
use openssl::x509::X509;

use super::cms::short;
use super::mime;
use super::unwrap::{content_parts, spill_enveloped};
use super::SmimeError;
use crate::blob::{write_all, Blob, InMemory, Spill};
use crate::config::{Encryption, SignatureScheme};
use crate::mail::lines;
use crate::ossl;
use crate::pki::Identity;

/// Signs (with `signer`, around any signature the sender made) and/or
/// encrypts (when `recipients` is not empty) `message`, keeping its outer
/// header fields.
pub fn protect(
    message: &[u8],
    signer: Option<(&Identity, SignatureScheme)>,
    recipients: &[X509],
    encryption: Encryption,
) -> Result<Vec<u8>, SmimeError> {
    protect_into(message, signer, recipients, encryption, &InMemory).map(|b| b.to_vec())
}

/// As [`protect`], the steps' products written to `spill` (scratch files
/// for a large message, where the encryption is streamed).
pub fn protect_into(
    message: &[u8],
    signer: Option<(&Identity, SignatureScheme)>,
    recipients: &[X509],
    encryption: Encryption,
    spill: &dyn Spill,
) -> Result<Blob, SmimeError> {
    let scratch = |e: std::io::Error| SmimeError::Scratch(e.to_string());
    let converted;
    let message: &[u8] = if lines::is_crlf(message) {
        message
    } else {
        converted = spill
            .spill(&mut |w| lines::write_crlf(message, w))
            .map_err(scratch)?;
        &converted
    };
    // A message the sender signed already is signed again, around it: the
    // sender's signature is not checked here, so only the organisation's
    // own can stand for what the decision promised (a rule's `sign =
    // "required"`), and the log's "signed" stays true.
    let signed_blob;
    let signed: &[u8] = match signer {
        Some((id, scheme)) => {
            signed_blob = sign_into(message, id, scheme, spill)?;
            &signed_blob
        }
        _ => message,
    };
    if recipients.is_empty() {
        return spill
            .spill_sized(signed.len(), &mut |w| w.write_all(signed))
            .map_err(scratch);
    }
    spill_enveloped(signed, None, recipients, encryption, spill)
}

/// `message` as a detached `multipart/signed` message signed by `id`.
pub fn sign(message: &[u8], id: &Identity, scheme: SignatureScheme) -> Result<Vec<u8>, SmimeError> {
    sign_into(message, id, scheme, &InMemory).map(|b| b.to_vec())
}

/// As [`sign`], the entity and the signed message written to `spill`.
fn sign_into(
    message: &[u8],
    id: &Identity,
    scheme: SignatureScheme,
    spill: &dyn Spill,
) -> Result<Blob, SmimeError> {
    let scratch = |e: std::io::Error| SmimeError::Scratch(e.to_string());
    let (head, body) = content_parts(message);
    // A 7-bit body needs no part re-encoded (every part's body lies in
    // it): the entity is signed and written from its two pieces, never
    // joined. Otherwise it is joined, and re-encoded where needed.
    let content;
    let reencoded;
    let entity: [&[u8]; 2] = if seven_bit_clean(body) {
        [&head, body]
    } else {
        content = spill
            .spill_sized(head.len() + body.len(), &mut |w| {
                write_all(w, &[&head, body])
            })
            .map_err(scratch)?;
        reencoded = seven_bit(&content)?;
        [&reencoded, &[]]
    };
    let pss = scheme == SignatureScheme::Pss;
    let der = ossl::sign_detached(&id.cert, &id.key, &id.chain, &entity, pss)
        .map_err(|e| SmimeError::Sign(short(&e)))?;

    let boundary = format!("----=_smimegw_{}", uuid::Uuid::new_v4().simple());
    let (headers, _) = mime::split(message);
    let outer = mime::without(headers, mime::is_content_field);
    let top = format!(
        "MIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r\n\
         \tmicalg=sha-256; boundary=\"{boundary}\"\r\n\r\n\
         This is an S/MIME signed message.\r\n\r\n--{boundary}\r\n"
    );
    let signature = format!(
        "\r\n--{boundary}\r\n\
         Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n"
    );
    let end = format!("\r\n--{boundary}--\r\n");
    let sig_lines = mime::base64_lines(&der);
    let expected = outer.len()
        + top.len()
        + entity[0].len()
        + entity[1].len()
        + signature.len()
        + sig_lines.len()
        + end.len();
    spill
        .spill_sized(expected, &mut |w| {
            write_all(
                w,
                &[
                    &outer,
                    top.as_bytes(),
                    entity[0],
                    entity[1],
                    signature.as_bytes(),
                    &sig_lines,
                    end.as_bytes(),
                ],
            )
        })
        .map_err(scratch)
}

/// True when `body` is ASCII in lines of at most 998 octets (plus CRLF):
/// nothing in it needs re-encoding.
fn seven_bit_clean(body: &[u8]) -> bool {
    body.is_ascii() && {
        let mut start = 0;
        memchr::memchr_iter(b'\n', body)
            .chain(std::iter::once(body.len()))
            .all(|end| {
                let short = end - start <= 999;
                start = end + 1;
                short
            })
    }
}

/// `entity` with every leaf part whose body is 8-bit or has lines over
/// 998 octets re-encoded as base64, so no later hop converts (and breaks)
/// what was signed. Parts in base64 or quoted-printable, and everything
/// already 7-bit, are left byte for byte; so is everything a signature
/// of the sender's own covers (inside a `multipart/signed`: re-encoded,
/// it would no longer verify). A text part that gave no charset and is
/// UTF-8 is labelled so as it is re-encoded (a client reading the 8-bit
/// text guessed; read from base64 it takes the label). An entity nested
/// too deep to be parsed (`mail::nesting`) is an error: it is not signed.
fn seven_bit(entity: &[u8]) -> Result<Cow<'_, [u8]>, TooComplex> {
    // One leaf entity (most mail): its header section and offsets are all
    // that is read here, so its body is not decoded.
    let parts = match super::parse::leaf(entity) {
        Some(part) => vec![part],
        None => match nesting::parse(entity)? {
            Some(msg) => msg.parts,
            None => return Ok(Cow::Borrowed(entity)),
        },
    };
    let clean = seven_bit_clean;
    let signed = signed_by_the_sender(&parts);
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) || signed[i] {
            continue;
        }
        let (h, b, e) = (
            part.offset_header as usize,
            part.offset_body as usize,
            part.offset_end as usize,
        );
        let (Some(headers), Some(body)) = (entity.get(h..b), entity.get(b..e)) else {
            continue;
        };
        let encoded = part.content_transfer_encoding().is_some_and(|c| {
            c.eq_ignore_ascii_case("base64") || c.eq_ignore_ascii_case("quoted-printable")
        });
        if encoded || clean(body) {
            continue;
        }
        let (fields, _) = mime::split(headers);
        let unlabelled = match part.content_type() {
            None => Some(b"Content-Type: text/plain; charset=utf-8\r\n".to_vec()),
            Some(ct)
                if ct.ctype().eq_ignore_ascii_case("text") && ct.attribute("charset").is_none() =>
            {
                let field = mime::fields(fields)
                    .into_iter()
                    .find(|(n, _)| n == "content-type")
                    .map(|(_, f)| f.to_vec());
                field.map(|mut f| {
                    let end = f.len()
                        - f.iter()
                            .rev()
                            .take_while(|b| b.is_ascii_whitespace())
                            .count();
                    f.truncate(end);
                    f.extend_from_slice(b"; charset=utf-8\r\n");
                    f
                })
            }
            Some(_) => None,
        }
        .filter(|_| std::str::from_utf8(body).is_ok());
        let mut new = mime::without(fields, |n| {
            n == "content-transfer-encoding" || (unlabelled.is_some() && n == "content-type")
        });
        if let Some(label) = &unlabelled {
            new.extend_from_slice(label);
        }
        new.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        let mut b64 = mime::base64_lines(body);
        if e < entity.len() {
            // The CRLF before the next boundary belongs to the delimiter.
            b64.truncate(b64.len().saturating_sub(2));
        }
        new.extend_from_slice(&b64);
        edits.push((h, e, new));
    }
    if edits.is_empty() {
        return Ok(Cow::Borrowed(entity));
    }
    let mut out = entity.to_vec();
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (start, end, new) in edits {
        out.splice(start..end, new);
    }
    Ok(Cow::Owned(out))
}

/// For each of `parts`, whether a `multipart/signed` of the sender's
/// holds it (its signature covers the bytes as they are).
fn signed_by_the_sender(parts: &[mail_parser::MessagePart<'_>]) -> Vec<bool> {
    let mut signed = vec![false; parts.len()];
    let mut stack: Vec<usize> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("multipart")
                    && ct
                        .subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case("signed"))
            })
        })
        .map(|(i, _)| i)
        .collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut signed[i], true) {
            continue;
        }
        if let Some(PartType::Multipart(children)) = parts.get(i).map(|p| &p.body) {
            stack.extend(children.iter().map(|c| *c as usize));
        }
    }
    signed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_entity_whether_joined_or_not() {
        use crate::smime::cms::{verify, Math};
        let id = crate::pki::testkit::identity(2048, "Sign Parts").unwrap();
        let head = b"From: a@example-law.dk\r\nSubject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
        // 7-bit (signed from its pieces) and 8-bit (joined, re-encoded).
        for (body, kept) in [
            (&b"hello\r\n"[..], true),
            ("bl\u{e5}b\u{e6}r\r\n".as_bytes(), false),
        ] {
            let msg = [&head[..], body].concat();
            for scheme in [SignatureScheme::Pkcs1, SignatureScheme::Pss] {
                let signed = sign(&msg, &id, scheme).unwrap();
                let mime::Shape::DetachedSigned { content, signature } = mime::shape(&signed)
                else {
                    panic!("not signed: {}", String::from_utf8_lossy(&signed));
                };
                assert!(content.starts_with(b"Content-Type: text/plain; charset=utf-8\r\n"));
                assert_eq!(content.ends_with(body), kept, "{content:?}");
                let v = verify(
                    &signature,
                    Some(&content),
                    std::slice::from_ref(&id.cert),
                    &[],
                    0,
                );
                assert_eq!(v.math, Math::Valid, "{scheme:?}");
                // Positive control: other content does not verify.
                let v = verify(
                    &signature,
                    Some(b"other"),
                    std::slice::from_ref(&id.cert),
                    &[],
                    0,
                );
                assert!(matches!(v.math, Math::Invalid(_)));
            }
        }
    }

    #[test]
    fn eight_bit_parts_are_reencoded_inside_multiparts() {
        let m = b"Content-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n--BB\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nbl\xc3\xa5b\xc3\xa6r\r\n--BB\r\nContent-Type: text/plain\r\n\r\nascii\r\n--BB--\r\n";
        let out = seven_bit(m).unwrap();
        assert!(
            out.iter().all(|b| *b < 0x80),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("Content-Transfer-Encoding: base64\r\n\r\nYmzDpWLDpnI=\r\n--BB"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: text/plain\r\n\r\nascii\r\n--BB--"),
            "{text}"
        );
        let parsed = mail_parser::MessageParser::default()
            .parse(&out[..])
            .unwrap();
        assert_eq!(parsed.body_text(0).unwrap(), "blåbær");
        // Already 7-bit: untouched.
        let plain = b"Content-Type: text/plain\r\n\r\nhello\r\n";
        assert_eq!(&*seven_bit(plain).unwrap(), &plain[..]);
    }

    #[test]
    fn what_the_senders_own_signature_covers_is_left_as_it_is() {
        let inner = b"Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nbl\xc3\xa5b\xc3\xa6rgr\xc3\xb8d\r\n";
        let mut m = b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"S\"\r\n\r\n--S\r\n".to_vec();
        m.extend_from_slice(inner);
        m.extend_from_slice(b"\r\n--S\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--S--\r\n");
        assert_eq!(&*seven_bit(&m).unwrap(), &m[..]);
        // Beside it, in a mixed multipart, an 8-bit part is still re-encoded.
        let mut mixed = b"Content-Type: multipart/mixed; boundary=\"M\"\r\n\r\n--M\r\n".to_vec();
        mixed.extend_from_slice(&m);
        mixed.extend_from_slice(b"--M\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xc3\xa6\r\n--M--\r\n");
        let out = seven_bit(&mixed).unwrap();
        assert!(out.windows(inner.len()).any(|w| w == inner));
        assert!(String::from_utf8_lossy(&out).contains("base64\r\n\r\nw6Y=\r\n--M--"));
    }

    #[test]
    fn unlabelled_utf8_text_is_labelled_as_it_is_reencoded() {
        for (m, want) in [
            (
                &b"\r\nHej bl\xc3\xa5b\xc3\xa6r\r\n"[..],
                "Content-Type: text/plain; charset=utf-8\r\n",
            ),
            (
                &b"Content-Type: text/plain; format=flowed\r\n\r\nHej bl\xc3\xa5b\xc3\xa6r\r\n"[..],
                "Content-Type: text/plain; format=flowed; charset=utf-8\r\n",
            ),
        ] {
            let out = seven_bit(m).unwrap();
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains(want), "{text}");
            let parsed = mail_parser::MessageParser::default()
                .parse(&out[..])
                .unwrap();
            assert_eq!(
                parsed.body_text(0).unwrap().trim_end(),
                "Hej blåbær",
                "{text}"
            );
        }
        // A charset given, or bytes that are not UTF-8: the label stays.
        let latin = b"Content-Type: text/plain\r\n\r\nbl\xe5\r\n";
        let out = seven_bit(latin).unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("charset"));
        let given = b"Content-Type: text/plain; charset=windows-1252\r\n\r\nbl\xe5\r\n";
        let out = seven_bit(given).unwrap();
        assert!(String::from_utf8_lossy(&out)
            .contains("charset=windows-1252\r\nContent-Transfer-Encoding: base64"));
    }

    #[test]
    fn an_entity_nested_too_deep_to_read_is_not_signed() {
        use crate::mail::nesting::{TooComplex, MAX_DEPTH};
        let id = crate::pki::testkit::identity(2048, "Sign Deep").unwrap();
        // 8-bit: its parts would be re-encoded, so it must be parsed.
        let deep = |levels: usize| {
            let mut m = b"From: a@example-law.dk\r\n".to_vec();
            m.extend(b"Content-Type: message/rfc822\r\n\r\n".repeat(levels));
            m.extend_from_slice("Subject: x\r\n\r\nbl\u{e5}b\u{e6}r\r\n".as_bytes());
            m
        };
        assert!(matches!(
            sign(&deep(MAX_DEPTH + 1), &id, SignatureScheme::Pkcs1),
            Err(SmimeError::Unreadable(TooComplex::TooDeep))
        ));
        // Positive control: three levels are signed.
        assert!(sign(&deep(3), &id, SignatureScheme::Pkcs1).is_ok());
    }
}

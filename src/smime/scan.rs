//! What a message holds, at any depth, that decides how its failures may
//! be reported and whether its decrypted HTML can be trusted: encrypted
//! content anywhere inside (also inside an opaque signature, a signed part
//! or an attached message), and whether any of it was encrypted without
//! integrity (CBC or 3DES rather than AuthEnvelopedData).
//!
//! The scan never decrypts and never checks a signature: it looks only at
//! what the sender can see too, so its answer cannot depend on a key or on
//! whether a ciphertext is intact. It is deliberately broader than what
//! unwrap opens: anything that claims to be S/MIME and is not plainly a
//! signature over plain content counts as encrypted.

use mail_parser::{Message, PartType};
use openssl::cms::CMSOptions;

use super::cms::{kind, Kind};

/// How deep signatures and attached messages are followed: as deep as a
/// message is parsed at all, as the shape's walk follows them (a plain
/// message nested deeper than the scan went was sent under the gateway's
/// return path with nothing said, review 22).
const MAX_DEPTH: usize = crate::mail::nesting::MAX_DEPTH;
/// How many MIME parts are looked at in all (bounded cost).
const MAX_PARTS: usize = 2000;
/// How many signatures' contents are taken out within one another (each
/// holds a copy of its content while the scan is inside it: 33 opaque
/// signatures around 30 MB held 33 copies, review 25). Unwrap opens
/// [`super::limits::MAX_LAYERS`] layers and reports the next; content
/// deeper is assumed the worst. Side by side they cost no more than the
/// message's size: not counted (a cap on them labelled 17 signed
/// attachments ciphertext, review 26).
const MAX_CMS_DEPTH: usize = super::limits::MAX_LAYERS + 1;

/// What is left of the scan's bounds as it goes.
struct Walk {
    parts: usize,
}

impl Walk {
    fn new() -> Self {
        Walk { parts: MAX_PARTS }
    }
}

/// What is assumed of content the scan cannot follow.
const WORST: Seen = Seen {
    encrypted: true,
    without_integrity: true,
};

/// What the scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Some content is (or claims to be) encrypted.
    pub encrypted: bool,
    /// Some encrypted content has no integrity protection (EnvelopedData:
    /// CBC or 3DES), or cannot be told apart from such content.
    pub without_integrity: bool,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.encrypted |= other.encrypted;
        self.without_integrity |= other.without_integrity;
    }
}

/// Scans the message or entity in `raw`.
pub fn scan(raw: &[u8]) -> Seen {
    scan_at(raw, 0, 0, &mut Walk::new())
}

/// Scans the message in `raw` and reads its shape
/// ([`super::mime::shape`]), from one parse.
pub fn scan_and_shape(raw: &[u8]) -> (Seen, super::mime::Shape) {
    let msg = match super::mime::parse_for_smime(raw) {
        Ok(Some(msg)) => msg,
        Ok(None) => return hidden(raw, Seen::default(), super::mime::Shape::Plain),
        // Not read: what it holds is unknown, so assume the worst.
        Err(e) => return (WORST, super::mime::Shape::Unreadable(e)),
    };
    let mut seen = Seen::default();
    scan_message(&msg, 0, 0, &mut Walk::new(), &mut seen);
    let shape = super::mime::shape_taken(msg, raw);
    // What unwrap will open is never less than what the scan saw.
    if let super::mime::Shape::Enveloped { cms } = &shape {
        seen.add(Seen {
            encrypted: true,
            without_integrity: !with_integrity(cms),
        });
    }
    hidden(raw, seen, shape)
}

/// The scan and shape of `raw` once its bytes are asked too: ciphertext
/// the walk did not count (a client reading the message otherwise may
/// show and open it, `evidence`) makes the message one holding encrypted
/// content not opened, whatever its shape said; nothing in it is opened
/// or vouched for.
fn hidden(raw: &[u8], seen: Seen, shape: super::mime::Shape) -> (Seen, super::mime::Shape) {
    // Counted: ciphertext the walk found, in a shape unwrap opens or
    // reports (a signature's content is looked at again once checked).
    let counted = seen.encrypted && reports_ciphertext(&shape);
    if counted || !seen.encrypted && !super::evidence::holds_ciphertext(raw) {
        return (seen, shape);
    }
    // Ciphertext the scan saw (or the bytes hold) in a shape that would
    // report none: said so, never unlabelled plain mail (review 22).
    (WORST, not_opened(&shape))
}

/// The shape of an entity inside a layer taken off (decrypted content, or
/// what a signature signs): [`super::mime::shape`], with its bytes asked
/// too as in [`scan_and_shape`]. A signature's content is asked in turn
/// when it is taken out.
pub fn shape_inside(raw: &[u8]) -> super::mime::Shape {
    let shape = super::mime::shape(raw);
    if reports_ciphertext(&shape) || !super::evidence::holds_ciphertext(raw) {
        return shape;
    }
    not_opened(&shape)
}

/// Whether unwrap opens or reports ciphertext in a message of `shape`
/// (a signature's content is looked at again once checked).
fn reports_ciphertext(shape: &super::mime::Shape) -> bool {
    match shape {
        super::mime::Shape::Plain => false,
        super::mime::Shape::Mixed(n) => n.encrypted > 0,
        _ => true,
    }
}

/// A message with ciphertext in no part the walk reads: reported as
/// holding encrypted content not opened (and whatever signatures its
/// shape had, not checked).
fn not_opened(shape: &super::mime::Shape) -> super::mime::Shape {
    use super::mime::Shape;
    let signed = match shape {
        Shape::Mixed(n) => n.signed,
        Shape::OpaqueSigned { .. } | Shape::DetachedSigned { .. } => 1,
        _ => 0,
    };
    Shape::Mixed(super::mime::Nested {
        encrypted: 1,
        signed,
        container: String::new(),
        hidden: true,
    })
}

/// Whether encrypted CMS bytes protect their content's integrity:
/// AuthEnvelopedData with a tag of at least RFC 5084's 12 octets (OpenSSL
/// would accept down to 4). EnvelopedData (CBC, 3DES) and anything
/// unreadable do not.
pub fn with_integrity(der: &[u8]) -> bool {
    matches!(kind(der), Some(Kind::AuthEnveloped))
        && super::limits::auth_mac_len(der).is_some_and(|n| n >= super::limits::MIN_MAC_LEN)
}

/// `layers`: how many signatures' contents `raw` is inside.
fn scan_at(raw: &[u8], depth: usize, layers: usize, walk: &mut Walk) -> Seen {
    let mut seen = Seen::default();
    if depth > MAX_DEPTH {
        // Too deep to follow: assume the worst.
        return Seen {
            encrypted: true,
            without_integrity: true,
        };
    }
    let msg = match super::mime::parse_for_smime(raw) {
        Ok(Some(msg)) => msg,
        Ok(None) => return with_bytes(raw, seen),
        Err(_) => return WORST,
    };
    scan_message(&msg, depth, layers, walk, &mut seen);
    with_bytes(raw, seen)
}

/// `seen`, or the worst when it saw no ciphertext and the bytes of the
/// entity it was read from hold some (`evidence`): a signature's content
/// or an attached message hiding ciphertext from the walk (review 22: a
/// copy said "not opened" but went under the attacker's return path).
fn with_bytes(raw: &[u8], seen: Seen) -> Seen {
    if !seen.encrypted && super::evidence::holds_ciphertext(raw) {
        return WORST;
    }
    seen
}

fn scan_message(msg: &Message<'_>, depth: usize, layers: usize, walk: &mut Walk, seen: &mut Seen) {
    for part in &msg.parts {
        if walk.parts == 0 {
            seen.add(Seen {
                encrypted: true,
                without_integrity: true,
            });
            return;
        }
        walk.parts -= 1;
        if let PartType::Message(inner) = &part.body {
            if depth < MAX_DEPTH {
                let mut inside = Seen::default();
                scan_message(inner, depth + 1, layers, walk, &mut inside);
                seen.add(with_bytes(attached_bytes(msg, part, inner), inside));
            } else {
                seen.add(Seen {
                    encrypted: true,
                    without_integrity: true,
                });
            }
            continue;
        }
        let raw = msg.raw_message.as_ref();
        if super::mime::is_news(part) {
            // An attached message to a client (`mime::is_news`).
            seen.add(scan_at(part.contents(), depth + 1, layers, walk));
            continue;
        }
        if super::mime::claims_smime_content(part, raw) {
            // The CMS as the walk reads it (base64 text inside undone;
            // DER as it is, not copied).
            let contents = part.contents();
            let der = match contents.first() {
                Some(0x30) => std::borrow::Cow::Borrowed(contents),
                _ => std::borrow::Cow::Owned(super::mime::cms_bytes(part)),
            };
            seen.add(cms_content(&der, depth, layers, walk));
        } else if super::mime::disguised_cms(part, raw).is_some() {
            // Not opened, whatever it holds.
            seen.add(WORST);
        }
    }
}

/// The bytes of the message attached as `part` of `msg` (parsed as
/// `inner`): the decoded copy mail-parser made of an encoded one, else its
/// span of `msg`'s bytes (mail-parser lends an attached message the whole
/// outer message's bytes, which other parts' ciphertext is in too).
fn attached_bytes<'a>(
    msg: &'a Message<'_>,
    part: &mail_parser::MessagePart<'_>,
    inner: &'a Message<'_>,
) -> &'a [u8] {
    let (outer, own) = (msg.raw_message.as_ref(), inner.raw_message.as_ref());
    if !std::ptr::eq(own.as_ptr(), outer.as_ptr()) {
        return own;
    }
    let end = (part.offset_end as usize).min(outer.len());
    outer
        .get(part.offset_body as usize..end)
        .unwrap_or_default()
}

/// What CMS bytes hold: encrypted data, or a signature whose content is
/// scanned in turn. Anything unreadable counts as encrypted without
/// integrity (unwrap would try it, or fail on it, like a ciphertext).
fn cms_content(der: &[u8], depth: usize, layers: usize, walk: &mut Walk) -> Seen {
    let worst = Seen {
        encrypted: true,
        without_integrity: true,
    };
    match kind(der) {
        Some(Kind::AuthEnveloped) => Seen {
            encrypted: true,
            without_integrity: !with_integrity(der),
        },
        // Signed data without content inside (a certificates-only
        // bundle, a detached signature) holds nothing encrypted, as the
        // walk reads it too.
        Some(Kind::Signed) if !super::cms::signed_content_inside(der) => Seen::default(),
        Some(Kind::Signed) if layers >= MAX_CMS_DEPTH => worst,
        Some(Kind::Signed) => match signed_content(der) {
            Some(content) => scan_at(&content, depth + 1, layers + 1, walk),
            None => worst,
        },
        _ => worst,
    }
}

/// The content of the opaque signature `entity` is (an
/// `application/pkcs7-mime` entity of signed data), taken out without
/// checking it: what a client shows beneath it, for the signing decision
/// (`mail::headers::shown_beside_from`).
pub fn opaque_content(entity: &[u8]) -> Option<Vec<u8>> {
    match super::mime::shape(entity) {
        super::mime::Shape::OpaqueSigned { cms } => signed_content(&cms),
        _ => None,
    }
}

/// The content of an opaque signature, taken out without checking the
/// signature (the scan must not depend on whether it holds).
fn signed_content(der: &[u8]) -> Option<Vec<u8>> {
    let mut cms = super::cms::parse(der).ok()?;
    let mut out = Vec::new();
    let flags = CMSOptions::BINARY | CMSOptions::NOVERIFY | CMSOptions::NOSIGS;
    cms.verify(None, None, None, Some(&mut out), flags).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smime::mime::base64_lines;
    use openssl::cms::CmsContentInfo;
    use openssl::stack::Stack;
    use openssl::symm::Cipher;

    fn enveloped(id: &crate::pki::Identity, cipher: Cipher) -> Vec<u8> {
        let mut certs = Stack::new().unwrap();
        certs.push(id.cert.clone()).unwrap();
        let inner = b"Content-Type: text/plain\r\n\r\nsecret\r\n";
        if cipher == Cipher::aes_256_gcm() {
            crate::ossl::encrypt_oaep(std::slice::from_ref(&id.cert), inner, cipher)
                .unwrap()
                .to_der()
                .unwrap()
        } else {
            CmsContentInfo::encrypt(&certs, inner, cipher, CMSOptions::BINARY)
                .unwrap()
                .to_der()
                .unwrap()
        }
    }

    fn entity(ctype: &str, der: &[u8]) -> Vec<u8> {
        let mut m = format!("Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n\r\n")
            .into_bytes();
        m.extend_from_slice(&base64_lines(der));
        m
    }

    #[test]
    fn one_parse_gives_the_same_scan_and_shape() {
        let id = crate::pki::testkit::identity(1024, "Scan Shape").unwrap();
        let env = entity(
            "application/pkcs7-mime; smime-type=enveloped-data",
            &enveloped(&id, Cipher::aes_256_cbc()),
        );
        for raw in [&env[..], b"Subject: x\r\n\r\nplain\r\n", b""] {
            let (seen, shape) = scan_and_shape(raw);
            assert_eq!(seen, scan(raw));
            assert_eq!(shape, crate::smime::mime::shape(raw));
        }
        // Positive control: the enveloped entity is seen and shaped as such.
        assert!(scan_and_shape(&env).0.encrypted);
    }

    #[test]
    fn the_lean_parse_answers_as_the_full_one() {
        let id = crate::pki::testkit::identity(1024, "Scan Lean").unwrap();
        let der = enveloped(&id, Cipher::aes_256_cbc());
        let mut raws = crate::smime::parse::tests::samples();
        raws.push(entity(
            "application/pkcs7-mime; smime-type=enveloped-data",
            &der,
        ));
        raws.push(entity("application/octet-stream; name=\"x.p7c\"", &der));
        raws.push(entity("text/plain; name=\"x.p7m\"", &der));
        let mut encrypted = 0;
        for raw in &raws {
            let reference = mail_parser::MessageParser::default()
                .parse(&raw[..])
                .map(|msg| {
                    let mut seen = Seen::default();
                    scan_message(&msg, 0, 0, &mut Walk::new(), &mut seen);
                    hidden(raw, seen, crate::smime::mime::shape_parsed(&msg, raw))
                })
                .unwrap_or_else(|| hidden(raw, Seen::default(), crate::smime::mime::Shape::Plain));
            let got = scan_and_shape(raw);
            assert_eq!(got, reference, "{}", String::from_utf8_lossy(raw));
            assert_eq!(got.0, scan(raw));
            // The shape alone, unless the scan's answer or the bytes
            // made it one holding ciphertext not opened.
            if !matches!(&got.1, crate::smime::mime::Shape::Mixed(n) if n.hidden) {
                assert_eq!(got.1, crate::smime::mime::shape(raw));
            }
            encrypted += usize::from(got.0.encrypted);
        }
        // Positive control: the enveloped entities were seen.
        assert!(encrypted >= 3, "{encrypted}");
    }

    #[test]
    fn everything_unwrap_would_open_is_seen_as_encrypted() {
        // Fuzz-like: every way of naming an S/MIME part that unwrap
        // accepts; the scan must say "encrypted" for each one the shape
        // calls enveloped (else the plaintext's bounces go to the sender).
        let id = crate::pki::testkit::identity(1024, "Scan Names").unwrap();
        let der = enveloped(&id, Cipher::aes_256_cbc());
        let mut raws = crate::smime::parse::tests::samples();
        let mut opened = 0;
        for (ctype, disposition) in [
            ("application/octet-stream; name=\"smime.p7c\"", ""),
            ("application/octet-stream; name=\"SMIME.P7C \"", ""),
            (
                "application/octet-stream; name=\"smime.p7m\"",
                "Content-Disposition: attachment; filename=\"scan.pdf\"\r\n",
            ),
            (
                "application/octet-stream; name=\"scan.pdf\"",
                "Content-Disposition: attachment; filename=\"smime.p7m\"\r\n",
            ),
            (
                "application/octet-stream",
                "Content-Disposition: attachment; filename=\"x.p7c\"\r\n",
            ),
            ("application/x-pkcs7-mime", ""),
        ] {
            let mut m = format!(
                "Content-Type: {ctype}\r\n{disposition}Content-Transfer-Encoding: base64\r\n\r\n"
            )
            .into_bytes();
            m.extend_from_slice(&base64_lines(&der));
            raws.push(m);
        }
        for raw in &raws {
            let enveloped = matches!(
                crate::smime::mime::shape(raw),
                crate::smime::mime::Shape::Enveloped { .. }
            );
            opened += usize::from(enveloped);
            if enveloped {
                let seen = scan(raw);
                assert!(
                    seen.encrypted && seen.without_integrity,
                    "{seen:?}: {}",
                    String::from_utf8_lossy(&raw[..raw.len().min(200)])
                );
                assert_eq!(scan_and_shape(raw).0, seen);
            }
        }
        // Positive control: the six named forms are all opened.
        assert!(opened >= 6, "{opened}");
    }

    #[test]
    fn a_short_tag_is_no_integrity() {
        let id = crate::pki::testkit::identity(1024, "Scan Tag").unwrap();
        let der = enveloped(&id, Cipher::aes_256_gcm());
        assert_eq!(crate::smime::limits::auth_mac_len(&der), Some(16));
        let seen = |der: &[u8]| {
            scan(&entity(
                "application/pkcs7-mime; smime-type=authEnveloped-data",
                der,
            ))
        };
        // Control: OpenSSL's 16-octet tag counts as integrity.
        assert!(!seen(&der).without_integrity);
        // The same structure with the MAC cut to 4 octets (lengths
        // rewritten; every length in OpenSSL's DER here is long-form or
        // short-form, adjusted from the outside in).
        let short = crate::smime::limits::tests::with_mac_len(&der, 4);
        assert_eq!(crate::smime::limits::auth_mac_len(&short), Some(4));
        assert!(seen(&short).without_integrity);
    }

    #[test]
    fn plain_and_signed_plain_mail_hold_no_encryption() {
        assert_eq!(
            scan(b"Subject: x\r\nContent-Type: text/plain\r\n\r\nhello\r\n"),
            Seen::default()
        );
        let m = b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--B--\r\n";
        assert_eq!(scan(m), Seen::default());
    }

    #[test]
    fn encryption_is_found_at_any_depth() {
        let id = crate::pki::testkit::identity(2048, "Scan").unwrap();
        let cbc = entity(
            "application/pkcs7-mime; smime-type=enveloped-data",
            &enveloped(&id, Cipher::aes_256_cbc()),
        );
        let gcm = entity(
            "application/pkcs7-mime; smime-type=authEnveloped-data",
            &enveloped(&id, Cipher::aes_256_gcm()),
        );
        assert_eq!(
            scan(&cbc),
            Seen {
                encrypted: true,
                without_integrity: true
            }
        );
        assert_eq!(
            scan(&gcm),
            Seen {
                encrypted: true,
                without_integrity: false
            }
        );
        // Inside a signed part, inside a mixed multipart.
        let mut signed = b"Content-Type: multipart/mixed; boundary=O\r\n\r\n--O\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--O\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=B\r\n\r\n--B\r\n".to_vec();
        signed.extend_from_slice(&cbc);
        signed.extend_from_slice(b"\r\n--B\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--B--\r\n\r\n--O--\r\n");
        assert!(scan(&signed).encrypted);
        // As an attached message.
        let mut attached =
            b"Content-Type: multipart/mixed; boundary=O\r\n\r\n--O\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n"
                .to_vec();
        attached.extend_from_slice(&gcm);
        attached.extend_from_slice(b"\r\n--O--\r\n");
        assert!(scan(&attached).encrypted);
        // Named like one, typed as anything.
        let named = entity(
            "application/octet-stream; name=\"smime.p7m\"",
            &enveloped(&id, Cipher::des_ede3_cbc()),
        );
        assert!(scan(&named).without_integrity);
        // Unreadable "S/MIME" counts as encrypted.
        assert!(scan(&entity("application/pkcs7-mime", b"\x30\x03junk")).encrypted);
    }

    #[test]
    fn ciphertext_the_walk_does_not_meet_is_known_by_its_bytes() {
        use crate::smime::mime::{shape, Shape};
        let id = crate::pki::testkit::identity(1024, "Scan Hidden").unwrap();
        let pk = entity(
            "application/pkcs7-mime; smime-type=enveloped-data",
            &enveloped(&id, Cipher::aes_256_cbc()),
        );
        // In a preamble, which mail-parser skips.
        let mut m = b"Content-Type: multipart/mixed; boundary=P\r\n\r\n".to_vec();
        m.extend_from_slice(&pk);
        m.extend_from_slice(b"\r\n--P\r\nContent-Type: text/plain\r\n\r\nhi\r\n--P--\r\n");
        assert_eq!(shape(&m), Shape::Plain, "the walk alone finds nothing");
        let (seen, shape) = scan_and_shape(&m);
        assert_eq!(seen, WORST);
        assert!(
            matches!(&shape, Shape::Mixed(n) if n.hidden && n.encrypted == 1),
            "{shape:?}"
        );
        assert_eq!(scan(&m), WORST);
        // Control: ciphertext the walk counts is not counted twice, and
        // plain mail stays plain.
        let (seen, shape) = scan_and_shape(&pk);
        assert!(seen.encrypted);
        assert!(matches!(shape, Shape::Enveloped { .. }), "{shape:?}");
        let plain = b"Content-Type: text/plain\r\n\r\nsmime.p7m, pkcs7\r\n";
        assert_eq!(scan_and_shape(plain), (Seen::default(), Shape::Plain));
    }

    #[test]
    fn a_plain_attached_message_beside_ciphertext_with_integrity_adds_nothing() {
        let id = crate::pki::testkit::identity(2048, "Scan Attached").unwrap();
        let gcm = entity(
            "application/pkcs7-mime; smime-type=authEnveloped-data",
            &enveloped(&id, Cipher::aes_256_gcm()),
        );
        let mut m = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n".to_vec();
        m.extend_from_slice(&gcm);
        m.extend_from_slice(
            b"\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nplain\r\n--b--\r\n",
        );
        let seen = scan(&m);
        assert!(seen.encrypted);
        // The attached message's own bytes hold no ciphertext: the GCM
        // part beside it is not counted again, as without integrity.
        assert!(!seen.without_integrity, "{seen:?}");
    }

    #[test]
    fn certificate_bundles_and_signatures_as_text_hold_nothing_encrypted() {
        use crate::smime::mime::Shape;
        let id = crate::pki::testkit::identity(1024, "Scan Bundle").unwrap();
        // A certificates-only bundle: signed data without content.
        let mut certs = openssl::stack::Stack::new().unwrap();
        certs.push(id.cert.clone()).unwrap();
        let bundle = openssl::pkcs7::Pkcs7::sign(
            &id.cert,
            &id.key,
            &certs,
            b"",
            openssl::pkcs7::Pkcs7Flags::DETACHED | openssl::pkcs7::Pkcs7Flags::NOSIGS,
        )
        .map(|p| p.to_der().unwrap());
        let bundle = bundle.unwrap();
        for ct in [
            "application/pkcs7-mime; smime-type=certs-only; name=\"smime.p7c\"",
            "application/octet-stream; name=\"chain.p7c\"",
        ] {
            let (seen, _) = scan_and_shape(&entity(ct, &bundle));
            assert!(!seen.encrypted, "{ct}");
        }
        // Signed data written as base64 text inside a base64 .p7m (as
        // Italian e-invoices are): signed, not encrypted.
        let signed = crate::pki::testkit::signed(&id, b"<xml/>").unwrap();
        let text = base64_lines(&signed);
        let (seen, shape) = scan_and_shape(&entity(
            "application/pkcs7-mime; name=\"fattura.xml.p7m\"",
            &text,
        ));
        assert!(!seen.encrypted);
        assert!(matches!(shape, Shape::OpaqueSigned { .. }), "{shape:?}");
        // PEM-armoured, likewise.
        let pem = [
            &b"-----BEGIN PKCS7-----\r\n"[..],
            &base64_lines(&signed),
            b"-----END PKCS7-----\r\n",
        ]
        .concat();
        let (seen, shape) = scan_and_shape(&entity(
            "application/octet-stream; name=\"doc.pdf.p7m\"",
            &pem,
        ));
        assert!(!seen.encrypted);
        assert!(matches!(shape, Shape::OpaqueSigned { .. }), "{shape:?}");
    }

    #[test]
    fn opaque_signature_around_encryption_is_followed() {
        let id = crate::pki::testkit::identity(2048, "Scan").unwrap();
        let cbc = entity(
            "application/pkcs7-mime; smime-type=enveloped-data",
            &enveloped(&id, Cipher::aes_256_cbc()),
        );
        let sign = |content: &[u8]| crate::pki::testkit::signed(&id, content).unwrap();
        let opaque = entity(
            "application/pkcs7-mime; smime-type=signed-data",
            &sign(&cbc),
        );
        assert!(scan(&opaque).encrypted);
        let plain = entity(
            "application/pkcs7-mime; smime-type=signed-data",
            &sign(b"Content-Type: text/plain\r\n\r\nhello\r\n"),
        );
        assert!(!scan(&plain).encrypted);
    }

    #[test]
    fn opaque_signatures_are_followed_only_as_deep_as_unwrap_reads_them() {
        // Review 25: each level held a copy of its content (33 levels
        // around 30 MB took 1.2 GB).
        let id = crate::pki::testkit::identity(2048, "Scan").unwrap();
        let opaque = |content: &[u8]| {
            entity(
                "application/pkcs7-mime; smime-type=signed-data",
                &crate::pki::testkit::signed(&id, content).unwrap(),
            )
        };
        let nested = |levels: usize| {
            let mut m = b"Content-Type: text/plain\r\n\r\nhello\r\n".to_vec();
            for _ in 0..levels {
                m = opaque(&m);
            }
            m
        };
        assert_eq!(scan(&nested(MAX_CMS_DEPTH)), Seen::default());
        assert_eq!(scan(&nested(MAX_CMS_DEPTH + 1)), WORST);
        // Side by side, however many (review 26: 17 were labelled
        // ciphertext).
        let beside = |n: usize| {
            let one = nested(1);
            let mut m = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
            for _ in 0..n {
                m.extend_from_slice(b"--b\r\n");
                m.extend_from_slice(&one);
            }
            m.extend_from_slice(b"--b--\r\n");
            m
        };
        assert_eq!(scan(&beside(40)), Seen::default());
    }

    #[test]
    fn a_message_nested_too_deep_is_not_parsed_and_assumed_the_worst() {
        use crate::mail::nesting::{TooComplex, MAX_DEPTH};
        use crate::smime::mime::{shape, Shape};
        let deep = |levels: usize| {
            let mut m = b"Content-Type: message/rfc822\r\n\r\n".repeat(levels);
            m.extend_from_slice(b"Subject: x\r\n\r\nend\r\n");
            m
        };
        let over = deep(MAX_DEPTH + 1);
        let (seen, s) = scan_and_shape(&over);
        assert_eq!(s, Shape::Unreadable(TooComplex::TooDeep));
        assert_eq!(s, shape(&over));
        assert_eq!(seen, WORST);
        assert_eq!(scan(&over), WORST);
        // Positive control: five levels are read (plain).
        assert_eq!(scan_and_shape(&deep(5)), (Seen::default(), Shape::Plain));
    }
}

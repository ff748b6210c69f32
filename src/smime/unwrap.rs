//! Taking S/MIME layers off a message: decrypt with the identity the
//! RecipientInfo names (among the candidates given, in order), verify
//! signatures, and go on until plain content, a signature that should stay
//! intact for the mailbox, or a failure. The result is a clean message: the
//! outer header fields (From, To, Subject, Date, Message-ID...) with the
//! decrypted entity's own Content-* fields and body, never spliced into
//! anything the sender wrapped around it.

use openssl::x509::X509;

use super::cms::{self, SigStatus};
use super::mime::{self, Shape};
use super::{header, SmimeError};
use crate::ossl;
use crate::pki::oces::Generation;
use crate::pki::Identity;

/// Most layers taken off one message.
const MAX_LAYERS: usize = 6;

/// The key that decrypted a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsed {
    pub subject_cn: String,
    pub generation: Generation,
}

/// What verification of the (first) signature found.
#[derive(Debug, Clone)]
pub struct SignatureReport {
    pub status: SigStatus,
    pub signer: Option<String>,
    pub detail: Option<String>,
    /// The signer's certificate (harvested when the signature is valid).
    pub cert: Option<X509>,
    /// The algorithms the signer announced it can decrypt.
    pub capabilities: Vec<String>,
    /// The signing time the signature claims (Unix seconds), if any.
    pub signing_time: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub key: Option<KeyUsed>,
    pub signature: Option<SignatureReport>,
}

impl Report {
    /// The trace header value for a message this report describes.
    pub fn header_value(&self) -> Option<String> {
        let mut parts = Vec::new();
        match &self.key {
            Some(k) => {
                parts.push("decrypted".to_string());
                parts.push(format!(
                    "key={}",
                    header::quote(&format!("CN={}", k.subject_cn))
                ));
                parts.push(format!("generation={}", k.generation));
            }
            None if self.signature.is_some() => parts.push("signed".to_string()),
            None => return None,
        }
        if let Some(s) = &self.signature {
            parts.push(format!("signature={}", s.status));
            if let Some(signer) = &s.signer {
                parts.push(format!("signer={}", header::quote(signer)));
            }
            if let Some(detail) = &s.detail {
                parts.push(format!("detail={}", header::quote(detail)));
            }
        }
        Some(parts.join("; "))
    }
}

/// What unwrapping did.
#[derive(Debug)]
pub enum Unwrapped {
    /// Layers were taken off: the clean message.
    Opened { message: Vec<u8>, report: Report },
    /// Nothing to take off (plain, or signed only and kept intact).
    Unchanged { report: Report },
    /// Encrypted, but it could not be opened; the error is safe to show
    /// the mailbox (it never reaches the sender).
    Failed { error: SmimeError },
}

/// Unwraps `message` for a recipient whose candidate keys are `keys`
/// (most specific first), verifying signatures against `anchors` as of
/// their signing time (or `now`).
pub fn unwrap(message: &[u8], keys: &[&Identity], anchors: &[X509], now: i64) -> Unwrapped {
    let mut report = Report::default();
    let mut entity: Vec<u8> = message.to_vec();
    let mut opened = false;
    for _ in 0..MAX_LAYERS {
        match mime::shape(&entity) {
            Shape::Enveloped { cms } => match open(&cms, keys) {
                Ok((inner, key)) => {
                    report.key.get_or_insert(key);
                    entity = mime::crlf(&inner).into_owned();
                    opened = true;
                }
                Err(error) => return Unwrapped::Failed { error },
            },
            Shape::OpaqueSigned { cms } => {
                let v = cms::verify(&cms, None, anchors, now);
                let content = v.content.clone();
                record(&mut report, v);
                match content {
                    Some(c) if matches!(mime::shape(&c), Shape::Enveloped { .. }) => {
                        entity = mime::crlf(&c).into_owned();
                        opened = true;
                    }
                    _ => break,
                }
            }
            Shape::DetachedSigned { content, signature } => {
                let v = cms::verify(&signature, Some(&content), anchors, now);
                record(&mut report, v);
                if matches!(mime::shape(&content), Shape::Enveloped { .. }) {
                    entity = content;
                    opened = true;
                } else {
                    break;
                }
            }
            Shape::Mixed | Shape::Plain => break,
        }
    }
    if !opened {
        return Unwrapped::Unchanged { report };
    }
    Unwrapped::Opened {
        message: rebuild(message, &entity),
        report,
    }
}

fn record(report: &mut Report, v: cms::Verified) {
    if report.signature.is_none() {
        report.signature = Some(SignatureReport {
            status: v.status,
            signer: v.signer.as_ref().map(|c| cms::subject(c)),
            detail: v.detail,
            cert: v.signer,
            capabilities: v.capabilities,
            signing_time: v.signing_time,
        });
    }
}

/// Decrypts with the first candidate the CMS names as a recipient.
fn open(der: &[u8], keys: &[&Identity]) -> Result<(Vec<u8>, KeyUsed), SmimeError> {
    let cms = cms::parse(der)?;
    let Some(id) = keys.iter().find(|id| ossl::is_recipient(&cms, &id.cert)) else {
        let named: Vec<String> = ossl::recipients(&cms)
            .iter()
            .take(4)
            .map(|r| r.to_string())
            .collect();
        return Err(SmimeError::NoKey(if named.is_empty() {
            "no recipients".into()
        } else {
            named.join("; ")
        }));
    };
    let inner = cms::decrypt(&cms, &id.key, &id.cert).map_err(|e| match e {
        SmimeError::Decrypt(why) => SmimeError::Decrypt(format!(
            "with key {}: {why}",
            header::quote(&id.info.subject_cn)
        )),
        other => other,
    })?;
    Ok((
        inner,
        KeyUsed {
            subject_cn: id.info.subject_cn.clone(),
            generation: id.info.generation,
        },
    ))
}

/// The outer header fields of `original` (without Content-*, MIME-Version
/// and any trace header) followed by `entity`'s Content-* fields and body.
fn rebuild(original: &[u8], entity: &[u8]) -> Vec<u8> {
    let (outer, _) = mime::split(original);
    let outer = mime::without(outer, |n| {
        mime::is_content_field(n) || n == "x-smime-gateway"
    });
    let (inner_headers, body) = if mime::looks_like_headers(entity) {
        mime::split(entity)
    } else {
        (&[][..], entity)
    };
    let content = mime::without(inner_headers, |n| {
        !mime::is_content_field(n) || n == "mime-version"
    });
    let mut out = Vec::with_capacity(outer.len() + entity.len() + 32);
    out.extend_from_slice(&outer);
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    out.extend_from_slice(&content);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The Content-* entity of a clean message (what re-encryption wraps).
pub fn content_entity(message: &[u8]) -> Vec<u8> {
    let (headers, body) = mime::split(message);
    let content = mime::without(headers, |n| {
        !mime::is_content_field(n) || n == "mime-version"
    });
    let mut out = content;
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A message whose body is `cms` (enveloped data), with the outer fields
/// of `message`.
pub fn enveloped_message(message: &[u8], cms: &[u8]) -> Vec<u8> {
    let (headers, _) = mime::split(message);
    let outer = mime::without(headers, mime::is_content_field);
    let mut out = outer;
    out.extend_from_slice(
        b"MIME-Version: 1.0\r\n\
          Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n\
          Content-Transfer-Encoding: base64\r\n\
          Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\r\n",
    );
    out.extend_from_slice(&mime::base64_lines(cms));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::cms::{CMSOptions, CmsContentInfo};
    use openssl::stack::Stack;
    use openssl::symm::Cipher;

    fn identity() -> Identity {
        crate::pki::testkit::identity(2048, "Unit Test").unwrap()
    }

    fn message(id: &Identity) -> Vec<u8> {
        let mut certs = Stack::new().unwrap();
        certs.push(id.cert.clone()).unwrap();
        let inner = b"Content-Type: text/plain\r\n\r\nsecret\r\n";
        let cms = CmsContentInfo::encrypt(&certs, inner, Cipher::aes_256_cbc(), CMSOptions::BINARY)
            .unwrap()
            .to_der()
            .unwrap();
        let mut m = b"From: a@b\r\nSubject: s\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        m.extend_from_slice(&mime::base64_lines(&cms));
        m
    }

    #[test]
    fn opens_and_rebuilds_cleanly() {
        let id = identity();
        let m = message(&id);
        match unwrap(&m, &[&id], &[], 0) {
            Unwrapped::Opened { message, report } => {
                assert_eq!(
                    message,
                    b"From: a@b\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nsecret\r\n"
                );
                assert_eq!(report.key.unwrap().subject_cn, "Unit Test");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Mangled input of every kind ends as a clean failure or an unchanged
    /// message, never a panic (the fuzz target does this at scale).
    #[test]
    fn mangled_input_never_panics() {
        let id = identity();
        let m = message(&id);
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let body_start = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut opened = 0;
        for round in 0..400 {
            let mut x = m.clone();
            match round % 4 {
                0 => {
                    let i = body_start + (next() as usize % (x.len() - body_start));
                    x[i] = b"ABCDxyz+/=\r\n."[next() as usize % 13];
                }
                1 => x.truncate(body_start + (next() as usize % (x.len() - body_start))),
                2 => {
                    let i = next() as usize % x.len();
                    x[i] ^= 1 << (next() % 8);
                }
                _ => {
                    let i = next() as usize % x.len();
                    let j = next() as usize % x.len();
                    let (a, b) = (i.min(j), i.max(j));
                    x.drain(a..b);
                }
            }
            if let Unwrapped::Opened { .. } = unwrap(&x, &[&id], &[], 0) {
                opened += 1;
            }
        }
        // Some mutations hit only padding or line breaks: the key path ran.
        assert!(opened > 0);
    }
}

//! Taking S/MIME layers off a message, whatever their order (signed over
//! signed over encrypted, encrypted then signed, ...), to a bounded depth:
//! decrypt with the identity the RecipientInfo names (among the candidates
//! given, in order), verify every signature on the way, and stop at plain
//! content. Every layer is reported, outermost first. The mailbox gets the
//! content below the innermost encryption (signatures inside it stay
//! intact for the mail client), as a clean message: the outer header
//! fields (From, To, Subject, Date, Message-ID...) with the decrypted
//! entity's own Content-* fields and body, never spliced into anything the
//! sender wrapped around it.
//!
//! The report holds facts (signer identifiers and certificates, chains,
//! claimed times); the caller adds what needs the world (revocation, the
//! relation to From) and [`Report::header_value`] states the verdicts in
//! the grammar the README documents under "Inbound S/MIME".
//!
//! Why long: the layer walk, the report with its header grammar, and the
//! rebuild of the clean message belong together; their tests follow.

use std::io::Write;

use openssl::x509::X509;

use super::cms::{self, Chain, Math};
use super::mime::{self, Nested, Shape};
use super::{header, SmimeError};
use crate::blob::{write_all, Blob, InMemory, Spill};
use crate::ossl;
use crate::pki::oces::Generation;
use crate::pki::signer::{Relation, SignerRevocation};
use crate::pki::Identity;

pub use super::limits::MAX_LAYERS;

/// The key that decrypted a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsed {
    pub subject_cn: String,
    pub generation: Generation,
    /// SHA-256 fingerprint of the identity's certificate (the journal
    /// records which key incoming mail was encrypted to).
    pub fingerprint: String,
}

/// The verdict on one signature, as the mailbox is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Content matches, chain to an anchor now, not revoked, and the
    /// signer is From (or its domain, or its organisation).
    Valid,
    /// All of that, but the signer is someone other than From.
    SignerDiffers,
    /// The content does not match the signature.
    Invalid,
    /// The signer's certificate is neither in the signature nor held by
    /// the gateway: nothing is known about the content.
    UnknownSigner,
    /// No chain to a trust anchor.
    Untrusted,
    /// The signer's certificate is revoked.
    Revoked,
    /// The signer's certificate (or its CA's) is past its validity now,
    /// whatever signing time the signature claims.
    Expired,
}

impl Verdict {
    /// The token in the trace header (and the metric label).
    pub fn token(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::SignerDiffers => "signer-differs",
            Verdict::Invalid => "invalid",
            Verdict::UnknownSigner => "unknown-signer",
            Verdict::Untrusted => "untrusted",
            Verdict::Revoked => "revoked",
            Verdict::Expired => "expired",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.token())
    }
}

/// One signature: what verification found, and what the caller added.
#[derive(Debug, Clone)]
pub struct SignatureReport {
    pub verified: cms::Verified,
    /// The signer's certificate subject, for people.
    pub signer: Option<String>,
    /// How the signer relates to the header From (set by the caller).
    pub relation: Option<Relation>,
    /// The signer certificate's revocation (set by the caller).
    pub revocation: Option<SignerRevocation>,
}

impl SignatureReport {
    /// The verdict from the facts: the mathematics, the chain now, the
    /// revocation and the relation to From, in that order.
    pub fn verdict(&self) -> Verdict {
        match (&self.verified.math, &self.verified.chain) {
            (Math::Invalid(_), _) => Verdict::Invalid,
            (Math::UnknownSigner, _) => Verdict::UnknownSigner,
            (Math::Valid, Chain::Expired(_)) => Verdict::Expired,
            (Math::Valid, Chain::Untrusted(_) | Chain::NotChecked) => Verdict::Untrusted,
            (Math::Valid, Chain::Trusted) => {
                if matches!(self.revocation, Some(SignerRevocation::Revoked(_))) {
                    Verdict::Revoked
                } else if matches!(self.relation, Some(Relation::Differs) | None) {
                    Verdict::SignerDiffers
                } else {
                    Verdict::Valid
                }
            }
        }
    }

    /// The signer's certificate (embedded or held).
    pub fn cert(&self) -> Option<&X509> {
        self.verified.signer.as_ref()
    }

    /// Names the parallel signer `i` (of `verified.co_signers`) instead of
    /// the one named now.
    pub fn name_co_signer(&mut self, i: usize) {
        if i >= self.verified.co_signers.len() {
            return;
        }
        let (cert, issuers) = self.verified.co_signers.remove(i);
        let old_cert = self.verified.signer.replace(cert);
        let old_issuers = std::mem::replace(&mut self.verified.issuers, issuers);
        if let Some(c) = old_cert {
            self.verified.co_signers.push((c, old_issuers));
        }
        self.signer = self.verified.signer.as_ref().map(|c| cms::subject(c));
    }

    /// Why the verdict is not valid, when there is something to say.
    fn detail(&self) -> Option<String> {
        match (&self.verified.math, &self.verified.chain) {
            (Math::Invalid(why), _) => Some(why.clone()),
            (Math::UnknownSigner, _) => None,
            (_, Chain::Expired(why) | Chain::Untrusted(why)) => Some(why.clone()),
            _ => match &self.revocation {
                Some(SignerRevocation::Revoked(why)) => Some(why.clone()),
                _ => None,
            },
        }
    }
}

/// One layer taken off (or looked at), outermost first.
#[derive(Debug, Clone)]
pub enum Layer {
    Decrypted(KeyUsed),
    Signature(Box<SignatureReport>),
}

/// Everything unwrapping found, layer by layer.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub layers: Vec<Layer>,
    /// S/MIME parts left unopened: inside a multipart next to other
    /// parts, or below the depth bound.
    pub nested: Option<Nested>,
    /// More than [`MAX_LAYERS`] layers: the rest was left as it was.
    pub too_deep: bool,
    /// Some layer taken off was encrypted without integrity (EnvelopedData,
    /// or a short tag): seen only once the layers above it are off (an
    /// AES-GCM layer around captured CBC content), so the EFAIL defence
    /// asks this as well as the scan.
    pub without_integrity: bool,
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}

impl Report {
    /// The key of the first (outermost) decryption.
    pub fn key(&self) -> Option<&KeyUsed> {
        self.layers.iter().find_map(|l| match l {
            Layer::Decrypted(k) => Some(k),
            Layer::Signature(_) => None,
        })
    }

    /// The signatures, outermost first.
    pub fn signatures(&self) -> impl Iterator<Item = &SignatureReport> {
        self.layers.iter().filter_map(|l| match l {
            Layer::Signature(s) => Some(s.as_ref()),
            Layer::Decrypted(_) => None,
        })
    }

    /// The signatures, for the caller to add revocation and relation.
    pub fn signatures_mut(&mut self) -> impl Iterator<Item = &mut SignatureReport> {
        self.layers.iter_mut().filter_map(|l| match l {
            Layer::Signature(s) => Some(s.as_mut()),
            Layer::Decrypted(_) => None,
        })
    }

    /// True when the content below the innermost decryption carries a
    /// signature whose mathematics hold (whoever signed): its bytes are
    /// the ones signed, not malleated ciphertext (what an EFAIL defence
    /// asks). False when nothing was decrypted.
    pub fn decrypted_content_signed(&self) -> bool {
        let Some(last) = self
            .layers
            .iter()
            .rposition(|l| matches!(l, Layer::Decrypted(_)))
        else {
            return false;
        };
        self.layers[last + 1..]
            .iter()
            .any(|l| matches!(l, Layer::Signature(s) if s.verified.math == Math::Valid))
    }

    /// The trace header value for a message this report describes; `None`
    /// when there is nothing to say (plain mail).
    pub fn header_value(&self) -> Option<String> {
        let parts = self.fields(false);
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The trace header value when a layer could not be opened: the
    /// layers above it, then `undecryptable; reason="…"`.
    pub fn failure_value(&self, reason: &str) -> String {
        let mut parts = self.fields(true);
        parts.push("undecryptable".into());
        parts.push(format!("reason={}", header::quote(reason)));
        parts.join("; ")
    }

    fn fields(&self, failed_below: bool) -> Vec<String> {
        let mut parts = Vec::new();
        let mut n = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            match layer {
                Layer::Decrypted(k) => {
                    parts.push("decrypted".to_string());
                    parts.push(format!(
                        "key={}",
                        header::quote(&format!("CN={}", k.subject_cn))
                    ));
                    parts.push(format!("generation={}", k.generation));
                }
                Layer::Signature(s) => {
                    n += 1;
                    let over_ciphertext = failed_below
                        || self.layers[i + 1..]
                            .iter()
                            .any(|l| matches!(l, Layer::Decrypted(_)));
                    signature_fields(&mut parts, n, s, over_ciphertext);
                }
            }
        }
        if let Some(nested) = &self.nested {
            if nested.encrypted > 0 {
                parts.push("encrypted-parts=not-opened".into());
            }
            if nested.signed > 0 {
                parts.push("signed-parts=not-verified".into());
            }
            let container = nested.container.as_str();
            let reason = if self.too_deep {
                format!("more than {MAX_LAYERS} S/MIME layers")
            } else if nested.hidden {
                "ciphertext in no part read as S/MIME".into()
            } else if container.is_empty() {
                "inside a multipart next to other parts".into()
            } else if container.starts_with("multipart/") {
                format!("inside {container} next to other parts")
            } else if container.starts_with("message/") {
                format!("inside an attached message ({container})")
            } else {
                format!("S/MIME content labelled {container}")
            };
            parts.push(format!("reason={}", header::quote(&reason)));
        }
        parts
    }
}

fn signature_fields(parts: &mut Vec<String>, n: usize, s: &SignatureReport, over_ciphertext: bool) {
    parts.push(format!("signature[{n}]={}", s.verdict()));
    if let Some(signer) = &s.signer {
        parts.push(format!("signer={}", header::quote(signer)));
    } else if let Some(id) = &s.verified.signer_id {
        parts.push(format!("signer-id={}", header::quote(id)));
    }
    parts.push(format!(
        "from={}",
        match (s.cert(), s.relation) {
            (Some(_), Some(r)) => r.to_string(),
            _ => "unknown".into(),
        }
    ));
    if let Some(r) = &s.revocation {
        parts.push(format!("revocation={}", r.token()));
    }
    if !matches!(s.verified.math, Math::UnknownSigner) {
        parts.push(format!("checked-at={}", rfc3339(s.verified.checked_at)));
    }
    if let Some(t) = s.verified.claimed_time {
        parts.push(format!("claimed-signing-time={}", rfc3339(t)));
    }
    if over_ciphertext {
        parts.push("over=ciphertext".into());
    }
    if s.verified.signer_count > 1 {
        // One verdict for all of them (OpenSSL verifies them together).
        parts.push(format!("parallel-signers={}", s.verified.signer_count));
    }
    if let Some(d) = s.detail() {
        parts.push(format!("detail={}", header::quote(&d)));
    }
}

/// What unwrapping did.
#[derive(Debug)]
pub enum Unwrapped {
    /// Layers were taken off: the clean message.
    Opened { message: Blob, report: Report },
    /// Nothing to take off (plain, or signed only and kept intact).
    Unchanged { report: Report },
    /// An encrypted layer could not be opened; the error is safe to show
    /// the mailbox (it never reaches the sender). The report holds the
    /// layers above it.
    Failed { error: SmimeError, report: Report },
}

/// Certificates that verification may use.
#[derive(Debug, Clone, Copy)]
pub struct Verifier<'a> {
    /// Trust anchors.
    pub anchors: &'a [X509],
    /// Certificates a signature may name without carrying them.
    pub known: &'a [X509],
    /// Signer chains found trusted before, kept for the next messages.
    pub kept: Option<cms::KeptChains<'a>>,
}

/// Unwraps `message` for a recipient whose candidate keys are `keys`
/// (most specific first), verifying signatures against `anchors` as of
/// `now`, with no certificates held besides the anchors.
pub fn unwrap(message: &[u8], keys: &[&Identity], anchors: &[X509], now: i64) -> Unwrapped {
    unwrap_with(
        message,
        keys,
        Verifier {
            anchors,
            known: anchors,
            kept: None,
        },
        now,
    )
}

/// Unwraps `message` for a recipient whose candidate keys are `keys`
/// (most specific first): every layer off to plain content, at most
/// [`MAX_LAYERS`], each reported. Everything is held in memory.
pub fn unwrap_with(
    message: &[u8],
    keys: &[&Identity],
    verifier: Verifier<'_>,
    now: i64,
) -> Unwrapped {
    unwrap_into(message, None, None, keys, verifier, now, &InMemory)
}

/// As [`unwrap_with`], with the decrypted content and the clean message
/// written to `spill` (scratch files for a large message), and the
/// message's `shape` when the caller knows it already (read once), with
/// its enveloped data `parsed` when the caller parsed that too (given
/// away: dropped as soon as it is decrypted, so a large message's parse
/// is not held while the clean message is built).
pub fn unwrap_into(
    message: &[u8],
    shape: Option<&Shape>,
    parsed: Option<openssl::cms::CmsContentInfo>,
    keys: &[&Identity],
    verifier: Verifier<'_>,
    now: i64,
    spill: &dyn Spill,
) -> Unwrapped {
    let mut report = Report::default();
    // The entity being looked at: the message itself until a layer is off.
    let mut current: Option<Blob> = None;
    // The content below the innermost encryption taken off so far.
    let mut opened: Option<Blob> = None;
    // The caller's shape serves the first layer, borrowed (it may hold
    // the whole CMS: never copied).
    let mut known = shape;
    let mut parsed = parsed;
    let mut done = false;
    for _ in 0..MAX_LAYERS {
        // The caller's parse is of the first layer only.
        let parsed_here = parsed.take();
        let computed;
        let here: &Shape = match known.take() {
            Some(s) => s,
            None => {
                computed = super::scan::shape_inside(current.as_deref().unwrap_or(message));
                &computed
            }
        };
        match here {
            Shape::Enveloped { cms: der } => match match parsed_here {
                Some(cms) => open_parsed(&cms, keys, spill),
                None => cms::parse(der).and_then(|cms| open_parsed(&cms, keys, spill)),
            } {
                Ok((inner, key)) => {
                    report.without_integrity |= !super::scan::with_integrity(der);
                    report.layers.push(Layer::Decrypted(key));
                    opened = Some(inner.clone());
                    current = Some(inner);
                }
                Err(error) => return Unwrapped::Failed { error, report },
            },
            Shape::OpaqueSigned { cms } => {
                let mut v = cms::verify_kept(
                    cms,
                    None,
                    verifier.anchors,
                    verifier.known,
                    now,
                    verifier.kept,
                );
                let content = v.content.take();
                record(&mut report, v);
                match content {
                    Some(c) => current = Some(Blob::from(c)),
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            Shape::DetachedSigned { content, signature } => {
                let v = cms::verify_kept(
                    signature,
                    Some(content),
                    verifier.anchors,
                    verifier.known,
                    now,
                    verifier.kept,
                );
                record(&mut report, v);
                current = Some(Blob::from(content.clone()));
            }
            Shape::Mixed(nested) => {
                report.nested = Some(nested.clone());
                done = true;
                break;
            }
            Shape::Plain => {
                done = true;
                break;
            }
            // Not parsed (over the caps of `mail::nesting`): nothing in it
            // is opened, whichever layer it is.
            Shape::Unreadable(e) => {
                return Unwrapped::Failed {
                    error: (*e).into(),
                    report,
                }
            }
        }
    }
    if !done {
        let entity: &[u8] = current.as_deref().unwrap_or(message);
        let left = match mime::shape(entity) {
            Shape::Enveloped { .. } => Some((1, 0)),
            // Ciphertext beneath the signatures left is said too (review
            // 26: eight around ciphertext said only "signed-parts").
            Shape::OpaqueSigned { .. } | Shape::DetachedSigned { .. } => {
                Some((usize::from(super::scan::scan(entity).encrypted), 1))
            }
            Shape::Mixed(n) => Some((n.encrypted, n.signed)),
            Shape::Plain => None,
            Shape::Unreadable(e) => {
                return Unwrapped::Failed {
                    error: e.into(),
                    report,
                }
            }
        };
        if let Some((encrypted, signed)) = left {
            report.too_deep = true;
            report.nested = Some(Nested {
                encrypted,
                signed,
                container: String::new(),
                hidden: false,
            });
        }
    }
    drop(current);
    match opened {
        None => Unwrapped::Unchanged { report },
        Some(inner) => {
            let inner = mime::crlf(&inner);
            let expected = mime::split(message).0.len() + inner.len() + 64;
            match spill.spill_sized(expected, &mut |w| rebuild_into(message, &inner, w)) {
                Ok(message) => Unwrapped::Opened { message, report },
                Err(e) => Unwrapped::Failed {
                    error: SmimeError::Scratch(e.to_string()),
                    report,
                },
            }
        }
    }
}

fn record(report: &mut Report, v: cms::Verified) {
    report
        .layers
        .push(Layer::Signature(Box::new(SignatureReport {
            signer: v.signer.as_ref().map(|c| cms::subject(c)),
            verified: v,
            relation: None,
            revocation: None,
        })));
}

/// Decrypts the enveloped data `cms` with the first candidate it names as
/// a recipient, into a blob of `spill`.
fn open_parsed(
    cms: &openssl::cms::CmsContentInfo,
    keys: &[&Identity],
    spill: &dyn Spill,
) -> Result<(Blob, KeyUsed), SmimeError> {
    // Compressed data (smime-type=compressed-data) and the like name no
    // recipients: said as what they are, not as "no key held".
    let content_type = ossl::content_type(cms).unwrap_or_default();
    if !matches!(
        cms::kind_of(&content_type),
        cms::Kind::Enveloped | cms::Kind::AuthEnveloped
    ) {
        return Err(SmimeError::NotEnveloped(cms::described(&content_type)));
    }
    let Some(id) = keys.iter().find(|id| ossl::is_recipient(cms, &id.cert)) else {
        let named: Vec<String> = ossl::recipients(cms)
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
    let inner = cms::decrypt_into(cms, &id.key, &id.cert, spill).map_err(|e| match e {
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
            fingerprint: id.fingerprint(),
        },
    ))
}

/// The outer header fields of `original` (without Content-*, MIME-Version
/// and any trace header) followed by `entity`'s Content-* fields and body,
/// written to `w`.
fn rebuild_into(original: &[u8], entity: &[u8], w: &mut dyn Write) -> std::io::Result<()> {
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
    write_all(
        w,
        &[&outer, b"MIME-Version: 1.0\r\n", &content, b"\r\n", body],
    )?;
    // Ends with CRLF (an empty body after the blank line does).
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        w.write_all(b"\r\n")?;
    }
    Ok(())
}

/// The Content-* entity of a clean message (what re-encryption wraps), as
/// its header section (with the blank line) and its body, not copied.
pub fn content_parts(message: &[u8]) -> (Vec<u8>, &[u8]) {
    let (headers, body) = mime::split(message);
    let mut head = mime::without(headers, |n| {
        !mime::is_content_field(n) || n == "mime-version"
    });
    head.extend_from_slice(b"\r\n");
    (head, body)
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

/// Writes the message whose body is the enveloped data `input` is
/// encrypted into, with the outer fields of `message` (only its header
/// section is read) and `trace` on top when given: the CMS streamed
/// through base64 as it is made.
pub fn write_enveloped(
    message: &[u8],
    trace: Option<&str>,
    input: &mut dyn std::io::Read,
    recipients: &[X509],
    how: crate::config::Encryption,
    w: &mut dyn Write,
) -> Result<(), SmimeError> {
    w.write_all(&enveloped_head(message, trace))
        .map_err(|e| SmimeError::Scratch(e.to_string()))?;
    let mut b64 = mime::Base64Lines::new(w);
    cms::encrypt_into(input, recipients, how, &mut b64)?;
    b64.finish()
        .map_err(|e| SmimeError::Scratch(e.to_string()))?;
    Ok(())
}

/// `message` encrypted for `recipients` as a blob of `spill`, its outer
/// fields kept and `trace` set on top when given. A large spill streams
/// the CMS (BER) from the message into base64; a small one builds it
/// whole (DER).
pub fn spill_enveloped(
    message: &[u8],
    trace: Option<&str>,
    recipients: &[X509],
    how: crate::config::Encryption,
    spill: &dyn Spill,
) -> Result<Blob, SmimeError> {
    if !spill.large() {
        let (head, body) = content_parts(message);
        let der = cms::encrypt_parts(&[&head, body], recipients, how)?;
        let head = enveloped_head(message, trace);
        // The base64 written behind the header section, not built apart.
        let mut out = Vec::with_capacity(head.len() + der.len() / 57 * 78 + 80);
        out.extend_from_slice(&head);
        let mut b64 = mime::Base64Lines::new(out);
        b64.write_all(&der)
            .map_err(|e| SmimeError::Scratch(e.to_string()))?;
        let out = b64
            .finish()
            .map_err(|e| SmimeError::Scratch(e.to_string()))?;
        return Ok(Blob::from(out));
    }
    let (head, body) = content_parts(message);
    let mut failure = None;
    let blob = spill.spill(&mut |w| {
        let mut input = std::io::Read::chain(head.as_slice(), body);
        write_enveloped(message, trace, &mut input, recipients, how, w).map_err(|e| {
            let io = std::io::Error::other(e.to_string());
            failure = Some(e);
            io
        })
    });
    match (blob, failure) {
        (Ok(b), _) => Ok(b),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(SmimeError::Scratch(e.to_string())),
    }
}

/// The header section (with the blank line) of the enveloped message made
/// from `message` (only its header section is read), with `trace` on top
/// when given.
fn enveloped_head(message: &[u8], trace: Option<&str>) -> Vec<u8> {
    let head = enveloped_message(mime::split(message).0, &[]);
    match trace {
        Some(value) => header::set(&head, value),
        None => head,
    }
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
    fn the_enveloped_copy_is_the_same_bytes_on_both_paths_up_to_the_cms() {
        let id = identity();
        let m = b"From: a@b\r\nSubject: s\r\nX-SMIME-Gateway: forged\r\nContent-Type: text/plain\r\n\r\nsecret\r\n";
        let small = spill_enveloped(
            m,
            Some("decrypted"),
            std::slice::from_ref(&id.cert),
            crate::config::Encryption::Aes256Cbc,
            &InMemory,
        )
        .unwrap();
        // What it was built as before: the whole message, then the header.
        let (head, _) = mime::split(&small);
        let old_head = {
            let w = enveloped_message(m, b"x");
            let w = header::set(&w, "decrypted");
            mime::split(&w).0.to_vec()
        };
        assert_eq!(head, &old_head[..]);
        assert_eq!(
            head.windows(15).filter(|w| w == b"X-SMIME-Gateway").count(),
            1
        );
        assert!(small.ends_with(b"\r\n"));
    }

    #[test]
    fn opens_and_rebuilds_cleanly() {
        let id = identity();
        let m = message(&id);
        match unwrap(&m, &[&id], &[], 0) {
            Unwrapped::Opened { message, report } => {
                assert_eq!(
                    &*message,
                    b"From: a@b\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nsecret\r\n"
                );
                assert_eq!(report.key().unwrap().subject_cn, "Unit Test");
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

    fn sig(
        math: Math,
        chain: Chain,
        relation: Option<Relation>,
        revocation: Option<SignerRevocation>,
    ) -> SignatureReport {
        SignatureReport {
            verified: cms::Verified {
                math,
                chain,
                signer: Some(identity().cert),
                signer_id: None,
                issuers: Vec::new(),
                claimed_time: Some(0),
                checked_at: 86_400,
                content: None,
                capabilities: Vec::new(),
                signer_count: 1,
                co_signers: Vec::new(),
            },
            signer: Some("CN=Signer".into()),
            relation,
            revocation,
        }
    }

    #[test]
    fn verdicts_follow_the_facts_in_order() {
        use Relation::*;
        let good = Some(SignerRevocation::Good);
        let revoked = Some(SignerRevocation::Revoked("CRL".into()));
        let cases = [
            (
                sig(
                    Math::Invalid("x".into()),
                    Chain::NotChecked,
                    Some(Exact),
                    None,
                ),
                Verdict::Invalid,
            ),
            (
                sig(Math::UnknownSigner, Chain::NotChecked, None, None),
                Verdict::UnknownSigner,
            ),
            (
                sig(Math::Valid, Chain::Untrusted("x".into()), Some(Exact), None),
                Verdict::Untrusted,
            ),
            (
                sig(
                    Math::Valid,
                    Chain::Expired("x".into()),
                    Some(Exact),
                    good.clone(),
                ),
                Verdict::Expired,
            ),
            (
                sig(Math::Valid, Chain::Trusted, Some(Exact), revoked),
                Verdict::Revoked,
            ),
            (
                sig(Math::Valid, Chain::Trusted, Some(Differs), good.clone()),
                Verdict::SignerDiffers,
            ),
            (
                sig(Math::Valid, Chain::Trusted, None, good.clone()),
                Verdict::SignerDiffers,
            ),
            (
                sig(Math::Valid, Chain::Trusted, Some(Organisation), None),
                Verdict::Valid,
            ),
            (
                sig(
                    Math::Valid,
                    Chain::Trusted,
                    Some(SameDomain),
                    Some(SignerRevocation::Unknown("down".into())),
                ),
                Verdict::Valid,
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.verdict(), want, "{s:?}");
        }
    }

    #[test]
    fn header_lists_layers_outermost_first() {
        let report = Report {
            layers: vec![
                Layer::Signature(Box::new(sig(
                    Math::Valid,
                    Chain::Trusted,
                    Some(Relation::Differs),
                    Some(SignerRevocation::Unknown("down".into())),
                ))),
                Layer::Decrypted(KeyUsed {
                    subject_cn: "Org".into(),
                    generation: Generation::Oces2,
                    fingerprint: "AB".into(),
                }),
                Layer::Signature(Box::new(sig(
                    Math::Valid,
                    Chain::Trusted,
                    Some(Relation::Exact),
                    Some(SignerRevocation::Good),
                ))),
            ],
            nested: Some(Nested {
                encrypted: 1,
                signed: 0,
                container: "multipart/mixed".into(),
                hidden: false,
            }),
            too_deep: false,
            without_integrity: false,
        };
        assert_eq!(
            report.header_value().unwrap(),
            "signature[1]=signer-differs; signer=\"CN=Signer\"; from=differs; revocation=unknown; \
             checked-at=1970-01-02T00:00:00Z; claimed-signing-time=1970-01-01T00:00:00Z; over=ciphertext; \
             decrypted; key=\"CN=Org\"; generation=OCES2; \
             signature[2]=valid; signer=\"CN=Signer\"; from=exact; revocation=good; \
             checked-at=1970-01-02T00:00:00Z; claimed-signing-time=1970-01-01T00:00:00Z; \
             encrypted-parts=not-opened; reason=\"inside multipart/mixed next to other parts\""
        );
        let failed = Report {
            layers: vec![Layer::Signature(Box::new(sig(
                Math::UnknownSigner,
                Chain::NotChecked,
                None,
                None,
            )))],
            ..Report::default()
        };
        // The signature below the decryption covers the delivered content.
        assert!(report.decrypted_content_signed());
        let mut outer_only = report.clone();
        outer_only.layers.truncate(2);
        assert!(!outer_only.decrypted_content_signed());
        assert!(failed
            .failure_value("no key")
            .ends_with("over=ciphertext; undecryptable; reason=\"no key\""));
        assert_eq!(Report::default().header_value(), None);
    }

    /// A message nested deeper than `mail::nesting` reads is not opened,
    /// whether it is the message itself or what a decryption gave.
    #[test]
    fn content_nested_too_deep_is_not_opened() {
        use crate::mail::nesting::{TooComplex, MAX_DEPTH};
        let deep = |levels: usize| {
            let mut m = b"Content-Type: message/rfc822\r\n\r\n".repeat(levels);
            m.extend_from_slice(b"Subject: x\r\n\r\nsecret\r\n");
            m
        };
        let id = identity();
        let outer = [&b"From: a@b\r\n"[..], &deep(MAX_DEPTH + 1)].concat();
        match unwrap(&outer, &[&id], &[], 0) {
            Unwrapped::Failed { error, report } => {
                assert!(matches!(error, SmimeError::Unreadable(TooComplex::TooDeep)));
                assert!(report.layers.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let mut certs = Stack::new().unwrap();
        certs.push(id.cert.clone()).unwrap();
        let enveloped = |inner: &[u8]| {
            let cms =
                CmsContentInfo::encrypt(&certs, inner, Cipher::aes_256_cbc(), CMSOptions::BINARY)
                    .unwrap()
                    .to_der()
                    .unwrap();
            let mut m = b"From: a@b\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
            m.extend_from_slice(&mime::base64_lines(&cms));
            m
        };
        match unwrap(&enveloped(&deep(MAX_DEPTH + 1)), &[&id], &[], 0) {
            Unwrapped::Failed { error, report } => {
                assert!(matches!(error, SmimeError::Unreadable(TooComplex::TooDeep)));
                assert!(report.key().is_some(), "decrypted, then refused");
            }
            other => panic!("{other:?}"),
        }
        // Positive control: five levels inside are opened.
        assert!(matches!(
            unwrap(&enveloped(&deep(5)), &[&id], &[], 0),
            Unwrapped::Opened { .. }
        ));
    }

    #[test]
    fn ciphertext_beneath_more_signatures_than_are_taken_off_is_said() {
        let id = identity();
        let opaque = |content: &[u8]| {
            let mut m = b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\
                          Content-Transfer-Encoding: base64\r\n\r\n"
                .to_vec();
            m.extend_from_slice(&mime::base64_lines(
                &crate::pki::testkit::signed(&id, content).unwrap(),
            ));
            m
        };
        let mut certs = Stack::new().unwrap();
        certs.push(id.cert.clone()).unwrap();
        let cms = CmsContentInfo::encrypt(&certs, b"x", Cipher::aes_256_cbc(), CMSOptions::BINARY)
            .unwrap()
            .to_der()
            .unwrap();
        let mut ciphertext = b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\
                               Content-Transfer-Encoding: base64\r\n\r\n"
            .to_vec();
        ciphertext.extend_from_slice(&mime::base64_lines(&cms));
        let plain = b"Content-Type: text/plain\r\n\r\nhello\r\n".to_vec();
        for (inner, encrypted) in [(ciphertext, true), (plain, false)] {
            let mut m = inner;
            for _ in 0..MAX_LAYERS + 2 {
                m = opaque(&m);
            }
            let report = match unwrap(&m, &[&id], &[], 0) {
                Unwrapped::Unchanged { report } | Unwrapped::Opened { report, .. } => report,
                Unwrapped::Failed { report, .. } => report,
            };
            assert!(report.too_deep);
            let value = report.header_value().unwrap();
            assert_eq!(
                value.contains("encrypted-parts=not-opened"),
                encrypted,
                "{value}"
            );
            assert!(value.contains("signed-parts=not-verified"), "{value}");
        }
    }
}

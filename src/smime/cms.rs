//! CMS operations through OpenSSL: what a structure is, decrypting with a
//! chosen key, encrypting to certificates, verifying signatures as of the
//! signing time. Bytes, keys and certificates in; bytes and verdicts out.
//!
//! Why long: the whole and the streamed forms of decryption and
//! encryption sit side by side, with verification and their tests.

use std::sync::Arc;

use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::nid::Nid;
use openssl::pkey::{PKeyRef, Private};
use openssl::stack::Stack;
use openssl::symm::Cipher;
use openssl::x509::{X509Ref, X509};

use super::SmimeError;
use crate::blob::{Blob, Spill};
use crate::config::Encryption;
use crate::ossl;
use crate::pki::checked::{chain_key, Paths, SignerChains, KEEP};
use crate::pki::directory::fingerprint;
use crate::pki::trust::store_at;

/// The content type of a CMS structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Enveloped,
    AuthEnveloped,
    Signed,
    Other,
}

const OID_ENVELOPED: &str = "1.2.840.113549.1.7.3";
const OID_SIGNED: &str = "1.2.840.113549.1.7.2";
const OID_AUTH_ENVELOPED: &str = "1.2.840.113549.1.9.16.1.23";

/// Parses CMS bytes (DER or BER, definite or indefinite lengths).
/// Input beyond the caps of [`super::limits`], or that the pre-scan
/// cannot read, is refused before OpenSSL builds anything from it.
pub fn parse(der: &[u8]) -> Result<CmsContentInfo, SmimeError> {
    match super::limits::check(der) {
        Ok(()) => {}
        Err(super::limits::LimitError::Malformed(why)) => {
            return Err(SmimeError::Corrupt(why.to_string()))
        }
        Err(e) => return Err(e.into()),
    }
    CmsContentInfo::from_der(der).map_err(|e| SmimeError::Corrupt(short(&e)))
}

/// The content type of the CMS bytes, `None` when they are not CMS. Reads
/// only the outer ContentInfo's type: a structure the caps refuse is still
/// recognised as what it claims to be (and refused when it is opened).
pub fn kind(der: &[u8]) -> Option<Kind> {
    use asn1_rs::{FromBer, Header, Oid, Tag};
    let (rest, outer) = Header::from_ber(der).ok()?;
    if outer.tag() != Tag::Sequence || !outer.is_constructed() {
        return None;
    }
    let (_, oid) = Oid::from_ber(rest).ok()?;
    Some(kind_of(&oid.to_id_string()))
}

/// The kind for a content type, dotted or as OpenSSL names it (what
/// `ossl::content_type` returns).
pub fn kind_of(oid: &str) -> Kind {
    match oid {
        OID_ENVELOPED | "pkcs7-envelopedData" => Kind::Enveloped,
        OID_AUTH_ENVELOPED | "id-smime-ct-authEnvelopedData" => Kind::AuthEnveloped,
        OID_SIGNED | "pkcs7-signedData" => Kind::Signed,
        _ => Kind::Other,
    }
}

/// What a CMS content type is, in words, for reasons given to people:
/// the dotted identifier when it has no name here.
pub fn described(oid: &str) -> String {
    match oid {
        OID_ENVELOPED => "CMS enveloped data".into(),
        OID_AUTH_ENVELOPED => "CMS authenticated-enveloped data".into(),
        OID_SIGNED => "CMS signed data".into(),
        "1.2.840.113549.1.7.1" => "CMS data".into(),
        "1.2.840.113549.1.7.5" => "CMS digested data".into(),
        "1.2.840.113549.1.7.6" => "CMS encrypted data (a password or shared key)".into(),
        "1.2.840.113549.1.9.16.1.2" => "CMS authenticated data".into(),
        "1.2.840.113549.1.9.16.1.9" => "CMS compressed data".into(),
        other => format!("CMS content of type {other}"),
    }
}

/// The first reason in an OpenSSL error stack, for messages.
pub fn short(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|x| x.reason().map(str::to_string))
        .unwrap_or_else(|| "unknown OpenSSL error".into())
}

/// Decrypts with `key`, whose certificate `cert` must be a recipient.
pub fn decrypt(
    cms: &CmsContentInfo,
    key: &PKeyRef<Private>,
    cert: &X509,
) -> Result<Vec<u8>, SmimeError> {
    cms.decrypt(key, cert)
        .map_err(|e| SmimeError::Decrypt(short(&e)))
}

/// Decrypts with `key` (whose certificate `cert` must be a recipient)
/// into a blob of `spill`, the content streamed out as it is decrypted:
/// nothing of it is kept when the last block or the AES-GCM tag fails.
pub fn decrypt_into(
    cms: &CmsContentInfo,
    key: &PKeyRef<Private>,
    cert: &X509,
    spill: &dyn Spill,
) -> Result<Blob, SmimeError> {
    let mut failure = None;
    let expected = ossl::content_len(cms);
    let blob = spill.spill_sized(
        expected,
        &mut |w| match ossl::decrypt_to(cms, key, cert, w) {
            Ok(()) => Ok(()),
            Err(ossl::StreamError::Io(e)) => Err(e),
            Err(ossl::StreamError::Ssl(e)) => {
                failure = Some(short(&e));
                Err(std::io::Error::other("decryption failed"))
            }
        },
    );
    match (blob, failure) {
        (Ok(b), _) => Ok(b),
        (Err(_), Some(why)) => Err(SmimeError::Decrypt(why)),
        (Err(e), None) => Err(SmimeError::Scratch(e.to_string())),
    }
}

/// Envelopes what `input` holds for `recipients`, writing the structure to
/// `out` as it is made (BER, indefinite lengths): the content is never
/// held whole.
pub fn encrypt_into(
    input: &mut dyn std::io::Read,
    recipients: &[X509],
    how: Encryption,
    out: &mut dyn std::io::Write,
) -> Result<(), SmimeError> {
    let (cipher, oaep) = match how {
        Encryption::Aes256Cbc => (Cipher::aes_256_cbc(), false),
        Encryption::Aes256GcmOaep => (Cipher::aes_256_gcm(), true),
    };
    ossl::encrypt_stream(recipients, cipher, oaep, input, out).map_err(|e| match e {
        ossl::StreamError::Ssl(e) => SmimeError::Encrypt(short(&e)),
        ossl::StreamError::Io(e) => SmimeError::Scratch(e.to_string()),
    })
}

/// Envelopes `data` for `recipients`.
pub fn encrypt(data: &[u8], recipients: &[X509], how: Encryption) -> Result<Vec<u8>, SmimeError> {
    encrypt_parts(&[data], recipients, how)
}

/// Envelopes the concatenation of `parts` for `recipients` (DER), without
/// joining them first.
pub fn encrypt_parts(
    parts: &[&[u8]],
    recipients: &[X509],
    how: Encryption,
) -> Result<Vec<u8>, SmimeError> {
    let (cipher, oaep) = match how {
        Encryption::Aes256Cbc => (Cipher::aes_256_cbc(), false),
        Encryption::Aes256GcmOaep => (Cipher::aes_256_gcm(), true),
    };
    ossl::encrypt_whole(recipients, cipher, oaep, parts)
        .and_then(|c| c.to_der())
        .map_err(|e| SmimeError::Encrypt(short(&e)))
}

/// What the mathematics of a signature say, before any question of
/// trust: the content matches, it does not, or the signer's certificate
/// is neither in the signature nor among the certificates the gateway
/// holds (so nothing can be said about the content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Math {
    Valid,
    /// The content does not match the signature (or the signature is
    /// broken); why.
    Invalid(String),
    UnknownSigner,
}

/// Whether the signer's certificate chains to a trust anchor at the time
/// of verification (not at the signing time the signature claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chain {
    /// Chains to an anchor now.
    Trusted,
    /// Would chain, but the certificate (or one above it) is past its
    /// validity now; why.
    Expired(String),
    /// No chain to an anchor (or not valid yet); why.
    Untrusted(String),
    /// Not looked at: the mathematics already failed.
    NotChecked,
}

/// What verification found: facts, not yet a verdict (revocation and the
/// relation to the header From are added by the caller).
#[derive(Debug, Clone)]
pub struct Verified {
    pub math: Math,
    pub chain: Chain,
    /// The signer's certificate, embedded or found among those held.
    pub signer: Option<X509>,
    /// How the signature names its signer (issuer and serial, or subject
    /// key identifier).
    pub signer_id: Option<String>,
    /// The certificates above the signer's, nearest first, as far as they
    /// are known (for revocation checks of every link).
    pub issuers: Vec<X509>,
    /// The signing time the signature claims (Unix seconds): a claim.
    pub claimed_time: Option<i64>,
    /// The time the chain was checked against (Unix seconds).
    pub checked_at: i64,
    /// The signed content (opaque signatures only).
    pub content: Option<Vec<u8>>,
    /// SMIMECapabilities the signer announced (dotted OIDs).
    pub capabilities: Vec<String>,
    /// SignerInfos in this SignedData: more than one are verified together
    /// (all must hold).
    pub signer_count: usize,
    /// The other signers' certificates with the certificates above them, when there are
    /// parallel signatures (the caller may name one of them instead).
    pub co_signers: Vec<(X509, Vec<X509>)>,
}

/// OpenSSL's CMS library code and its "signer certificate not found".
const ERR_LIB_CMS: libc::c_int = 46;
const CMS_R_SIGNER_CERTIFICATE_NOT_FOUND: libc::c_int = 138;

fn signer_not_found(e: &openssl::error::ErrorStack) -> bool {
    e.errors().iter().any(|x| {
        x.library_code() == ERR_LIB_CMS && x.reason_code() == CMS_R_SIGNER_CERTIFICATE_NOT_FOUND
    })
}

/// Whether SignedData carries its content (opaque signed), read from its
/// structure without parsing it whole; one that cannot be read counts as
/// carrying content (opened, it fails and is reported as a broken
/// signature, never taken for plain mail).
pub fn signed_content_inside(der: &[u8]) -> bool {
    super::limits::signed_has_content(der).unwrap_or(true)
}

/// Signer chains found trusted by earlier verifications (under the same
/// anchors), and the clock that says how long they are kept.
#[derive(Debug, Clone, Copy)]
pub struct KeptChains<'a> {
    pub chains: &'a SignerChains,
    /// Clock time (Unix seconds), not the time verified as of.
    pub clock: i64,
}

/// Verifies a signature: detached over `detached` (the exact signed bytes;
/// the CRLF and LF forms are tried too, as clients differ in what they
/// canonicalise) or opaque (content inside). The signer's certificate is
/// the one embedded, else the one among `known` the signature names. The
/// chain is checked against `anchors` as of `now`, the time of
/// verification: a signing time inside the signature is only reported.
pub fn verify(
    sig: &[u8],
    detached: Option<&[u8]>,
    anchors: &[X509],
    known: &[X509],
    now: i64,
) -> Verified {
    verify_kept(sig, detached, anchors, known, now, None)
}

/// [`verify`], with the signers' chain taken from `kept` when a chain of
/// the same signers with the same certificates carried was found trusted
/// for this time (the mathematics are always checked), and kept there
/// when it is found trusted now.
pub fn verify_kept(
    sig: &[u8],
    detached: Option<&[u8]>,
    anchors: &[X509],
    known: &[X509],
    now: i64,
    kept: Option<KeptChains<'_>>,
) -> Verified {
    // Read before checking: revocation data fetched meanwhile makes what is
    // kept now stale rather than fresh.
    let generation = kept.map(|k| k.chains.generation());
    let mut out = Verified {
        math: Math::Invalid(String::new()),
        chain: Chain::NotChecked,
        signer: None,
        signer_id: None,
        issuers: Vec::new(),
        claimed_time: None,
        checked_at: now,
        content: None,
        capabilities: Vec::new(),
        signer_count: 0,
        co_signers: Vec::new(),
    };
    let mut cms = match parse(sig) {
        Ok(c) => c,
        Err(e) => {
            out.math = Math::Invalid(format!("signature is not usable CMS: {e}"));
            return out;
        }
    };
    let info = ossl::signed_info(&cms);
    out.signer_id = info.signers.first().map(|s| s.to_string());
    out.signer_count = info.signers.len();
    out.claimed_time = ossl::signing_time(&cms);
    out.capabilities = ossl::capabilities(&cms);
    if detached.is_none() {
        out.content = ossl::signed_content(&cms);
    }
    let pool = (|| {
        let mut pool = Stack::new()?;
        for c in known {
            pool.push(c.clone())?;
        }
        Ok::<_, openssl::error::ErrorStack>(pool)
    })();
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            out.math = Math::Invalid(format!("cannot verify: {}", short(&e)));
            return out;
        }
    };
    let attempt = |cms: &mut CmsContentInfo,
                   data: Option<&[u8]>,
                   store: Option<&openssl::x509::store::X509StoreRef>,
                   flags: CMSOptions| {
        cms.verify(Some(&pool), store, data, None, CMSOptions::BINARY | flags)
    };
    // The mathematics alone: no chain is built, so no store is needed. The
    // forms of detached content, exact first, then its CRLF and LF forms
    // (made only when the exact bytes do not match).
    let math_only = CMSOptions::NO_SIGNER_CERT_VERIFY;
    let mut failure = None;
    let mut tried: Vec<Vec<u8>> = Vec::new();
    let mut matched: Option<Option<Vec<u8>>> = None;
    for form in 0..3 {
        let made: Option<Vec<u8>> = match (detached, form) {
            (None, 0) | (Some(_), 0) => None,
            (None, _) => break,
            (Some(d), 1) => match crate::mail::lines::crlf(d) {
                std::borrow::Cow::Owned(v) => Some(v),
                std::borrow::Cow::Borrowed(_) => continue,
            },
            (Some(d), _) => Some(crate::mail::lines::lf(d)),
        };
        if let (Some(m), Some(d)) = (&made, detached) {
            if m[..] == *d || tried.iter().any(|t| t == m) {
                continue;
            }
        }
        let data: Option<&[u8]> = made.as_deref().or(detached);
        match attempt(&mut cms, data, None, math_only) {
            Ok(()) => {
                matched = Some(made);
                break;
            }
            Err(e) if signer_not_found(&e) => {
                out.math = Math::UnknownSigner;
                return out;
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        if let Some(m) = made {
            tried.push(m);
        }
    }
    let all_signers = ossl::signers(&cms);
    let mut signers = all_signers.iter().cloned();
    out.signer = signers.next();
    let co_signers: Vec<X509> = signers.collect();
    let Some(made) = matched else {
        out.math = Math::Invalid(failure.map(|e| short(&e)).unwrap_or_default());
        return out;
    };
    let data: Option<&[u8]> = made.as_deref().or(detached);
    out.math = Math::Valid;
    let carried = ossl::embedded_certs(&cms);
    let key = kept.map(|_| {
        let fingerprints = |certs: &[X509]| certs.iter().map(fingerprint).collect::<Vec<_>>();
        chain_key(&fingerprints(&all_signers), &fingerprints(&carried))
    });
    let from_kept = match (kept, &key, generation) {
        (Some(k), Some(key), Some(g)) => k.chains.trusted(key, g, now, k.clock),
        _ => None,
    };
    // Revocation is checked along the chains OpenSSL verified, never along
    // certificates the sender merely carried: a self-issued "twin" of a
    // revoked CA would otherwise end the path before it.
    let paths: Paths = match from_kept {
        Some(paths) => {
            out.chain = Chain::Trusted;
            paths
        }
        None => {
            out.chain = chain_now(&mut cms, data, anchors, now, &attempt, out.signer.as_ref());
            let mut helpers = carried;
            helpers.extend(known.iter().cloned());
            let verified = (out.chain == Chain::Trusted)
                .then(|| verified_chains(&all_signers, anchors, &helpers, now))
                .flatten();
            match verified {
                Some((window, paths)) => {
                    let paths = Arc::new(paths);
                    if let (Some(k), Some(key), Some(g)) = (kept, &key, generation) {
                        k.chains.keep(
                            key,
                            g,
                            window,
                            k.clock.saturating_add(KEEP),
                            Arc::clone(&paths),
                        );
                    }
                    paths
                }
                _ => Paths::default(),
            }
        }
    };
    out.issuers = paths.first().cloned().unwrap_or_default();
    out.co_signers = co_signers
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c, paths.get(i + 1).cloned().unwrap_or_default()))
        .collect();
    out
}

/// One CMS verification of the content with a store (or none) and flags.
type Attempt<'a> = dyn Fn(
        &mut CmsContentInfo,
        Option<&[u8]>,
        Option<&openssl::x509::store::X509StoreRef>,
        CMSOptions,
    ) -> Result<(), openssl::error::ErrorStack>
    + 'a;

/// The signers' chains to `anchors` as of `now`, checked by OpenSSL's CMS
/// verification (every signer, S/MIME signing purpose); when they fail, a
/// second check without validity periods tells "expired" from "untrusted".
fn chain_now(
    cms: &mut CmsContentInfo,
    data: Option<&[u8]>,
    anchors: &[X509],
    now: i64,
    attempt: &Attempt<'_>,
    signer: Option<&X509>,
) -> Chain {
    let store = match store_at(anchors, now) {
        Ok(s) => s,
        Err(e) => return Chain::Untrusted(format!("cannot verify: {}", short(&e))),
    };
    let now_err = match attempt(cms, data, Some(&store), CMSOptions::empty()) {
        Ok(()) => return Chain::Trusted,
        Err(e) => e,
    };
    match crate::pki::trust::store_any_time(anchors) {
        Ok(timeless) => match attempt(cms, data, Some(&timeless), CMSOptions::empty()) {
            Ok(()) => time_problem(signer, now),
            Err(_) => Chain::Untrusted(chain_reason(&now_err)),
        },
        Err(_) => Chain::Untrusted(chain_reason(&now_err)),
    }
}

/// Evaluation times (Unix seconds, both ends included).
type Window = (i64, i64);

/// The chains of all `signers` as OpenSSL verifies them (built to
/// `anchors` with `helpers`, as of `now`): the evaluation times for which
/// they all hold (every certificate in each valid) and, per signer, the
/// certificates above it, nearest first (the signer itself when it is an
/// anchor). `None` when a chain cannot be built this way.
fn verified_chains(
    signers: &[X509],
    anchors: &[X509],
    helpers: &[X509],
    now: i64,
) -> Option<(Window, Vec<Vec<X509>>)> {
    let mut window = (i64::MIN, i64::MAX);
    let mut paths = Vec::with_capacity(signers.len());
    for signer in signers {
        let chain = crate::pki::validate::chain(signer, anchors, helpers, now).ok()?;
        for c in &chain {
            let (from, until) = crate::pki::validate::period(c)?;
            window = (window.0.max(from), window.1.min(until));
        }
        paths.push(match chain.get(1..) {
            Some(above) if !above.is_empty() => above.to_vec(),
            _ => vec![signer.clone()],
        });
    }
    (window.0 <= window.1 && window.0 <= now && now <= window.1).then_some((window, paths))
}

/// Why a chain that holds apart from validity periods does not hold now.
fn time_problem(signer: Option<&X509>, now: i64) -> Chain {
    let Some(cert) = signer else {
        return Chain::Expired("a certificate in the chain is outside its validity".into());
    };
    let Ok(info) = cert.to_der().map(|d| crate::pki::oces::classify(&d)) else {
        return Chain::Expired("a certificate in the chain is outside its validity".into());
    };
    match info {
        Ok(i) if now > i.not_after => Chain::Expired(format!(
            "certificate expired {}",
            crate::pki::validate::day(i.not_after)
        )),
        Ok(i) if now < i.not_before => Chain::Untrusted(format!(
            "certificate not valid before {}",
            crate::pki::validate::day(i.not_before)
        )),
        _ => Chain::Expired("a CA certificate in the chain is outside its validity".into()),
    }
}

fn chain_reason(e: &openssl::error::ErrorStack) -> String {
    // The verify error text (e.g. "unable to get local issuer certificate")
    // is in the error data.
    e.errors()
        .iter()
        .find_map(|x| x.data().map(str::to_string))
        .unwrap_or_else(|| short(e))
}

/// A certificate's subject as `CN=<cn>, O=<o>`: the parts a person
/// recognises, in the same order whatever the certificate's RDN order.
pub fn subject(cert: &X509Ref) -> String {
    let name = cert.subject_name();
    let get = |nid: Nid| {
        name.entries_by_nid(nid)
            .next()
            .and_then(|e| e.data().to_string().ok())
    };
    match (get(Nid::COMMONNAME), get(Nid::ORGANIZATIONNAME)) {
        (Some(cn), Some(o)) => format!("CN={cn}, O={o}"),
        (Some(cn), None) => format!("CN={cn}"),
        _ => ossl::name_text(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::testkit;

    fn signed_detached(id: &crate::pki::Identity, data: &[u8]) -> Vec<u8> {
        CmsContentInfo::sign(
            Some(&id.cert),
            Some(&id.key),
            None,
            Some(data),
            CMSOptions::BINARY | CMSOptions::DETACHED,
        )
        .unwrap()
        .to_der()
        .unwrap()
    }

    #[test]
    fn content_types_are_known() {
        let id = testkit::identity(1024, "Kind Test").unwrap();
        let sig = signed_detached(&id, b"x");
        assert_eq!(kind(&sig), Some(Kind::Signed));
        assert!(!signed_content_inside(&sig));
        assert_eq!(kind(b"not cms"), None);
        let enveloped =
            encrypt(b"x", std::slice::from_ref(&id.cert), Encryption::Aes256Cbc).unwrap();
        assert_eq!(kind(&enveloped), Some(Kind::Enveloped));
    }

    #[test]
    fn lf_and_crlf_forms_of_signed_content_verify_and_changes_do_not() {
        let id = testkit::identity(1024, "Line Ends").unwrap();
        let now = 1_000_000_000_i64.max(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        );
        let anchors = [id.cert.clone()];
        // Signed over LF, arriving with CRLF (and the other way round).
        for (signed_form, arrived) in [
            (&b"a\nb\n"[..], &b"a\r\nb\r\n"[..]),
            (&b"a\r\nb\r\n"[..], &b"a\nb\n"[..]),
        ] {
            let sig = signed_detached(&id, signed_form);
            let v = verify(&sig, Some(arrived), &anchors, &[], now);
            assert_eq!(v.math, Math::Valid);
            assert_eq!(v.chain, Chain::Trusted);
            let v = verify(&sig, Some(b"a\r\nB\r\n"), &anchors, &[], now);
            assert!(matches!(v.math, Math::Invalid(_)), "{:?}", v.math);
        }
        // Without the certificate inside or held: unknown, not invalid;
        // held: valid.
        let bare = CmsContentInfo::sign(
            Some(&id.cert),
            Some(&id.key),
            None,
            Some(b"z"),
            CMSOptions::BINARY | CMSOptions::DETACHED | CMSOptions::CMS_NOCERTS,
        )
        .unwrap()
        .to_der()
        .unwrap();
        let v = verify(&bare, Some(b"z"), &[], &[], now);
        assert_eq!(v.math, Math::UnknownSigner);
        assert!(v.signer_id.unwrap().starts_with("issuer="));
        let v = verify(&bare, Some(b"z"), &anchors, &anchors, now);
        assert_eq!((v.math, v.chain), (Math::Valid, Chain::Trusted));
        // Checked at the time of verification: after the certificate's
        // end it is expired, whatever the signature claims.
        let later = now + 60 * 86_400;
        let v = verify(&bare, Some(b"z"), &anchors, &anchors, later);
        assert!(matches!(v.chain, Chain::Expired(_)), "{:?}", v.chain);
        assert_eq!(v.checked_at, later);
    }

    #[test]
    fn a_trusted_signer_chain_is_kept_and_others_are_checked_every_time() {
        let id = testkit::identity(1024, "Kept Chain").unwrap();
        let stranger = testkit::identity(1024, "Stranger").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let anchors = [id.cert.clone()];
        let chains = SignerChains::default();
        let kept = Some(KeptChains {
            chains: &chains,
            clock: now,
        });
        let sig = signed_detached(&id, b"z");
        let check = |content: &[u8], at: i64| {
            let v = verify_kept(&sig, Some(content), &anchors, &[], at, kept);
            (v.math, v.chain)
        };
        // Miss, then hit.
        assert_eq!(check(b"z", now), (Math::Valid, Chain::Trusted));
        assert_eq!(chains.hits(), 0);
        assert_eq!(check(b"z", now), (Math::Valid, Chain::Trusted));
        assert_eq!(chains.hits(), 1);
        // The mathematics are checked on a hit too.
        assert!(matches!(check(b"y", now).0, Math::Invalid(_)));
        // Past the certificate's end: expired, not served from the cache.
        let later = now + 60 * 86_400;
        assert!(matches!(check(b"z", later).1, Chain::Expired(_)));
        assert_eq!(chains.hits(), 1);
        // A signer that does not chain is never kept: untrusted each time.
        let other = signed_detached(&stranger, b"z");
        for _ in 0..2 {
            let v = verify_kept(&other, Some(b"z"), &anchors, &[], now, kept);
            assert_eq!(v.math, Math::Valid);
            assert!(matches!(v.chain, Chain::Untrusted(_)), "{:?}", v.chain);
        }
        assert_eq!(chains.hits(), 1);
        // And the kept one still holds.
        assert_eq!(check(b"z", now), (Math::Valid, Chain::Trusted));
        assert_eq!(chains.hits(), 2);
    }

    #[test]
    fn streamed_encryption_opens_and_a_broken_tag_gives_nothing() {
        use crate::blob::InMemory;
        let id = testkit::identity(2048, "Stream Test").unwrap();
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        for how in [Encryption::Aes256Cbc, Encryption::Aes256GcmOaep] {
            let mut der = Vec::new();
            encrypt_into(
                &mut &content[..],
                std::slice::from_ref(&id.cert),
                how,
                &mut der,
            )
            .unwrap();
            let cms = parse(&der).unwrap();
            let kind_seen = kind(&der);
            let plain = decrypt_into(&cms, &id.key, &id.cert, &InMemory).unwrap();
            assert_eq!(&*plain, &content[..], "{how:?}");
            // The in-memory decryption agrees.
            assert_eq!(decrypt(&cms, &id.key, &id.cert).unwrap(), content);
            if how == Encryption::Aes256GcmOaep {
                assert_eq!(kind_seen, Some(Kind::AuthEnveloped));
                // One ciphertext octet changed: the tag fails, nothing comes out.
                let mut bad = der.clone();
                let at = bad.len() / 2;
                bad[at] ^= 1;
                let cms = parse(&bad).unwrap();
                let err = decrypt_into(&cms, &id.key, &id.cert, &InMemory).unwrap_err();
                assert!(matches!(err, SmimeError::Decrypt(_)), "{err:?}");
            } else {
                assert_eq!(kind_seen, Some(Kind::Enveloped));
            }
        }
    }

    #[test]
    fn whole_encryption_of_parts_is_der_that_opens() {
        let id = testkit::identity(2048, "Whole Test").unwrap();
        let content: Vec<u8> = (0..200_003u32).map(|i| (i % 251) as u8).collect();
        for how in [Encryption::Aes256Cbc, Encryption::Aes256GcmOaep] {
            for (a, b) in [(0, 0), (0, 1), (7, 16), (1000, 70_001), (0, content.len())] {
                let parts = [&content[..a], &content[a..b]];
                let der = encrypt_parts(&parts, std::slice::from_ref(&id.cert), how).unwrap();
                // DER: the definite-length form a parse encodes again unchanged.
                let cms = parse(&der).unwrap();
                assert_eq!(cms.to_der().unwrap(), der, "{how:?} {a}..{b}");
                assert_eq!(
                    decrypt(&cms, &id.key, &id.cert).unwrap(),
                    &content[..b],
                    "{how:?} {a}..{b}"
                );
            }
        }
        // The one-slice form is the same operation.
        let der = encrypt(b"x", std::slice::from_ref(&id.cert), Encryption::Aes256Cbc).unwrap();
        let cms = parse(&der).unwrap();
        assert_eq!(decrypt(&cms, &id.key, &id.cert).unwrap(), b"x");
    }
}

//! CMS operations through OpenSSL: what a structure is, decrypting with a
//! chosen key, encrypting to certificates, verifying signatures as of the
//! signing time. Bytes, keys and certificates in; bytes and verdicts out.

use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::nid::Nid;
use openssl::pkey::{PKeyRef, Private};
use openssl::stack::Stack;
use openssl::symm::Cipher;
use openssl::x509::{X509Ref, X509};

use super::SmimeError;
use crate::config::Encryption;
use crate::ossl;
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

pub fn kind_of(oid: &str) -> Kind {
    match oid {
        OID_ENVELOPED => Kind::Enveloped,
        OID_AUTH_ENVELOPED => Kind::AuthEnveloped,
        OID_SIGNED => Kind::Signed,
        _ => Kind::Other,
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

/// Envelopes `data` for `recipients`.
pub fn encrypt(data: &[u8], recipients: &[X509], how: Encryption) -> Result<Vec<u8>, SmimeError> {
    let built = match how {
        Encryption::Aes256Cbc => {
            let mut stack = Stack::new().map_err(|e| SmimeError::Encrypt(short(&e)))?;
            for c in recipients {
                stack
                    .push(c.clone())
                    .map_err(|e| SmimeError::Encrypt(short(&e)))?;
            }
            CmsContentInfo::encrypt(&stack, data, Cipher::aes_256_cbc(), CMSOptions::BINARY)
        }
        Encryption::Aes256GcmOaep => ossl::encrypt_oaep(recipients, data, Cipher::aes_256_gcm()),
    };
    built
        .and_then(|c| c.to_der())
        .map_err(|e| SmimeError::Encrypt(short(&e)))
}

/// The verdict on a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigStatus {
    /// Mathematically valid and chained to a trust anchor.
    Valid,
    /// Mathematically valid, but the signer does not chain to an anchor
    /// (or its certificate was not valid at signing time).
    Untrusted,
    /// The content does not match the signature.
    Invalid,
}

impl std::fmt::Display for SigStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigStatus::Valid => "valid",
            SigStatus::Untrusted => "untrusted",
            SigStatus::Invalid => "invalid",
        })
    }
}

/// What verification found.
#[derive(Debug, Clone)]
pub struct Verified {
    pub status: SigStatus,
    pub signer: Option<X509>,
    /// Why it is not valid.
    pub detail: Option<String>,
    /// The signed content (opaque signatures only).
    pub content: Option<Vec<u8>>,
    /// Signing time used for the chain check (Unix seconds).
    pub at: i64,
    /// SMIMECapabilities the signer announced (dotted OIDs).
    pub capabilities: Vec<String>,
    /// The signing time the signature claims (Unix seconds), if any.
    pub signing_time: Option<i64>,
}

/// Verifies a signature: detached over `detached` (the exact signed bytes)
/// or opaque (content inside). The chain is checked against `anchors` as of
/// the signing time (`now` when the signature carries none).
pub fn verify(sig: &[u8], detached: Option<&[u8]>, anchors: &[X509], now: i64) -> Verified {
    let mut cms = match parse(sig) {
        Ok(c) => c,
        Err(e) => {
            return Verified {
                status: SigStatus::Invalid,
                signer: None,
                detail: Some(format!("signature is not usable CMS: {e}")),
                content: None,
                at: now,
                capabilities: Vec::new(),
                signing_time: None,
            }
        }
    };
    let signing_time = ossl::signing_time(&cms);
    let at = signing_time.unwrap_or(now);
    let store = match store_at(anchors, at) {
        Ok(s) => s,
        Err(e) => {
            return Verified {
                status: SigStatus::Untrusted,
                signer: None,
                detail: Some(short(&e)),
                content: None,
                at,
                capabilities: Vec::new(),
                signing_time,
            }
        }
    };
    let mut content = Vec::new();
    let trusted = cms.verify(
        None,
        Some(&store),
        detached,
        Some(&mut content),
        CMSOptions::BINARY,
    );
    let (status, detail) = match trusted {
        Ok(()) => (SigStatus::Valid, None),
        Err(chain_err) => {
            content.clear();
            let math = cms.verify(
                None,
                Some(&store),
                detached,
                Some(&mut content),
                CMSOptions::BINARY | CMSOptions::NO_SIGNER_CERT_VERIFY,
            );
            match math {
                Ok(()) => (SigStatus::Untrusted, Some(chain_reason(&chain_err))),
                Err(e) => (SigStatus::Invalid, Some(short(&e))),
            }
        }
    };
    let signer = ossl::signers(&cms).into_iter().next();
    Verified {
        status,
        signer,
        detail,
        content: (detached.is_none() && status != SigStatus::Invalid).then_some(content),
        at,
        capabilities: ossl::capabilities(&cms),
        signing_time,
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

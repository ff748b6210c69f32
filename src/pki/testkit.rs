//! Throw-away identities for tests, benchmarks and fuzzing: a fresh RSA key
//! with a self-signed certificate. Never for real mail.

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509NameBuilder, X509};

use super::oces;
use super::Identity;

/// A self-signed identity with an RSA key of `bits`, valid for 30 days.
pub fn identity(bits: u32, cn: &str) -> Result<Identity, String> {
    let e = |x: openssl::error::ErrorStack| x.to_string();
    let key = PKey::from_rsa(Rsa::generate(bits).map_err(e)?).map_err(e)?;
    let mut name = X509NameBuilder::new().map_err(e)?;
    name.append_entry_by_text("CN", cn).map_err(e)?;
    let name = name.build();
    let mut b = X509::builder().map_err(e)?;
    b.set_version(2).map_err(e)?;
    let serial = BigNum::from_u32(bits)
        .and_then(|n| n.to_asn1_integer())
        .map_err(e)?;
    b.set_serial_number(&serial).map_err(e)?;
    b.set_subject_name(&name).map_err(e)?;
    b.set_issuer_name(&name).map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    let (from, to) = (
        Asn1Time::days_from_now(0).map_err(e)?,
        Asn1Time::days_from_now(30).map_err(e)?,
    );
    b.set_not_before(&from).map_err(e)?;
    b.set_not_after(&to).map_err(e)?;
    b.sign(&key, MessageDigest::sha256()).map_err(e)?;
    let cert = b.build();
    let info = oces::classify(&cert.to_der().map_err(e)?).map_err(|x| x.to_string())?;
    Ok(Identity {
        cert,
        key,
        chain: Vec::new(),
        info,
        mailboxes: Vec::new(),
        decrypt_for: None,
        source: Default::default(),
    })
}

/// Signed data (DER) by `id` with `content` inside.
pub fn signed(id: &Identity, content: &[u8]) -> Result<Vec<u8>, String> {
    use openssl::cms::{CMSOptions, CmsContentInfo};
    CmsContentInfo::sign(
        Some(&id.cert),
        Some(&id.key),
        None,
        Some(content),
        CMSOptions::BINARY,
    )
    .and_then(|c| c.to_der())
    .map_err(|e| e.to_string())
}

//! What is worked out about a certificate the gateway meets on every
//! message (a recipient's from the directory, the organisation's own):
//! its SHA-256 fingerprint and its OCES generation, each found once and
//! then looked up. Kept by certificate object: a cloned `X509` shares the
//! object, so the directory's and the keyring's certificates are found
//! again; the memo holds a reference to each, so an address it knows can
//! never be reused by another certificate. Only for certificates that
//! live on (directory, keyring, LDAP answers): one parsed from a message
//! is worked out with [`sha256_hex`] and not kept. At most [`KEPT`] are
//! kept (then the memo starts afresh).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use foreign_types::ForeignType;
use openssl::hash::MessageDigest;
use openssl::x509::X509;

use super::oces::{self, Generation};

/// Certificates kept at most.
const KEPT: usize = 1024;

#[derive(Clone)]
struct Facts {
    fingerprint: String,
    generation: Generation,
}

/// By the certificate object's address; the `X509` keeps it alive.
type Memo = HashMap<usize, (X509, Facts)>;

fn memo() -> &'static Mutex<Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(Mutex::default)
}

fn facts(cert: &X509) -> Facts {
    let key = cert.as_ptr() as usize;
    if let Some((_, f)) = memo().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return f.clone();
    }
    let found = Facts {
        fingerprint: sha256_hex(cert),
        generation: cert
            .to_der()
            .ok()
            .and_then(|d| oces::classify(&d).ok())
            .map(|i| i.generation)
            .unwrap_or(Generation::Other),
    };
    let mut memo = memo().lock().unwrap_or_else(|p| p.into_inner());
    if memo.len() >= KEPT {
        memo.clear();
    }
    memo.insert(key, (cert.clone(), found.clone()));
    found
}

/// The certificate's SHA-256 fingerprint in hex.
pub fn fingerprint(cert: &X509) -> String {
    facts(cert).fingerprint
}

/// The certificate's OCES generation (`Other` when it is none, or cannot
/// be read).
pub fn generation(cert: &X509) -> Generation {
    facts(cert).generation
}

/// SHA-256 of the certificate's DER in hex, computed.
pub fn sha256_hex(cert: &X509) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    cert.digest(MessageDigest::sha256())
        .map(|d| {
            let mut out = String::with_capacity(d.len() * 2);
            for b in d.iter() {
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
            out
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_those_computed_and_follow_the_certificate_object() {
        let a = crate::pki::testkit::identity(1024, "A").unwrap().cert;
        let b = crate::pki::testkit::identity(1024, "B").unwrap().cert;
        assert_eq!(fingerprint(&a), sha256_hex(&a));
        assert_eq!(
            fingerprint(&a),
            fingerprint(&a.clone()),
            "a clone is the same object"
        );
        // Control: another certificate has its own.
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&b), sha256_hex(&b));
        // The same certificate parsed again is another object, same facts.
        let again = X509::from_der(&a.to_der().unwrap()).unwrap();
        assert_eq!(fingerprint(&again), sha256_hex(&a));
        assert_eq!(generation(&a), Generation::Other);
    }

    #[test]
    fn a_freed_certificates_address_never_answers_for_another() {
        // Many short-lived certificates: each answer is its own, whatever
        // addresses the allocator hands out, and the memo stays bounded.
        let der: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                crate::pki::testkit::identity(1024, &format!("C{i}"))
                    .unwrap()
                    .cert
                    .to_der()
                    .unwrap()
            })
            .collect();
        for n in 0..(KEPT + 100) {
            let c = X509::from_der(&der[n % 4]).unwrap();
            assert_eq!(fingerprint(&c), sha256_hex(&c));
        }
        assert!(memo().lock().unwrap().len() <= KEPT);
    }
}

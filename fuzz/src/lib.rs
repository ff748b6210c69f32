//! What the fuzz targets share: the fixed TEST ONLY identities and trust
//! anchors under fuzz/keys/ (compiled in, so every run and every machine
//! sees the same keys and a seed encrypted to them decrypts), and the fixed
//! `now` signatures without a signing time are checked at.

use std::sync::OnceLock;

use openssl::pkey::PKey;
use openssl::x509::X509;
use smime_gateway::pki::oces;
use smime_gateway::pki::Identity;
use smime_gateway::smime::unwrap::{unwrap, Unwrapped};

/// 2026-11-30T00:00:00Z: inside every fixed key's validity.
pub const NOW: i64 = 1_796_083_200;

/// The fixed keys and anchors.
pub struct Fixtures {
    /// The organisation's OCES2-like key (decrypts).
    pub org_oces2: Identity,
    /// The organisation's OCES3-like key (decrypts, signs).
    pub org_oces3: Identity,
    /// An external OCES3-like sender (signs).
    pub court_oces3: Identity,
    /// OCES2-like and OCES3-like roots and issuing CAs.
    pub anchors: Vec<X509>,
}

impl Fixtures {
    /// The candidate keys for a message to the organisation, as the
    /// pipeline passes them (most specific first).
    pub fn keys(&self) -> [&Identity; 2] {
        [&self.org_oces3, &self.org_oces2]
    }
}

fn identity(chain_pem: &[u8], key_pem: &[u8]) -> Identity {
    let mut chain = X509::stack_from_pem(chain_pem).expect("fixed certificate");
    let cert = chain.remove(0);
    let key = PKey::private_key_from_pem(key_pem).expect("fixed key");
    let info = oces::classify(&cert.to_der().expect("DER")).expect("OCES classification");
    Identity {
        cert,
        key,
        chain,
        info,
        mailboxes: Vec::new(),
        decrypt_for: None,
        source: Default::default(),
    }
}

/// The fixtures, loaded once per process.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let mut anchors = Vec::new();
        for pem in [
            &include_bytes!("../keys/trust/oces2-root.pem")[..],
            include_bytes!("../keys/trust/oces2-ca.pem"),
            include_bytes!("../keys/trust/oces3-root.pem"),
            include_bytes!("../keys/trust/oces3-ca.pem"),
        ] {
            anchors.push(X509::from_pem(pem).expect("fixed anchor"));
        }
        Fixtures {
            org_oces2: identity(
                include_bytes!("../keys/org-oces2.crt.pem"),
                include_bytes!("../keys/org-oces2.key.pem"),
            ),
            org_oces3: identity(
                include_bytes!("../keys/org-oces3.crt.pem"),
                include_bytes!("../keys/org-oces3.key.pem"),
            ),
            court_oces3: identity(
                include_bytes!("../keys/court-oces3.crt.pem"),
                include_bytes!("../keys/court-oces3.key.pem"),
            ),
            anchors,
        }
    })
}

/// What the `unwrap` target does with one input.
pub fn unwrap_input(data: &[u8]) -> Unwrapped {
    let f = fixtures();
    unwrap(data, &f.keys(), &f.anchors, NOW)
}

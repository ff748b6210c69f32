//! Fuzz target for the inbound path: any bytes as a message, taken through
//! S/MIME recognition, decryption with a real key and signature
//! verification. Must never panic. Run with (nightly toolchain):
//!   cargo fuzz run unwrap -- -max_total_time=60
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509NameBuilder, X509};
use smime_gateway::pki::{oces, Identity};
use smime_gateway::smime::unwrap::unwrap;

fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_text("CN", "Fuzz").expect("cn");
        let name = name.build();
        let mut b = X509::builder().expect("builder");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("t")).expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(1).expect("t")).expect("na");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        let cert = b.build();
        let info = oces::classify(&cert.to_der().expect("der")).expect("classify");
        Identity { cert, key, chain: Vec::new(), info, mailboxes: Vec::new(), source: Default::default() }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = unwrap(data, &[identity()], &[], 0);
});

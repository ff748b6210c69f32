//! Unit tests of the certificate directory: lookup, harvest binding,
//! capabilities by signing time.

use super::*;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::X509NameBuilder;

/// A self-signed certificate naming `emails`.
fn cert(cn: &str, emails: &[&str]) -> X509 {
    let key = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    let mut san = SubjectAlternativeName::new();
    for e in emails {
        san.email(e);
    }
    let ext = san.build(&b.x509v3_context(None, None)).unwrap();
    b.append_extension(ext).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn caps(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn harvested_certificates_are_found_only_under_the_bound_address() {
    let spool = tempfile::tempdir().unwrap();
    let dir = Directory::load(&[], Some(&spool.path().join("h"))).unwrap();
    let c = cert("Two Names", &["post@domstol.dk", "other@domstol.dk"]);
    assert!(dir.harvest(&c, "post@domstol.dk", &[], Some(10)).unwrap());
    assert_eq!(dir.lookup("post@domstol.dk").len(), 1);
    assert!(dir.lookup("other@domstol.dk").is_empty());
    // Survives a restart with its binding.
    let again = Directory::load(&[], Some(&spool.path().join("h"))).unwrap();
    assert_eq!(again.lookup("POST@domstol.dk").len(), 1);
    assert!(again.lookup("other@domstol.dk").is_empty());
    assert_eq!(again.lookup("post@domstol.dk")[0].source, Source::Harvested);
}

#[test]
fn the_directory_wins_over_harvest() {
    let spool = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let genuine = cert("Court", &["post@domstol.dk"]);
    fs::write(folder.path().join("court.pem"), genuine.to_pem().unwrap()).unwrap();
    let dir = Directory::load(
        &[folder.path().to_path_buf()],
        Some(&spool.path().join("h")),
    )
    .unwrap();
    let other = cert("Also Court", &["post@domstol.dk"]);
    assert!(dir
        .harvest(&other, "post@domstol.dk", &[], Some(1))
        .unwrap());
    let found = dir.lookup("post@domstol.dk");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].fingerprint, fingerprint(&genuine));
    // Harvesting the directory's own certificate changes nothing.
    assert!(!dir
        .harvest(&genuine, "post@domstol.dk", &[], Some(1))
        .unwrap());
}

#[test]
fn only_a_newer_signature_changes_capabilities() {
    let spool = tempfile::tempdir().unwrap();
    let h = spool.path().join("h");
    let dir = Directory::load(&[], Some(&h)).unwrap();
    let c = cert("Court", &["post@domstol.dk"]);
    let gcm = caps(&[AES_256_GCM, RSAES_OAEP]);
    let cbc = caps(&["2.16.840.1.101.3.4.1.42"]);
    assert!(dir.harvest(&c, "post@domstol.dk", &gcm, Some(200)).unwrap());
    // A replayed older signature: no downgrade.
    assert!(!dir.harvest(&c, "post@domstol.dk", &cbc, Some(100)).unwrap());
    assert!(!dir.harvest(&c, "post@domstol.dk", &cbc, None).unwrap());
    assert!(dir.lookup("post@domstol.dk")[0].announces_gcm_oaep());
    // Not after a restart either.
    let again = Directory::load(&[], Some(&h)).unwrap();
    assert!(!again
        .harvest(&c, "post@domstol.dk", &cbc, Some(200))
        .unwrap());
    assert!(again.lookup("post@domstol.dk")[0].announces_gcm_oaep());
    // A newer one does change them.
    assert!(again
        .harvest(&c, "post@domstol.dk", &cbc, Some(300))
        .unwrap());
    assert!(!again.lookup("post@domstol.dk")[0].announces_gcm_oaep());
}

#[test]
fn a_harvested_file_without_its_binding_record_is_not_used() {
    let spool = tempfile::tempdir().unwrap();
    let h = spool.path().join("h");
    fs::create_dir_all(&h).unwrap();
    let c = cert("Court", &["post@domstol.dk"]);
    fs::write(h.join("old.pem"), c.to_pem().unwrap()).unwrap();
    let dir = Directory::load(&[], Some(&h)).unwrap();
    assert!(dir.lookup("post@domstol.dk").is_empty());
}

#[test]
fn a_fingerprint_is_the_lower_case_hex_of_the_sha256_of_the_der() {
    let id = crate::pki::testkit::identity(1024, "Fingerprint").unwrap();
    let digest = id
        .cert
        .digest(openssl::hash::MessageDigest::sha256())
        .unwrap();
    let want: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(fingerprint(&id.cert), want);
    assert_eq!(want.len(), 64);
}

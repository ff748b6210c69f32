//! Identities and the demo PKI: `pki demo` output, `keys list`, clear
//! errors for bad key files, OCES classification of the demo certificates
//! and of the real OCES2/OCES3 test certificates in
//! `../shared/fixtures/oces/` (skipped with a reason when absent).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::pki;
use common::BIN;
use smime_gateway::pki::oces::{self, Generation, Kind};

fn pem_der(path: &Path) -> Vec<u8> {
    openssl::x509::X509::from_pem(&std::fs::read(path).unwrap())
        .unwrap()
        .to_der()
        .unwrap()
}

#[test]
fn demo_pki_has_both_generations_with_their_conventions() {
    let d = pki::demo();
    let alice2 = oces::classify(&pem_der(&pki::cert("alice-oces2"))).unwrap();
    assert_eq!(alice2.generation, Generation::Oces2);
    assert_eq!(alice2.kind, Kind::Employee);
    assert_eq!(alice2.cvr.as_deref(), Some("12345678"));
    assert_eq!(alice2.emails, vec!["alice@example-law.dk".to_string()]);
    let alice3 = oces::classify(&pem_der(&pki::cert("alice-oces3"))).unwrap();
    assert_eq!(
        (alice3.generation, alice3.kind),
        (Generation::Oces3, Kind::User)
    );
    let org3 = oces::classify(&pem_der(&pki::cert("org-oces3"))).unwrap();
    assert_eq!(org3.generation, Generation::Oces3);
    assert_eq!(org3.kind, Kind::Organisation);
    assert_eq!(org3.cvr.as_deref(), Some("12345678"));
    let court2 = oces::classify(&pem_der(&pki::cert("court-oces2"))).unwrap();
    assert_eq!(
        (court2.generation, court2.kind),
        (Generation::Oces2, Kind::Company)
    );
    let expired = oces::classify(&pem_der(&pki::cert("alice-oces2-expired"))).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(!expired.valid_at(now));

    // OpenSSL agrees on the chains (RSASSA-PSS for OCES3), the CRL lists
    // the revoked key, and the PKCS#12 files use the legacy algorithms.
    let chain: Vec<u8> = ["oces2-root", "oces2-ca", "oces3-root", "oces3-ca"]
        .iter()
        .flat_map(|n| std::fs::read(d.join(format!("trust/{n}.pem"))).unwrap())
        .collect();
    let cafile = d.join("all-anchors.pem");
    std::fs::write(&cafile, chain).unwrap();
    let text = pki::openssl(
        &[
            "x509",
            "-noout",
            "-text",
            "-in",
            pki::cert("org-oces3").to_str().unwrap(),
        ],
        b"",
    );
    assert!(String::from_utf8_lossy(&text).contains("rsassaPss"));
    for name in ["org-oces3", "alice-oces2", "court-oces3"] {
        pki::openssl(
            &[
                "verify",
                "-CAfile",
                cafile.to_str().unwrap(),
                pki::cert(name).to_str().unwrap(),
            ],
            b"",
        );
    }
    let crl = pki::openssl(
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            d.join("crl/oces2-ca.crl").to_str().unwrap(),
        ],
        b"",
    );
    let crl_pem = d.join("oces2.crl.pem");
    std::fs::write(&crl_pem, crl).unwrap();
    let revoked = Command::new("openssl")
        .args([
            "verify",
            "-crl_check",
            "-CRLfile",
            crl_pem.to_str().unwrap(),
            "-CAfile",
            cafile.to_str().unwrap(),
        ])
        .arg(pki::cert("bob-oces2-revoked"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&revoked.stdout).contains("revoked")
            || String::from_utf8_lossy(&revoked.stderr).contains("revoked")
    );
    let info = Command::new("openssl")
        .args([
            "pkcs12",
            "-legacy",
            "-info",
            "-nokeys",
            "-passin",
            "pass:demo-only",
            "-in",
        ])
        .arg(d.join("keys/org-oces3.p12"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stderr).contains("pbeWithSHA1And40BitRC2-CBC"));
    let mode = std::fs::metadata(d.join("keys/org-oces3.p12"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key files must be private");
}

fn config_with(dir: &Path, identities: &str) -> PathBuf {
    let cfg = dir.join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname=\"gw.test\"\nlisten=[\"127.0.0.1:1\"]\n[spool]\ndir=\"{}\"\n\
             [relay]\ninternal=\"127.0.0.1:2\"\nexternal=\"127.0.0.1:3\"\n{identities}",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn keys_list_shows_every_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ids = format!(
        "{}{}{}",
        pki::identity("org-oces2", &[]),
        pki::identity("org-oces3", &["sikkermail@example-law.dk"]),
        pki::identity("alice-oces2-expired", &[]),
    );
    let cfg = config_with(dir.path(), &ids);
    let out = Command::new(BIN)
        .args(["keys", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let row = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .copied()
            .unwrap_or("")
    };
    let org3 = row("OCES3");
    assert!(
        org3.contains("organisation")
            && org3.contains("12345678")
            && org3.contains("sikkermail@example-law.dk"),
        "{text}"
    );
    assert!(
        org3.contains("valid") && org3.contains("decrypt, sign"),
        "{text}"
    );
    let expired = row("(expired)");
    assert!(
        expired.contains("OCES2") && expired.contains("employee") && expired.contains("expired"),
        "{text}"
    );
    assert!(
        expired.trim_end().ends_with("decrypt"),
        "an expired key may only decrypt: {text}"
    );
    assert!(text.contains("serves: sikkermail@example-law.dk"));
    assert!(text.contains("3 identities"));
}

#[test]
fn bad_key_files_get_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = pki::demo();
    let wrong_pw = dir.path().join("wrong.pass");
    std::fs::write(&wrong_pw, "nope\n").unwrap();
    std::fs::set_permissions(&wrong_pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let loose = dir.path().join("loose.p12");
    std::fs::copy(d.join("keys/org-oces3.p12"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases = [
        (
            format!("[[identity]]\npkcs12 = \"{}\"\npassword_file = \"{}\"\n", d.join("keys/org-oces3.p12").display(), wrong_pw.display()),
            "wrong password",
        ),
        (
            format!("[[identity]]\npkcs12 = \"{}/missing.p12\"\npassword_env = \"X\"\n", dir.path().display()),
            "missing.p12: cannot read",
        ),
        (
            format!(
                "[[identity]]\ncert = \"{}\"\nkey = \"{}\"\n",
                d.join("keys/org-oces3.crt.pem").display(),
                d.join("keys/org-oces2.key.pem").display()
            ),
            "does not match the certificate",
        ),
        (
            format!("[smime]\nstrict_permissions = true\n[[identity]]\npkcs12 = \"{}\"\npassword_file = \"{}\"\n", loose.display(), d.join("keys/org-oces3.pass").display()),
            "readable by group or others",
        ),
        (format!("[[identity]]\npkcs12 = \"{}\"\n", d.join("keys/org-oces3.p12").display()), "needs password_file or password_env"),
    ];
    for (ids, expect) in cases {
        let cfg = config_with(dir.path(), &ids);
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {ids}");
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
    }
    // Loose permissions without strict mode: a warning, and it loads.
    let cfg = config_with(
        dir.path(),
        &format!(
            "[[identity]]\npkcs12 = \"{}\"\npassword_file = \"{}\"\n",
            loose.display(),
            d.join("keys/org-oces3.pass").display()
        ),
    );
    let out = Command::new(BIN)
        .args(["keys", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by group or others"));
}

fn fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/oces");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: ../shared/fixtures/oces is absent (only in the development workspace)");
        None
    }
}

#[test]
fn real_oces_certificates_are_classified() {
    let Some(f) = fixtures() else { return };
    smime_gateway::pki::provider::ensure_legacy().unwrap();
    let p12 = |name: &str| {
        let der = std::fs::read(f.join(name)).unwrap();
        let parsed = openssl::pkcs12::Pkcs12::from_der(&der)
            .unwrap()
            .parse2("Test1234")
            .unwrap();
        oces::classify(&parsed.cert.unwrap().to_der().unwrap()).unwrap()
    };
    let moces = p12("oces2/MOCES_gyldig.p12");
    assert_eq!(
        (moces.generation, moces.kind),
        (Generation::Oces2, Kind::Employee)
    );
    assert_eq!(moces.cvr.as_deref(), Some("30808460"));
    assert_eq!(moces.emails, vec!["tu-support@danid.dk".to_string()]);
    let voces = p12("oces2/VOCES_gyldig.p12");
    assert_eq!(
        (voces.generation, voces.kind),
        (Generation::Oces2, Kind::Company)
    );
    let foces = p12("oces2/FOCES_spaerret.p12");
    assert_eq!(
        (foces.generation, foces.kind),
        (Generation::Oces2, Kind::Function)
    );
    let org = p12("oces3/TU-Test-organisation.p12");
    assert_eq!(
        (org.generation, org.kind),
        (Generation::Oces3, Kind::Organisation)
    );
    assert_eq!(org.cvr.as_deref(), Some("34051178"));
    let system = oces::classify(&pem_der(&f.join("oces3/skat-b2b-test-system-cert.pem"))).unwrap();
    assert_eq!(system.generation, Generation::Oces3);
    assert_eq!(system.kind, Kind::System);
    assert_eq!(system.cvr.as_deref(), Some("19552101"));
    for root in [
        "trust/prod/oces2-trust2408-primary-root.pem",
        "trust/prod/oces3-root.pem",
    ] {
        let info = oces::classify(&pem_der(&f.join(root))).unwrap();
        assert_eq!(info.kind, Kind::Authority, "{root}");
    }
}

#[test]
fn keys_list_marks_revoked_identities() {
    let crl_dir = tempfile::tempdir().unwrap();
    let server = common::http::FileServer::start(crl_dir.path().to_path_buf());
    let pki_dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["pki", "demo", "--out"])
        .arg(pki_dir.path())
        .arg("--crl-url")
        .arg(format!("http://127.0.0.1:{}/crl", server.addr.port()))
        .arg("--ocsp-url")
        .arg(format!("http://127.0.0.1:{}/none", server.addr.port()))
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::copy(
        pki_dir.path().join("crl/oces2-ca.crl"),
        crl_dir.path().join("oces2-ca.crl"),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let id = |name: &str| {
        format!(
            "[[identity]]\npkcs12 = \"{0}/keys/{name}.p12\"\npassword_file = \"{0}/keys/{name}.pass\"\n",
            pki_dir.path().display()
        )
    };
    let cfg = config_with(
        work.path(),
        &format!(
            "[trust]\nanchors = [\"{}/trust\"]\nrevocation_timeout = \"2s\"\n{}{}",
            pki_dir.path().display(),
            id("bob-oces2-revoked"),
            id("alice-oces2")
        ),
    );
    let out = Command::new(BIN)
        .args(["keys", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bob = text
        .lines()
        .find(|l| l.contains("Bob Bertelsen"))
        .unwrap_or("");
    assert!(
        bob.contains("revoked") && bob.trim_end().ends_with("decrypt"),
        "{text}"
    );
    let alice = text
        .lines()
        .find(|l| l.starts_with("Alice Andersen "))
        .unwrap_or("");
    assert!(
        alice.contains("valid") && alice.contains("decrypt, sign"),
        "{text}"
    );
}

//! Outbound S/MIME by per-recipient rules through the running gateway:
//! courts before and after the OCES2 cutoff, moving the cutoff in the file
//! of a running daemon, revocation by CRL and OCSP, expired and
//! wrong-key-usage certificates in `explain`, LDAP lookup against a real
//! slapd, harvesting, and one message fanned out into three copies.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::client::Client;
use common::pki;
use common::sink::{Received, Script, Sink};
use common::{wait_until, Gateway, Options, BIN};
use smime_gateway::smime::mime::{self, Shape};

const FUTURE: &str = "2099-01-01T00:00:00Z";
const PAST: &str = "2023-10-31T23:59:59+01:00";

const RULES: &str = r#"
[[rule]]
name = "courts"
match = ["*@domstol.dk", "*.domstol.dk"]
generation = "any"
encrypt = "required"
sign = true
on_missing_certificate = "bounce"

[[rule]]
name = "default"
match = ["*"]
generation = "any"
encrypt = "if-possible"
sign = true
on_missing_certificate = "send-plain"
"#;

/// A folder holding copies of the named demo certificates.
fn recipients(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::fs::copy(pki::cert(n), dir.path().join(format!("{n}.pem"))).unwrap();
    }
    dir
}

fn config_extra(recips: &Path, cutoff: &str, revocation: &str, more: &str) -> String {
    format!(
        "{}{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"{revocation}\"\nrevocation_timeout = \"2s\"\n\n\
         [certificates]\ndirs = [\"{}\"]\n{more}\n\n[policy]\noces2_cutoff = \"{cutoff}\"\n{RULES}",
        pki::identity("org-oces2", &[]),
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        recips.display(),
    )
}

fn gateway(sink: &Sink, recips: &Path, cutoff: &str) -> Gateway {
    let mut opts = Options::new(sink.addr);
    opts.extra = config_extra(recips, cutoff, "off", "");
    Gateway::start(opts)
}

fn send(gw: &Gateway, rcpts: &[&str], id: &str) -> Vec<u8> {
    // Alice as herself: mail the organisation may sign.
    let body = internal_message(id, "alice", "Til retten: bilag 1-3 vedlagt.");
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c.send("alice@example-law.dk", rcpts, &body).unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    body
}

/// `common::message` with `who@example-law.dk` in the header From.
fn internal_message(id: &str, who: &str, text: &str) -> Vec<u8> {
    String::from_utf8(common::message(id, text))
        .unwrap()
        .replacen(
            "From: Alice <alice@example.org>",
            &format!("From: <{who}@example-law.dk>"),
            1,
        )
        .into_bytes()
}

fn wait_for(sink: &Sink, pred: impl Fn(&Received) -> bool) -> Received {
    assert!(
        wait_until(Duration::from_secs(20), || sink
            .received()
            .iter()
            .any(&pred)),
        "expected message never arrived"
    );
    sink.received().into_iter().find(|r| pred(r)).unwrap()
}

/// Waits for `n` messages at the sink; then finds the one addressed to
/// a recipient alone.
fn copies(sink: &Sink, n: usize, gw: &Gateway) -> impl Fn(&str) -> Received {
    assert!(
        wait_until(Duration::from_secs(20), || sink.count() == n),
        "expected {n} messages, got {}: {}",
        sink.count(),
        gw.log()
    );
    let got = sink.received();
    move |rcpt: &str| {
        got.iter()
            .find(|r| r.rcpts == vec![rcpt.to_string()])
            .cloned()
            .unwrap_or_else(|| panic!("no copy for {rcpt} alone"))
    }
}

fn for_rcpt<'a>(rcpt: &'a str, id: &'a str) -> impl Fn(&Received) -> bool + 'a {
    move |r: &Received| {
        r.rcpts.iter().any(|x| x == rcpt)
            && (r.text().contains(id) || !r.text().contains("Message-ID: <"))
    }
}

/// The demo roots only: signatures must carry their intermediate CA.
fn anchors_file() -> PathBuf {
    let d = pki::demo();
    let path = d.join("anchors-roots.pem");
    if !path.exists() {
        let roots: Vec<u8> = ["oces2-root", "oces3-root"]
            .iter()
            .flat_map(|n| std::fs::read(d.join(format!("trust/{n}.pem"))).unwrap())
            .collect();
        let tmp = d.join(format!("anchors-roots.{}.tmp", std::process::id()));
        std::fs::write(&tmp, roots).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// `openssl cms -verify` of an S/MIME message against the demo anchors;
/// returns the signed content.
fn verify_signed(message: &[u8]) -> Vec<u8> {
    let anchors = anchors_file();
    pki::openssl(
        &[
            "cms",
            "-verify",
            "-CAfile",
            anchors.to_str().unwrap(),
            "-purpose",
            "any",
        ],
        message,
    )
}

/// Decrypts a copy with the court's key and checks the signature inside.
fn open_and_verify(copy: &[u8], key: &str) -> Vec<u8> {
    let inner = pki::cms_decrypt_smime(copy, key);
    let inner = pki::crlf(&inner);
    assert!(
        String::from_utf8_lossy(&inner).contains("multipart/signed"),
        "not signed inside"
    );
    verify_signed(&inner);
    inner
}

fn write_config_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn courts_before_and_after_the_cutoff_and_moving_it_live() {
    let sink = Sink::start(Script::default());
    let only_oces2 = recipients(&["court-oces2"]);
    let gw = gateway(&sink, only_oces2.path(), FUTURE);

    // Before the cutoff: the court's OCES2 certificate may be used.
    send(&gw, &["post@domstol.dk"], "court-1");
    let copy = wait_for(&sink, for_rcpt("post@domstol.dk", ""));
    assert!(
        copy.text().contains("application/pkcs7-mime"),
        "not encrypted: {}",
        copy.text()
    );
    open_and_verify(&copy.data, "court-oces2");
    assert!(gw.log().contains("rule courts: encrypted"), "{}", gw.log());

    // A broken edit is rejected; the old rules keep working.
    let original = std::fs::read_to_string(&gw.config).unwrap();
    write_config_by_rename(&gw.config, &original.replace(FUTURE, "next tuesday"));
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .log()
            .contains("configuration not reloaded")),
        "{}",
        gw.log()
    );
    send(&gw, &["post@domstol.dk"], "court-2");
    assert!(wait_until(Duration::from_secs(20), || sink.count() == 2));
    let copy = sink.received()[1].clone();
    open_and_verify(&copy.data, "court-oces2");

    // Moving the cutoff into the past, without a restart: OCES2 is no
    // longer used, and with no OCES3 certificate the court mail bounces.
    write_config_by_rename(&gw.config, &original.replace(FUTURE, PAST));
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .log()
            .contains("configuration reloaded")),
        "{}",
        gw.log()
    );
    send(&gw, &["post@domstol.dk"], "court-3");
    let dsn = wait_for(&sink, |r| r.from.is_empty());
    assert_eq!(dsn.rcpts, vec!["alice@example-law.dk".to_string()]);
    let text = dsn.text();
    assert!(
        text.contains("Final-Recipient: rfc822; post@domstol.dk"),
        "{text}"
    );
    assert!(
        text.contains("no valid OCES3 certificate for post@domstol.dk after 2023-10-31"),
        "{text}"
    );
    assert!(text.contains("courts"), "{text}");
    assert_eq!(sink.count(), 3, "the court got a copy after the cutoff");
}

#[test]
fn after_the_cutoff_only_oces3_is_used_and_gpgsm_reads_the_result() {
    let sink = Sink::start(Script::default());
    let both = recipients(&["court-oces2", "court-oces3"]);
    let gw = gateway(&sink, both.path(), PAST);
    send(&gw, &["post@domstol.dk"], "court-3a");
    let copy = wait_for(&sink, for_rcpt("post@domstol.dk", ""));
    // OCES3 key opens it, the old OCES2 key does not; the organisation's
    // own OCES3 key does (encrypt_to_self).
    let inner = open_and_verify(&copy.data, "court-oces3");
    pki::cms_decrypt_smime(&copy.data, "org-oces3");
    assert!(
        pki::cms_decrypt_fails(&copy.data, "court-oces2"),
        "OCES2 key opened mail sent after the cutoff"
    );
    // Signed with the organisation's OCES3 identity.
    let signer = pki::openssl(&["cms", "-cmsout", "-print", "-inform", "SMIME"], &inner);
    assert!(String::from_utf8_lossy(&signer).contains("Example Law ApS"));

    // gpgsm (CBC + PKCS#1 v1.5 is what it reads) decrypts and verifies.
    let home = pki::gpgsm_home();
    pki::gpgsm_import_key(home.path(), "court-oces3");
    let plain = pki::gpgsm_decrypt(home.path(), &pki::body_der(&copy.data));
    let plain = pki::crlf(&plain);
    let Shape::DetachedSigned { content, signature } = mime::shape(&plain) else {
        panic!(
            "gpgsm output is not multipart/signed: {}",
            String::from_utf8_lossy(&plain)
        );
    };
    let status = pki::gpgsm_verify(home.path(), &signature, &content);
    assert!(
        status.contains("GOODSIG") || status.contains("Good signature"),
        "{status}"
    );
    assert!(String::from_utf8_lossy(&content).contains("Til retten"));
}

#[test]
fn one_message_to_a_court_an_unknown_external_and_an_internal_recipient() {
    let sink = Sink::start(Script::default());
    let both = recipients(&["court-oces3"]);
    let metrics_port = common::free_port();
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        config_extra(both.path(), PAST, "off", "")
    );
    let gw = Gateway::start(opts);
    let original = send(
        &gw,
        &[
            "post@domstol.dk",
            "someone@unknown.example",
            "bob@example-law.dk",
        ],
        "fan-1",
    );
    let find = copies(&sink, 3, &gw);
    let court = find("post@domstol.dk");
    assert!(court.text().contains("smime-type=enveloped-data"));
    open_and_verify(&court.data, "court-oces3");
    let unknown = find("someone@unknown.example");
    assert!(
        unknown.text().contains("multipart/signed"),
        "default rule signs: {}",
        unknown.text()
    );
    verify_signed(&unknown.data);
    let internal = find("bob@example-law.dk");
    assert_eq!(internal.data, original, "internal copy must be unchanged");
    // What happened is counted.
    let (_, metrics) = common::http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"));
    for needle in [
        "smimegw_rule_hits_total{rule=\"courts\"} 1",
        "smimegw_rule_hits_total{rule=\"default\"} 1",
        "smimegw_signed_total{generation=\"OCES3\"} 2",
        "smimegw_encrypted_total{generation=\"OCES3\"} 2",
        "smimegw_certificate_lookups_total{source=\"local\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "missing {needle:?} in:\n{metrics}"
        );
    }
}

/// A demo PKI whose certificates point at this test's CRL and OCSP ports.
fn pki_with_urls(crl_port: u16, ocsp_port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["pki", "demo", "--out"])
        .arg(dir.path())
        .arg("--crl-url")
        .arg(format!("http://127.0.0.1:{crl_port}/crl"))
        .arg("--ocsp-url")
        .arg(format!("http://127.0.0.1:{ocsp_port}/ocsp"))
        .output()
        .unwrap();
    assert!(out.status.success());
    dir
}

fn explain(config: &Path, rcpt: &str) -> (String, bool) {
    common::explain(config, rcpt, &[])
}

/// A configuration for `explain` where the demo PKI's addresses
/// (example-law.dk) are external counterparties under a strict rule.
fn explain_config(dir: &Path, pki_dir: &Path, recips: &Path, revocation: &str) -> PathBuf {
    let cfg = dir.join("explain.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname=\"gw.test\"\nlisten=[\"127.0.0.1:1\"]\ninternal_domains=[\"gw.test\"]\n\
             [spool]\ndir=\"{}\"\n[relay]\ninternal=\"127.0.0.1:2\"\nexternal=\"127.0.0.1:3\"\n\
             [trust]\nanchors=[\"{}\"]\nrevocation=\"{revocation}\"\nrevocation_timeout=\"2s\"\n\
             [certificates]\ndirs=[\"{}\"]\n\
             [[rule]]\nname=\"strict\"\nmatch=[\"*\"]\nencrypt=\"required\"\non_missing_certificate=\"bounce\"\n",
            dir.join("spool").display(),
            pki_dir.join("trust").display(),
            recips.display()
        ),
    )
    .unwrap();
    cfg
}

/// An OCSP responder on 127.0.0.1:`port` for the demo OCES2 CA: the test's
/// HTTP server hands each request to `openssl ocsp` (`-reqin`/`-respout`,
/// the same responder logic as `openssl ocsp -port`, which cannot be bound
/// to 127.0.0.1 only), with `revoked` certificates marked in its index.
fn ocsp_responder(
    pki_dir: &Path,
    port: u16,
    valid: &[&str],
    revoked: &[&str],
) -> common::http::FileServer {
    let mut index = String::new();
    for (names, state) in [(valid, "V"), (revoked, "R")] {
        for n in names {
            let serial = pki::openssl(
                &[
                    "x509",
                    "-noout",
                    "-serial",
                    "-in",
                    pki_dir.join(format!("certs/{n}.pem")).to_str().unwrap(),
                ],
                b"",
            );
            let serial = String::from_utf8_lossy(&serial)
                .trim()
                .trim_start_matches("serial=")
                .to_string();
            let revoked_at = if state == "R" { "240101000000Z" } else { "" };
            index.push_str(&format!(
                "{state}\t301231235959Z\t{revoked_at}\t{serial}\tunknown\t/CN={n}\n"
            ));
        }
    }
    let idx = pki_dir.join("ocsp-index.txt");
    std::fs::write(&idx, index).unwrap();
    let ca = pki_dir.join("crl/oces2-ca.pem");
    let key = pki_dir.join("crl/oces2-ca.key.pem");
    let work = pki_dir.to_path_buf();
    let handler: common::http::OcspHandler = Box::new(move |req: &[u8]| {
        let (reqin, respout) = (work.join("ocsp.req"), work.join("ocsp.resp"));
        std::fs::write(&reqin, req).ok()?;
        let status = Command::new("openssl")
            .args([
                "ocsp",
                "-index",
                idx.to_str()?,
                "-rsigner",
                ca.to_str()?,
                "-rkey",
                key.to_str()?,
                "-CA",
                ca.to_str()?,
                "-ndays",
                "1",
                "-reqin",
                reqin.to_str()?,
                "-respout",
                respout.to_str()?,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status
            .success()
            .then(|| std::fs::read(&respout).ok())
            .flatten()
    });
    let server =
        common::http::FileServer::start_on(port, PathBuf::from("/nonexistent"), Some(handler));
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    server
}

#[test]
fn expired_revoked_and_wrong_key_usage_certificates_are_refused_in_explain() {
    let crl_server_dir = tempfile::tempdir().unwrap();
    let crl_server = common::http::FileServer::start(crl_server_dir.path().to_path_buf());
    let ocsp_port = common::free_port();
    let pki_dir = pki_with_urls(crl_server.addr.port(), ocsp_port);
    let p = pki_dir.path();
    std::fs::copy(
        p.join("crl/oces2-ca.crl"),
        crl_server_dir.path().join("oces2-ca.crl"),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let recips = work.path().join("recips");
    std::fs::create_dir(&recips).unwrap();
    for n in ["alice-oces2-expired", "bob-oces2-revoked", "alice-oces2"] {
        std::fs::copy(
            p.join(format!("certs/{n}.pem")),
            recips.join(format!("{n}.pem")),
        )
        .unwrap();
    }
    // A certificate that may only sign.
    let signonly_key = work.path().join("signonly.key");
    let signonly = recips.join("signonly.pem");
    pki::openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            signonly_key.to_str().unwrap(),
            "-out",
            signonly.to_str().unwrap(),
            "-days",
            "30",
            "-subj",
            "/CN=Sign Only",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "subjectAltName=email:signonly@partner.example",
        ],
        b"",
    );
    let cfg = explain_config(work.path(), p, &recips, "hard-fail");

    // The same address as an internal mailbox: explain says what the
    // daemon does with it (opened for the mailbox), not what a rule would.
    let internal = work.path().join("internal.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "internal_domains=[\"gw.test\"]",
        "internal_domains=[\"example-law.dk\"]",
    );
    std::fs::write(&internal, text).unwrap();
    let (text, ok) = explain(&internal, "bob@example-law.dk");
    assert!(ok, "{text}");
    assert!(text.contains("mailbox:     internal"), "{text}");
    assert!(!text.contains("rule:"), "{text}");

    // CRL served, OCSP down: the CRL says revoked.
    let (text, ok) = explain(&cfg, "bob@example-law.dk");
    assert!(!ok, "{text}");
    assert!(text.contains("revoked (CRL http://127.0.0.1:"), "{text}");
    let (text, ok) = explain(&cfg, "alice@example-law.dk");
    assert!(ok, "{text}");
    assert!(text.contains("expired on"), "{text}");
    assert!(
        text.contains("usable: valid, chain trusted, not revoked (CRL"),
        "{text}"
    );
    let (text, ok) = explain(&cfg, "signonly@partner.example");
    assert!(!ok);
    assert!(
        text.contains("key usage does not allow encryption"),
        "{text}"
    );

    // CRL gone, OCSP answering: the responder says revoked / good.
    std::fs::remove_file(crl_server_dir.path().join("oces2-ca.crl")).unwrap();
    let _ocsp = ocsp_responder(p, ocsp_port, &["alice-oces2"], &["bob-oces2-revoked"]);
    let (text, ok) = explain(&cfg, "bob@example-law.dk");
    assert!(!ok, "{text}");
    assert!(text.contains("revoked (OCSP http://127.0.0.1:"), "{text}");
    let (text, ok) = explain(&cfg, "alice@example-law.dk");
    assert!(ok, "{text}");
    assert!(text.contains("not revoked (OCSP"), "{text}");
    drop(_ocsp);

    // Nothing answers: hard-fail defers, soft-fail accepts.
    let (text, ok) = explain(&cfg, "alice@example-law.dk");
    assert!(!ok && text.contains("defer (temporary)"), "{text}");
    let soft = explain_config(work.path(), p, &recips, "soft-fail");
    let (text, ok) = explain(&soft, "alice@example-law.dk");
    assert!(ok && text.contains("accepted (soft-fail)"), "{text}");
}

#[test]
fn harvest_keeps_validly_signed_senders_only() {
    let sink = Sink::start(Script::default());
    let empty = recipients(&[]);
    let gw = gateway(&sink, empty.path(), PAST);
    let content = pki::inner("signed by the court");
    let mut good = b"From: Court <post@domstol.dk>\r\nTo: <bob@example-law.dk>\r\nSubject: signed\r\nMessage-ID: <hv-1@test>\r\n".to_vec();
    good.extend_from_slice(&pki::crlf(&pki::cms_sign(&content, "court-oces3")));
    let mut bad = b"From: Stranger <stranger@example.org>\r\nTo: <bob@example-law.dk>\r\nSubject: signed\r\nMessage-ID: <hv-2@test>\r\n".to_vec();
    bad.extend_from_slice(&pki::crlf(&pki::cms_sign(&content, "stranger")));
    let mut tampered = b"From: Court <post@domstol.dk>\r\nTo: <bob@example-law.dk>\r\nSubject: signed\r\nMessage-ID: <hv-3@test>\r\n".to_vec();
    tampered.extend_from_slice(
        String::from_utf8(pki::crlf(&pki::cms_sign(&content, "court-oces2")))
            .unwrap()
            .replacen("signed by the court", "signed by the COURT", 1)
            .as_bytes(),
    );
    // Each sent by the address in its From, so only validity decides.
    for (sender, m) in [
        ("stranger@example.org", &bad),
        ("post@domstol.dk", &tampered),
        ("post@domstol.dk", &good),
    ] {
        let mut c = Client::connect(gw.addr).unwrap();
        c.ehlo().unwrap();
        assert_eq!(
            c.send(sender, &["bob@example-law.dk"], m).unwrap().code,
            250
        );
    }
    assert!(wait_until(Duration::from_secs(20), || sink.count() == 3));
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .contains("event=\"harvested\"")));
    let out = gw.cli(&["certs", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Demo Court - sikkermail") && text.contains("harvested"),
        "{text}"
    );
    assert!(
        !text.contains("Unknown Sender"),
        "untrusted signer harvested: {text}"
    );
    assert!(
        text.contains("1 certificate(s)"),
        "only the valid signer is kept: {text}"
    );
    let pems = std::fs::read_dir(gw.spool().join("harvested"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "pem"))
        .count();
    assert_eq!(pems, 1);
    // The harvested certificate is now used for outbound mail to the court.
    send(&gw, &["post@domstol.dk"], "hv-out");
    let copy = wait_for(&sink, |r| r.rcpts == vec!["post@domstol.dk".to_string()]);
    open_and_verify(&copy.data, "court-oces3");
}

/// A slapd over StartTLS whose one entry has `mail` and the demo
/// certificate `cert`, with the `[[certificates.ldap]]` table that asks
/// it (plain ldap:// answers are never a certificate to encrypt to:
/// tests/ldap_trust.rs). Dropping it stops slapd.
struct Ldap {
    config: String,
    _ca: tempfile::TempDir,
    _slapd: common::slapd::Slapd,
}

impl Ldap {
    fn holding(mail: &str, cert: &str) -> Ldap {
        let tls = common::sink::NextHopCert::issue(&["127.0.0.1"]);
        let slapd = common::slapd::Slapd::holding(mail, Some(&tls), cert);
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = ca_dir.path().join("ldap-ca.pem");
        std::fs::write(&ca, &tls.ca_pem).unwrap();
        let config = format!(
            "[[certificates.ldap]]\nurl = \"ldap://127.0.0.1:{}\"\nstarttls = true\ntls_ca = \"{}\"\n\
             base = \"c=DK\"\ntimeout = \"2s\"\ncache_ttl = \"1s\"\n",
            slapd.port,
            ca.display()
        );
        Ldap {
            config,
            _ca: ca_dir,
            _slapd: slapd,
        }
    }
}

#[test]
fn ldap_lookup_finds_certificates_and_ldap_down_defers() {
    let ldap = Ldap::holding("advokat@partner.example", "court-oces3");
    let empty = recipients(&[]);
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra = config_extra(empty.path(), PAST, "off", &ldap.config)
        .replace(
            "name = \"default\"\nmatch = [\"*\"]\ngeneration = \"any\"\nencrypt = \"if-possible\"",
            "name = \"default\"\nmatch = [\"*\"]\ngeneration = \"any\"\nencrypt = \"required\"",
        )
        .replace(
            "on_missing_certificate = \"send-plain\"",
            "on_missing_certificate = \"bounce\"",
        );
    let gw = Gateway::start(opts);
    send(&gw, &["advokat@partner.example"], "ldap-1");
    let copy = wait_for(&sink, |r| {
        r.rcpts == vec!["advokat@partner.example".to_string()]
    });
    open_and_verify(&copy.data, "court-oces3");

    drop(ldap);
    send(&gw, &["other@partner.example"], "ldap-2");
    assert!(
        wait_until(Duration::from_secs(15), || gw
            .log()
            .contains("event=\"ldap-error\"")),
        "{}",
        gw.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .log()
            .contains("event=\"deferred\"")),
        "{}",
        gw.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !sink.received().iter().any(|r| r.from.is_empty()),
        "LDAP down must not bounce"
    );
    assert_eq!(gw.queued(), 1, "the message waits in the queue");
}

#[test]
fn pss_signatures_capabilities_seven_bit_output_and_encrypted_mail_passes() {
    let sink = Sink::start(Script::default());
    let recips = recipients(&[]);
    let mut opts = Options::new(sink.addr);
    opts.extra = config_extra(recips.path(), PAST, "off", "")
        .replace("[policy]\n", "[policy]\nsignature = \"pss\"\n");
    let gw = Gateway::start(opts);
    let body = "From: Alice <alice@example-law.dk>\r\nTo: <x@unknown.example>\r\nSubject: 8-bit\r\nMessage-ID: <pss-1@test>\r\n\
                MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                Blåbærgrød på Ærø\r\n";
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(
        c.send(
            "alice@example-law.dk",
            &["x@unknown.example"],
            body.as_bytes()
        )
        .unwrap()
        .code,
        250
    );
    // Already encrypted by the sender: passed through unchanged.
    let cms = pki::cms_encrypt(
        &pki::inner("already sealed"),
        "court-oces3",
        &["-aes-256-cbc"],
    );
    let sealed = pki::enveloped_message("pss-2", "post@domstol.dk", &cms, pki::P7M);
    assert_eq!(
        c.send("alice@example-law.dk", &["post@domstol.dk"], &sealed)
            .unwrap()
            .code,
        250
    );

    let copy = wait_for(&sink, |r| r.rcpts == vec!["x@unknown.example".to_string()]);
    assert!(
        copy.data.iter().all(|b| *b < 0x80),
        "signed output is not 7-bit"
    );
    assert!(copy
        .data
        .windows(2)
        .enumerate()
        .all(|(i, w)| w[1] != b'\n' || w[0] == b'\r' || i == 0));
    verify_signed(&copy.data);
    let printed = String::from_utf8_lossy(&pki::openssl(
        &["cms", "-cmsout", "-print", "-inform", "SMIME"],
        &copy.data,
    ))
    .to_string();
    assert!(printed.contains("rsassaPss"), "not RSASSA-PSS: {printed}");
    assert!(
        printed.contains("S/MIME Capabilities") || printed.contains("1.2.840.113549.1.9.15"),
        "no SMIMECapabilities"
    );
    let verified = verify_signed(&copy.data);
    let verified = pki::crlf(&verified);
    assert!(String::from_utf8_lossy(&verified).contains("Content-Transfer-Encoding: base64"));
    assert!(String::from_utf8_lossy(&pki::body_der(&verified)).contains("Blåbærgrød på Ærø"));

    let passed = wait_for(&sink, |r| r.rcpts == vec!["post@domstol.dk".to_string()]);
    assert_eq!(
        passed.data, sealed,
        "mail encrypted by the sender must pass unchanged"
    );
}

#[test]
fn a_senders_own_signature_over_8_bit_text_still_verifies_inside_the_gateways() {
    // Interop review: Alice signs 8-bit UTF-8 text herself (openssl cms,
    // scripts); the gateway signed around it but re-encoded her signed
    // part as base64 first, so her signature no longer verified. Beside
    // it: text with no charset, re-encoded as base64 without a label, was
    // read as US-ASCII.
    let sink = Sink::start(Script::default());
    let recips = recipients(&[]);
    let mut opts = Options::new(sink.addr);
    opts.extra = config_extra(recips.path(), PAST, "off", "");
    let gw = Gateway::start(opts);
    let content =
        "Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nblåbærgrød\r\n";
    let own = pki::crlf(&pki::cms_sign(content.as_bytes(), "court-oces3"));
    let mut signed = b"From: <alice@example-law.dk>\r\nTo: <x@unknown.example>\r\n\
                       Subject: signed by Alice\r\nMessage-ID: <own-sig@test>\r\n"
        .to_vec();
    signed.extend_from_slice(&own);
    let unlabelled = "From: <alice@example-law.dk>\r\nTo: <y@unknown.example>\r\n\
                      Subject: no charset\r\nMessage-ID: <no-charset@test>\r\n\r\nHej blåbær\r\n";
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    for (rcpt, m) in [
        ("x@unknown.example", &signed[..]),
        ("y@unknown.example", unlabelled.as_bytes()),
    ] {
        assert_eq!(
            c.send("alice@example-law.dk", &[rcpt], m).unwrap().code,
            250
        );
    }

    let copy = wait_for(&sink, |r| r.rcpts == vec!["x@unknown.example".to_string()]);
    // The gateway's signature verifies, and inside it Alice's does too.
    let inner = verify_signed(&copy.data);
    assert!(String::from_utf8_lossy(&inner).contains("multipart/signed"));
    let hers = pki::run_output(
        "openssl",
        &["cms", "-verify", "-noverify", "-out", "/dev/null"],
        &inner,
    );
    assert!(
        hers.status.success(),
        "the sender's own signature no longer verifies: {}\n{}",
        String::from_utf8_lossy(&hers.stderr),
        String::from_utf8_lossy(&inner)
    );
    assert!(String::from_utf8_lossy(&inner).contains("blåbærgrød"));

    let copy = wait_for(&sink, |r| r.rcpts == vec!["y@unknown.example".to_string()]);
    let inner = String::from_utf8_lossy(&verify_signed(&copy.data)).to_string();
    assert!(inner.contains("charset=utf-8"), "{inner}");
    let parsed = mail_parser::MessageParser::default()
        .parse(inner.as_bytes())
        .unwrap();
    assert_eq!(parsed.body_text(0).unwrap().trim_end(), "Hej blåbær");
}

#[test]
fn mail_sealed_by_its_sender_to_a_refused_generation_bounces() {
    let sink = Sink::start(Script::default());
    let both = recipients(&["court-oces2", "court-oces3"]);
    let gw = gateway(&sink, both.path(), PAST);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let mut submit = |id: &str, cms: &[u8]| {
        let m = pki::enveloped_message(id, "post@domstol.dk", cms, pki::P7M);
        let r = c
            .send("alice@example-law.dk", &["post@domstol.dk"], &m)
            .unwrap();
        assert_eq!(r.code, 250, "{r:?}");
        m
    };
    let own = pki::cert("org-oces3");
    let court2 = pki::cert("court-oces2");

    // After the cutoff, sealed by the sender's client to the court's OCES2
    // certificate (and, as clients do, to the sender's own OCES3 one): the
    // court rule refuses it, so does the gateway.
    let stale = submit(
        "sealed-2",
        &pki::cms_encrypt(
            &pki::inner("sealed to OCES2"),
            "court-oces2",
            &[own.to_str().unwrap()],
        ),
    );
    // The same with AES-GCM, RSA-OAEP and the certificate named by its key
    // identifier.
    submit(
        "sealed-2-gcm",
        &pki::cms_encrypt(
            &pki::inner("sealed to OCES2 by key id"),
            "court-oces2",
            &[
                "-aes-256-gcm",
                "-keyid",
                "-recip",
                court2.to_str().unwrap(),
                "-keyopt",
                "rsa_padding_mode:oaep",
            ],
        ),
    );
    // Control: sealed to its OCES3 certificate (AES-GCM, RSA-OAEP), the
    // message goes to the court exactly as it came.
    let fresh = submit(
        "sealed-3",
        &pki::cms_encrypt_gcm(&pki::inner("sealed to OCES3"), "court-oces3"),
    );

    let passed = wait_for(&sink, for_rcpt("post@domstol.dk", "<sealed-3@test>"));
    assert!(passed.data == fresh, "sealed to OCES3: must pass unchanged");
    assert!(
        wait_until(Duration::from_secs(20), || sink
            .received()
            .iter()
            .filter(|r| r.from.is_empty())
            .count()
            == 2),
        "two bounces expected: {}",
        gw.log()
    );
    for id in ["sealed-2", "sealed-2-gcm"] {
        let dsn = sink
            .received()
            .into_iter()
            .find(|r| r.from.is_empty() && r.text().contains(&format!("<{id}@test>")))
            .unwrap_or_else(|| panic!("no bounce for {id}"));
        assert_eq!(dsn.rcpts, vec!["alice@example-law.dk".to_string()]);
        let text = dsn.text();
        assert!(
            text.contains("Final-Recipient: rfc822; post@domstol.dk"),
            "{text}"
        );
        assert!(text.contains("rule \"courts\""), "{text}");
        assert!(text.contains("OCES2"), "{text}");
        assert!(text.contains("may not be used"), "{text}");
    }
    assert!(
        !sink.received().iter().any(|r| !r.from.is_empty()
            && (r.text().contains("<sealed-2@test>") || r.text().contains("<sealed-2-gcm@test>"))),
        "a copy sealed to OCES2 reached the court"
    );

    // `explain --message` gives the operator the same answer, and why.
    let dir = tempfile::tempdir().unwrap();
    for (name, m, leaves) in [("stale.eml", &stale, false), ("fresh.eml", &fresh, true)] {
        let path = dir.path().join(name);
        std::fs::write(&path, m).unwrap();
        let out = gw.cli(&[
            "explain",
            "--rcpt",
            "post@domstol.dk",
            "--message",
            path.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), leaves, "{name}: {text}");
        assert!(
            text.contains("message:     encrypted by its sender to issuer="),
            "{text}"
        );
        assert!(text.contains("named by the message"), "{text}");
        let outcome = if leaves {
            "outcome:     unchanged"
        } else {
            "outcome:     bounce"
        };
        assert!(text.contains(outcome), "{name}: {text}");
    }
}

#[test]
fn sealed_mail_to_a_court_an_unknown_external_and_an_internal_recipient() {
    let sink = Sink::start(Script::default());
    let both = recipients(&["court-oces2", "court-oces3"]);
    let gw = gateway(&sink, both.path(), PAST);
    // Sealed to the court's OCES2 certificate and the organisation's own.
    let own = pki::cert("org-oces3");
    let cms = pki::cms_encrypt(
        &pki::inner("til retten og bob"),
        "court-oces2",
        &[own.to_str().unwrap()],
    );
    let sealed = pki::enveloped_message("sealed-fan", "post@domstol.dk", &cms, pki::P7M);
    let rcpts = [
        "post@domstol.dk",
        "someone@unknown.example",
        "bob@example-law.dk",
    ];
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c.send("alice@example-law.dk", &rcpts, &sealed).unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    // A bounce to the sender and two copies.
    let find = copies(&sink, 3, &gw);
    // The court's copy bounces; only the court is named in the bounce.
    let dsn = find("alice@example-law.dk");
    assert!(dsn.from.is_empty());
    let text = dsn.text();
    assert!(
        text.contains("Final-Recipient: rfc822; post@domstol.dk"),
        "{text}"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; someone@unknown.example"),
        "{text}"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; bob@example-law.dk"),
        "{text}"
    );
    // Nothing is known against it for the unknown recipient: unchanged.
    assert!(
        find("someone@unknown.example").data == sealed,
        "the unknown recipient's copy changed"
    );
    // The colleague gets it opened, with the organisation's key.
    let internal = find("bob@example-law.dk").text();
    assert!(internal.contains("til retten og bob"), "{internal}");
    assert!(!internal.contains("application/pkcs7-mime"), "{internal}");
}

#[test]
fn sealed_mail_is_held_against_the_certificate_ldap_has_for_it() {
    // The court's OCES2 certificate is in LDAP only; the folder holds its
    // OCES3 one, which the message is not encrypted to.
    let ldap = Ldap::holding("post@domstol.dk", "court-oces2");
    let folder = recipients(&["court-oces3"]);
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra = config_extra(folder.path(), PAST, "off", &ldap.config);
    let gw = Gateway::start(opts);
    let cms = pki::cms_encrypt(&pki::inner("sealed to OCES2"), "court-oces2", &[]);
    let sealed = pki::enveloped_message("sealed-ldap", "post@domstol.dk", &cms, pki::P7M);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c
        .send("alice@example-law.dk", &["post@domstol.dk"], &sealed)
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let dsn = wait_for(&sink, |r| r.from.is_empty());
    let text = dsn.text();
    assert!(text.contains("rule \"courts\""), "{text}");
    assert!(text.contains("OCES2") && text.contains("LDAP"), "{text}");
    assert!(
        !sink.received().iter().any(|r| !r.from.is_empty()),
        "the copy sealed to OCES2 reached the court"
    );

    // With LDAP gone, whether the message names a certificate the rule
    // takes cannot be known: it waits, it is not passed on.
    drop(ldap);
    std::thread::sleep(Duration::from_millis(1500)); // past cache_ttl
    let r = c
        .send("alice@example-law.dk", &["post@domstol.dk"], &sealed)
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(15), || gw
            .log()
            .contains("event=\"deferred\"")),
        "{}",
        gw.log()
    );
    assert_eq!(gw.queued(), 1, "the message waits in the queue");
    assert_eq!(sink.count(), 1, "only the first bounce");
}

#[test]
fn certs_import_and_show() {
    let sink = Sink::start(Script::default());
    let recips = recipients(&[]);
    let gw = gateway(&sink, recips.path(), PAST);
    let out = gw.cli(&[
        "certs",
        "import",
        pki::cert("court-oces3").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 certificate(s), 2 new"));
    let out = gw.cli(&["certs", "show", "post@domstol.dk"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"Demo Court - sikkermail\" (OCES3, organisation, directory"),
        "{text}"
    );
    assert!(text.contains("usable"), "{text}");
    let out = gw.cli(&["certs", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 certificate(s)"));
}

#[test]
fn aes_gcm_and_oaep_for_recipients_that_announced_them() {
    let sink = Sink::start(Script::default());
    let empty = recipients(&[]);
    let gw = gateway(&sink, empty.path(), PAST);
    // The court's own mail, signed by software that announces AES-256-GCM
    // and RSA-OAEP in its SMIMECapabilities (this gateway's signer).
    let d = pki::demo();
    let court = smime_gateway::pki::identity::load(
        0,
        &smime_gateway::config::IdentitySettings {
            pkcs12: Some(d.join("keys/court-oces3.p12")),
            cert: None,
            key: None,
            password_file: Some(d.join("keys/court-oces3.pass")),
            password_env: None,
            mailboxes: Vec::new(),
            decrypt_for: None,
        },
        false,
    )
    .unwrap();
    let letter = common::message("caps-in", "from the court").to_vec();
    let letter = String::from_utf8(letter).unwrap().replace(
        "From: Alice <alice@example.org>",
        "From: Court <post@domstol.dk>",
    );
    let signed = smime_gateway::smime::sign::sign(
        letter.as_bytes(),
        &court,
        smime_gateway::config::SignatureScheme::Pkcs1,
    )
    .unwrap();
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(
        c.send("post@domstol.dk", &["bob@example-law.dk"], &signed)
            .unwrap()
            .code,
        250
    );
    assert!(
        wait_until(Duration::from_secs(15), || gw
            .log()
            .contains("event=\"harvested\"")),
        "{}",
        gw.log()
    );
    let caps = std::fs::read_dir(gw.spool().join("harvested"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("capabilities kept with the harvested certificate");
    assert!(
        caps.contains("2.16.840.1.101.3.4.1.46") && caps.contains("1.2.840.113549.1.1.7"),
        "{caps}"
    );

    send(&gw, &["post@domstol.dk"], "caps-out");
    let copy = wait_for(&sink, |r| r.rcpts == vec!["post@domstol.dk".to_string()]);
    let printed = String::from_utf8_lossy(&pki::openssl(
        &["cms", "-cmsout", "-print", "-inform", "DER"],
        &pki::body_der(&copy.data),
    ))
    .to_string();
    assert!(
        printed.contains("id-smime-ct-authEnvelopedData"),
        "{printed}"
    );
    assert!(printed.contains("rsaesOaep"), "{printed}");
    open_and_verify(&copy.data, "court-oces3");
}

#[test]
fn only_mail_from_internal_senders_is_signed() {
    let sink = Sink::start(Script::default());
    let recips = recipients(&["court-oces3"]);
    let gw = gateway(&sink, recips.path(), PAST);
    let run = |from: &str| {
        let out = Command::new(BIN)
            .args(["explain", "--config"])
            .arg(&gw.config)
            .args(["--rcpt", "post@domstol.dk", "--from", from])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let outsider = run("someone@example.org");
    assert!(
        outsider.contains("signing:     nobody: the header From <someone@example.org> is not in the internal domains"),
        "{outsider}"
    );
    let insider = run("alice@example-law.dk");
    assert!(
        insider.contains("signing:     \"Example Law ApS - sikkermail\" (OCES3)"),
        "{insider}"
    );
}

#[test]
fn a_revoked_own_identity_no_longer_signs() {
    let crl_dir = tempfile::tempdir().unwrap();
    let server = common::http::FileServer::start(crl_dir.path().to_path_buf());
    let pki_dir = pki_with_urls(server.addr.port(), server.addr.port());
    let p = pki_dir.path();
    std::fs::copy(
        p.join("crl/oces2-ca.crl"),
        crl_dir.path().join("oces2-ca.crl"),
    )
    .unwrap();
    let sink = Sink::start(Script::default());
    let id = |name: &str, mailboxes: &str| {
        format!(
            "[[identity]]\npkcs12 = \"{0}/keys/{name}.p12\"\npassword_file = \"{0}/keys/{name}.pass\"\nmailboxes = [{mailboxes}]\n",
            p.display()
        )
    };
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}\n[trust]\nanchors = [\"{}/trust\"]\nrevocation_timeout = \"2s\"\n\n[policy]\noces2_cutoff = \"{FUTURE}\"\n{RULES}",
        id("bob-oces2-revoked", "\"bob@example-law.dk\""),
        p.display()
    );
    let gw = Gateway::start(opts);
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log()
            .contains("event=\"identity-revoked\"")),
        "{}",
        gw.log()
    );
    let body = internal_message("rev-1", "bob", "from bob");
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(
        c.send("bob@example-law.dk", &["x@unknown.example"], &body)
            .unwrap()
            .code,
        250
    );
    // Bob's is the only identity: revoked, it signs nothing (the default
    // rule sends plain when it cannot sign or encrypt).
    let copy = wait_for(&sink, |r| r.rcpts == vec!["x@unknown.example".to_string()]);
    assert!(
        !copy.text().contains("multipart/signed"),
        "signed with a revoked key: {}",
        copy.text()
    );
    assert!(copy.text().contains("from bob"));
    assert!(gw.log().contains("signer=\"nobody"), "{}", gw.log());
}

#[test]
fn rules_generations_windows_and_preferences_in_explain() {
    let recips = recipients(&["court-oces2", "court-oces3"]);
    let work = tempfile::tempdir().unwrap();
    let write = |name: &str, policy: &str, rules: &str| {
        let cfg = work.path().join(name);
        std::fs::write(
            &cfg,
            format!(
                "[server]\nhostname=\"gw.test\"\nlisten=[\"127.0.0.1:1\"]\ninternal_domains=[\"example-law.dk\"]\n\
                 sign_without_submission_path=true\n\
                 [spool]\ndir=\"{}\"\n[relay]\ninternal=\"127.0.0.1:2\"\nexternal=\"127.0.0.1:3\"\n\
                 {}{}[trust]\nanchors=[\"{}\"]\nrevocation=\"off\"\n[certificates]\ndirs=[\"{}\"]\n\
                 [policy]\n{policy}\n{rules}",
                work.path().join("spool").display(),
                pki::identity("org-oces2", &[]),
                pki::identity("org-oces3", &[]),
                pki::demo().join("trust").display(),
                recips.path().display()
            ),
        )
        .unwrap();
        cfg
    };
    let explain_at = |cfg: &Path, rcpt: &str, at: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["explain", "--config"]).arg(cfg).args([
            "--rcpt",
            rcpt,
            "--from",
            "alice@example-law.dk",
        ]);
        if let Some(at) = at {
            cmd.args(["--at", at]);
        }
        let out = cmd.output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            out.status.success(),
        )
    };
    let any = "[[rule]]\nname=\"courts\"\nmatch=[\"*@domstol.dk\"]\ngeneration=\"any\"\nencrypt=\"required\"\non_missing_certificate=\"bounce\"\n";

    // "any" before the cutoff: both usable, OCES3 preferred; the address in
    // any case and with a trailing dot finds the certificates.
    let cfg = write("any.toml", &format!("oces2_cutoff=\"{FUTURE}\""), any);
    let (text, ok) = explain_at(&cfg, "POST@Domstol.DK", None);
    assert!(ok, "{text}");
    assert!(
        text.contains("OCES2 certificates set aside: the recipient has a usable OCES3 one"),
        "{text}"
    );
    assert!(
        text.contains("send encrypted (Aes256Cbc) to CN=Demo Court - sikkermail"),
        "{text}"
    );

    // generation = "oces2" even after the cutoff: the rule says otherwise.
    let oces2 = any.replace("generation=\"any\"", "generation=\"oces2\"");
    let cfg = write("oces2.toml", &format!("oces2_cutoff=\"{PAST}\""), &oces2);
    let (text, ok) = explain_at(&cfg, "post@domstol.dk", None);
    assert!(ok, "{text}");
    assert!(
        text.contains("(OCES3, organisation, directory") && text.contains("allows Oces2 only"),
        "{text}"
    );
    // ... but signs with OCES3: the cutoff has passed.
    assert!(
        text.contains("signing:     \"Example Law ApS - sikkermail\" (OCES3)"),
        "{text}"
    );

    // A rule window: before `from` the courts rule does not apply, the
    // next rule does (and asks for GCM with OAEP).
    let windowed = "[[rule]]\nname=\"courts\"\nmatch=[\"*@domstol.dk\"]\ngeneration=\"oces3\"\nfrom=\"2030-01-01T00:00:00Z\"\n\
         encrypt=\"required\"\non_missing_certificate=\"bounce\"\n\
         [[rule]]\nname=\"default\"\nmatch=[\"*\"]\nencryption=\"aes256-gcm-oaep\"\n";
    let cfg = write("window.toml", "", windowed);
    let (text, _) = explain_at(&cfg, "post@domstol.dk", None);
    assert!(text.contains("rule:        \"default\""), "{text}");
    assert!(text.contains("Aes256GcmOaep"), "{text}");
    let (text, _) = explain_at(&cfg, "post@domstol.dk", Some("2030-06-01T00:00:00Z"));
    assert!(
        text.contains("rule:        \"courts\""),
        "--at moves the evaluation time: {text}"
    );
    let (text, ok) = explain_at(&cfg, "post@domstol.dk", Some("2040-06-01T00:00:00Z"));
    assert!(
        !ok && text.contains("expired on"),
        "certificates judged at --at: {text}"
    );
}

#[test]
fn hold_keeps_the_message_until_a_certificate_appears() {
    let sink = Sink::start(Script::default());
    let recips = recipients(&[]);
    let mut opts = Options::new(sink.addr);
    opts.extra = config_extra(recips.path(), PAST, "off", "").replace(
        "on_missing_certificate = \"bounce\"",
        "on_missing_certificate = \"hold\"",
    );
    let gw = Gateway::start(opts);
    send(&gw, &["post@domstol.dk"], "hold-1");
    assert!(
        wait_until(Duration::from_secs(15), || gw
            .log()
            .contains("rule courts: hold")),
        "{}",
        gw.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.count(), 0, "held mail must not leave");
    assert_eq!(gw.queued(), 1);
    let out = gw.cli(&[
        "queue",
        "show",
        &std::fs::read_dir(gw.spool().join("queue"))
            .unwrap()
            .filter_map(Result::ok)
            .find_map(|e| {
                e.path()
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
            })
            .unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("no valid OCES3 certificate for post@domstol.dk"));
    // The certificate arrives; after a reload the next attempt sends.
    std::fs::copy(pki::cert("court-oces3"), recips.path().join("court.pem")).unwrap();
    gw.signal("HUP");
    let copy = wait_for(&sink, |r| r.rcpts == vec!["post@domstol.dk".to_string()]);
    open_and_verify(&copy.data, "court-oces3");
    assert!(
        !sink.received().iter().any(|r| r.from.is_empty()),
        "hold must not bounce"
    );
}

#[test]
fn plaintext_labelled_as_encrypted_gets_the_rule_not_a_pass() {
    // A careless client, or a compromised account, labels plaintext as
    // enveloped-data: "encrypted by the sender already" must not let it
    // leave in the clear past a rule that requires encryption.
    let sink = Sink::start(Script::default());
    let recips = recipients(&["court-oces3"]);
    let gw = gateway(&sink, recips.path(), PAST);
    let secret = "Fortroligt bilag til retten";
    let lying = format!(
        "From: <alice@example-law.dk>\r\nTo: <post@domstol.dk>\r\nSubject: label\r\n\
         Message-ID: <label-1@test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{secret}\r\n"
    );
    let r = common::submit(
        &gw,
        "alice@example-law.dk",
        &["post@domstol.dk"],
        lying.as_bytes(),
    );
    assert_eq!(r.code, 250, "{r:?}");
    // Control: real EnvelopedData to the court passes unchanged.
    let cms = pki::cms_encrypt(&pki::inner("sealed"), "court-oces3", &["-aes-256-cbc"]);
    let sealed = pki::enveloped_message("label-2", "post@domstol.dk", &cms, pki::P7M);
    let r = common::submit(&gw, "alice@example-law.dk", &["post@domstol.dk"], &sealed);
    assert_eq!(r.code, 250, "{r:?}");

    let copy = wait_for(&sink, for_rcpt("post@domstol.dk", "label-1@test"));
    assert!(
        !copy.text().contains(secret),
        "plaintext labelled as encrypted left in the clear"
    );
    let inner = open_and_verify(&copy.data, "court-oces3");
    assert!(String::from_utf8_lossy(&inner).contains(secret));
    let passed = wait_for(&sink, for_rcpt("post@domstol.dk", "label-2@test"));
    assert_eq!(
        passed.data, sealed,
        "real EnvelopedData must pass unchanged"
    );
}

#[test]
fn text_beside_a_senders_ciphertext_gets_the_rule_not_a_pass() {
    // Ciphertext for a stranger with plaintext beside it: a multipart's
    // preamble and epilogue around the one enveloped part, or text after
    // the base64. "Encrypted by the sender already" let that text leave
    // in the clear past a rule that requires encryption.
    let sink = Sink::start(Script::default());
    let recips = recipients(&["court-oces3"]);
    let gw = gateway(&sink, recips.path(), PAST);
    let secret = "Fortroligt udenfor krypteringen";
    let cms = pki::cms_encrypt(&pki::inner("x"), "alice-oces3", &["-aes-256-cbc"]);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&cms)
    };
    let head = |id: &str| {
        format!(
            "From: <alice@example-law.dk>\r\nTo: <post@domstol.dk>\r\nSubject: beside\r\n\
             Message-ID: <{id}@test>\r\nMIME-Version: 1.0\r\n"
        )
    };
    let wrapped = format!(
        "{}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n{secret} (preamble)\r\n\
         --b\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n{secret} (epilogue)\r\n",
        head("beside-1")
    );
    let trailing = format!(
        "{}Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n\r\n{secret}\r\n",
        head("beside-2")
    );
    // Control: the same ciphertext alone passes unchanged.
    let alone = pki::enveloped_message("beside-3", "post@domstol.dk", &cms, pki::P7M);
    for m in [wrapped.as_bytes(), trailing.as_bytes(), &alone] {
        let r = common::submit(&gw, "alice@example-law.dk", &["post@domstol.dk"], m);
        assert_eq!(r.code, 250, "{r:?}");
    }
    for id in ["beside-1@test", "beside-2@test"] {
        let copy = wait_for(&sink, for_rcpt("post@domstol.dk", id));
        assert!(!copy.text().contains(secret), "{id} left in the clear");
        let inner = open_and_verify(&copy.data, "court-oces3");
        assert!(String::from_utf8_lossy(&inner).contains(secret), "{id}");
    }
    let passed = wait_for(&sink, for_rcpt("post@domstol.dk", "beside-3@test"));
    assert_eq!(passed.data, alone, "the sender's ciphertext alone passes");
}

/// A DER element: tag and content.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    match content.len() {
        n if n < 0x80 => v.push(n as u8),
        n if n < 0x100 => v.extend([0x81, n as u8]),
        n if n < 0x10000 => v.extend([0x82, (n >> 8) as u8, n as u8]),
        n => v.extend([0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]),
    }
    v.extend_from_slice(content);
    v
}

/// The first DER element of `b`: its tag, its content and what follows.
fn der_split(b: &[u8]) -> (u8, &[u8], &[u8]) {
    let (head, n) = match b[1] {
        l if l < 0x80 => (2, l as usize),
        l => {
            let k = (l & 0x7f) as usize;
            (
                2 + k,
                b[2..2 + k].iter().fold(0, |a, x| (a << 8) | *x as usize),
            )
        }
    };
    (b[0], &b[head..head + n], &b[head + n..])
}

/// `cms` (a DER ContentInfo of EnvelopedData) with `extra` appended to the
/// EnvelopedData's fields.
fn with_enveloped_field(cms: &[u8], extra: &[u8]) -> Vec<u8> {
    let (_, info, _) = der_split(cms);
    let (oid_tag, oid, rest) = der_split(info);
    let (_, explicit, _) = der_split(rest);
    let (_, fields, _) = der_split(explicit);
    let data = der_tlv(0x30, &[fields, extra].concat());
    der_tlv(
        0x30,
        &[der_tlv(oid_tag, oid), der_tlv(0xa0, &data)].concat(),
    )
}

#[test]
fn text_in_a_cms_field_left_unencrypted_gets_the_rule_not_a_pass() {
    // EnvelopedData to the court itself, with an unprotected attribute
    // holding plaintext: a field of the CMS that is never encrypted.
    let sink = Sink::start(Script::default());
    let recips = recipients(&["court-oces3"]);
    let gw = gateway(&sink, recips.path(), PAST);
    let secret = "Fortroligt i en ukrypteret attribut";
    let cms = pki::cms_encrypt(&pki::inner("x"), "court-oces3", &["-aes-256-cbc"]);
    let attribute = der_tlv(
        0x30,
        &[
            der_tlv(0x06, &[0x2a, 0x03, 0x04, 0x05]),
            der_tlv(0x31, &der_tlv(0x0c, secret.as_bytes())),
        ]
        .concat(),
    );
    let tampered = with_enveloped_field(&cms, &der_tlv(0xa1, &attribute));
    let m = pki::enveloped_message("field-1", "post@domstol.dk", &tampered, pki::P7M);
    // Control: the same CMS without it passes unchanged.
    let alone = pki::enveloped_message("field-2", "post@domstol.dk", &cms, pki::P7M);
    for body in [&m, &alone] {
        let r = common::submit(&gw, "alice@example-law.dk", &["post@domstol.dk"], body);
        assert_eq!(r.code, 250, "{r:?}");
    }
    // Not passed as it came: encrypted again, to the court, attribute and
    // all inside.
    let copy = wait_for(&sink, for_rcpt("post@domstol.dk", "field-1@test"));
    assert_ne!(copy.data, m, "passed with its clear attribute");
    let inner = pki::cms_try_decrypt(&copy.data, "court-oces3").expect("the court opens it");
    assert!(
        String::from_utf8_lossy(&inner).contains("application/pkcs7-mime"),
        "the sender's message is inside"
    );
    let passed = wait_for(&sink, for_rcpt("post@domstol.dk", "field-2@test"));
    assert_eq!(passed.data, alone);
}

/// The court's domain as people write it and as DNS holds it.
const IDN_U: &str = "dømstol.dk";
const IDN_A: &str = "xn--dmstol-bya.dk";

/// A certificate for `post@xn--dmstol-bya.dk` (certificates carry the
/// A-label) issued by the demo OCES3 CA: key and certificate files.
fn idn_court(dir: &Path) -> (PathBuf, PathBuf) {
    pki::issue_by_oces3_ca(
        dir,
        "idn-court",
        "/CN=Demo Domstol - sikkermail/O=Demo Domstol/C=DK",
        &format!(
            "basicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\n\
             subjectAltName = email:post@{IDN_A}\n\
             certificatePolicies = 0.4.0.2042.1.1,1.2.208.169.1.1.1.3.7\n"
        ),
        4343,
    )
}

/// One transaction to `rcpt`, with SMTPUTF8 when `utf8` (a U-label
/// recipient needs it).
fn send_one(gw: &Gateway, rcpt: &str, utf8: bool, body: &[u8]) {
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let param = if utf8 { " SMTPUTF8" } else { "" };
    let r = c
        .cmd(&format!("MAIL FROM:<alice@example-law.dk>{param}"))
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.cmd("DATA").unwrap();
    assert_eq!(r.code, 354, "{r:?}");
    let mut data = pki::crlf(body);
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    c.write(&data).unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.code, 250, "{r:?}");
}

/// A rule written on the U-label holds for mail addressed to the A-label
/// (the same DNS name, the same MX) and for the U-label in any case: the
/// copy that leaves is encrypted. Attacker: a sender who writes the court
/// as `post@xn--dmstol-bya.dk` so that no rule matches and the message
/// leaves in the clear. Control: a domain no rule names leaves plain, so
/// the plaintext check below can see plaintext.
#[test]
fn a_rule_on_a_u_label_holds_for_the_a_label() {
    let sink = Sink::start(Script::default());
    let work = tempfile::tempdir().unwrap();
    let recips = work.path().join("recips");
    std::fs::create_dir(&recips).unwrap();
    let (key, cert) = idn_court(work.path());
    std::fs::copy(&cert, recips.join("idn-court.pem")).unwrap();
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n\n[certificates]\ndirs = [\"{}\"]\n\n\
         [[rule]]\nname = \"idn-court\"\nmatch = [\"*@{IDN_U}\"]\ngeneration = \"any\"\n\
         encrypt = \"required\"\nsign = true\non_missing_certificate = \"bounce\"\n",
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        recips.display(),
    );
    let gw = Gateway::start(opts);
    let cases = [
        // (recipient as sent, SMTPUTF8, as the next hop sees it, encrypted)
        (
            "someone@unknown.example",
            false,
            "someone@unknown.example",
            false,
        ),
        (
            &*format!("post@{IDN_A}"),
            false,
            &*format!("post@{IDN_A}"),
            true,
        ),
        ("post@DØMSTOL.dk", true, &*format!("post@{IDN_A}"), true),
    ];
    for (i, (rcpt, utf8, seen, encrypted)) in cases.iter().enumerate() {
        let secret = format!("Fortroligt bilag {i} til retten");
        let id = format!("idn-{i}");
        send_one(&gw, rcpt, *utf8, &internal_message(&id, "alice", &secret));
        assert!(
            wait_until(Duration::from_secs(20), || sink.count() == i + 1),
            "{rcpt}: no copy arrived (log: {})",
            gw.log()
        );
        let copy = sink.received().pop().unwrap();
        assert_eq!(copy.rcpts, vec![seen.to_string()], "{rcpt}");
        let wire = copy.text();
        if *encrypted {
            assert!(
                wire.contains("smime-type=enveloped-data") && !wire.contains(&secret),
                "{rcpt} left in the clear:\n{wire}"
            );
            let out = pki::run_output(
                "openssl",
                &["cms", "-decrypt", "-inkey", key.to_str().unwrap()],
                &copy.data,
            );
            assert!(out.status.success(), "{rcpt}: not encrypted to the court");
            assert!(String::from_utf8_lossy(&out.stdout).contains(&secret));
        } else {
            assert!(
                wire.contains(&secret) && !wire.contains("enveloped-data"),
                "control {rcpt} should leave plain:\n{wire}"
            );
        }
    }
}

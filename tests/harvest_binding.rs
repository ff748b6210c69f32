//! Certificates are bound to their owner, played against the real binary.
//! The attacker holds a certificate that chains to the trust anchors and
//! names the court's address (`post@domstol.dk`), signs mail with it and
//! sends it to the firm, hoping the gateway then encrypts the firm's mail
//! to the court for them too. What they would gain shows in `explain
//! --rcpt post@domstol.dk` (the certificates outbound mail is encrypted
//! to): it must not list theirs. Positive controls: the court's own signed
//! mail is harvested, and without a directory certificate a bound attacker
//! certificate would be listed. A replayed old signature must not change
//! the capabilities a newer one announced. An authenticated directory
//! answer (LDAP over verified TLS) outranks a harvested certificate.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::client::Client;
use common::pki;
use common::sink::{NextHopCert, Script, Sink};
use common::slapd::Slapd;
use common::{wait_until, Gateway, Options};

const RULES: &str = r#"
[[rule]]
name = "courts"
match = ["*@domstol.dk"]
generation = "any"
encrypt = "if-possible"
sign = true
on_missing_certificate = "send-plain"
"#;

fn gateway(sink: &Sink, dirs: &Path) -> Gateway {
    gateway_with(sink, dirs, "")
}

/// [`gateway`] with more TOML after the `[certificates]` section.
fn gateway_with(sink: &Sink, dirs: &Path, more: &str) -> Gateway {
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n\n[certificates]\ndirs = [\"{}\"]\n{more}{RULES}",
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        dirs.display(),
    );
    Gateway::start(opts)
}

/// A certificate for "Mallory Poison" naming `post@domstol.dk`, issued by
/// the demo OCES3 CA (chains to the anchors): key and certificate files.
fn mallory(dir: &Path) -> (PathBuf, PathBuf) {
    pki::issue_by_oces3_ca(
        dir,
        "mallory",
        "/CN=Mallory Poison",
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         subjectAltName = email:post@domstol.dk\ncertificatePolicies = 0.4.0.2042.1.1\n",
        4242,
    )
}

/// A message with `from` in the header, its body signed by `cert`/`key`.
fn signed_by(from: &str, id: &str, cert: &Path, key: &Path) -> Vec<u8> {
    let ca = pki::demo().join("crl/oces3-ca.pem");
    let content = pki::inner(&format!("signed content {id}"));
    let smime = pki::cms_sign_with(&content, cert, key, &ca);
    let mut m = format!(
        "From: {from}\r\nTo: <bob@example-law.dk>\r\nSubject: {id}\r\nMessage-ID: <{id}@test>\r\n"
    )
    .into_bytes();
    m.extend_from_slice(&pki::crlf(&smime));
    m
}

fn court_signed(id: &str) -> Vec<u8> {
    signed_by(
        "Domstol <post@domstol.dk>",
        id,
        &pki::cert("court-oces3"),
        &pki::key("court-oces3"),
    )
}

fn send(gw: &Gateway, sender: &str, message: &[u8]) {
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c.send(sender, &["bob@example-law.dk"], message).unwrap();
    assert_eq!(r.code, 250, "{r:?}");
}

/// Waits until the gateway logs a harvest (fails the test otherwise).
fn harvested(gw: &Gateway) {
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .log()
            .contains("event=\"harvested\"")),
        "{}",
        gw.log()
    );
}

fn explain(gw: &Gateway) -> String {
    let out = gw.cli(&[
        "explain",
        "--rcpt",
        "post@domstol.dk",
        "--from",
        "alice@example-law.dk",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn delivered(sink: &Sink, n: usize) {
    assert!(
        wait_until(Duration::from_secs(20), || sink.count() >= n),
        "only {} of {n} messages delivered",
        sink.count()
    );
}

#[test]
fn a_certificate_sent_by_someone_else_is_not_harvested() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = mallory(tmp.path());
    let empty = tempfile::tempdir().unwrap();
    let sink = Sink::start(Script::default());
    let gw = gateway(&sink, empty.path());
    // From and envelope the attacker's own; then the court's name in From.
    send(
        &gw,
        "random@evil.example",
        &signed_by("<random@evil.example>", "poison-1", &cert, &key),
    );
    send(
        &gw,
        "random@evil.example",
        &signed_by("Domstol <post@domstol.dk>", "poison-2", &cert, &key),
    );
    delivered(&sink, 2);
    let log = gw.log();
    // The first signature's signer differs from From: never offered; the
    // second names From but the envelope sender is someone else.
    assert!(!log.contains("event=\"harvested\""), "{log}");
    assert_eq!(log.matches("event=\"not-harvested\"").count(), 1, "{log}");
    let report = explain(&gw);
    assert!(
        !report.contains("Mallory"),
        "attacker certificate offered:\n{report}"
    );
    let listed = String::from_utf8_lossy(&gw.cli(&["certs", "list"]).stdout).into_owned();
    assert!(!listed.contains("Mallory"), "{listed}");

    // Positive control: the court's own signed mail is harvested and used.
    send(&gw, "post@domstol.dk", &court_signed("genuine-1"));
    delivered(&sink, 3);
    assert!(wait_until(Duration::from_secs(10), || explain(&gw)
        .contains("Demo Court")));
    let report = explain(&gw);
    assert!(report.contains("harvested (fallback)"), "{report}");
    assert!(!report.contains("Mallory"), "{report}");
}

#[test]
fn no_certificate_is_harvested_for_the_organisations_own_addresses() {
    // A CA-issued certificate naming the firm's archive address, signed
    // mail with that address as envelope sender and From, sent from
    // outside: it proves nothing about who holds the certificate.
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = pki::issue_by_oces3_ca(
        tmp.path(),
        "archive-forger",
        "/CN=Archive Forger",
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         subjectAltName = email:archive@example-law.dk\ncertificatePolicies = 0.4.0.2042.1.1\n",
        4343,
    );
    let empty = tempfile::tempdir().unwrap();
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.trusted = false;
    opts.extra = format!(
        "{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n\n[certificates]\ndirs = [\"{}\"]\n{RULES}",
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        empty.path().display(),
    );
    let gw = Gateway::start(opts);
    send(
        &gw,
        "archive@example-law.dk",
        &signed_by("<archive@example-law.dk>", "own-1", &cert, &key),
    );
    // Control: the court's own signed mail, from the same place, is kept.
    send(&gw, "post@domstol.dk", &court_signed("own-control"));
    delivered(&sink, 2);
    harvested(&gw);
    let log = gw.log();
    assert_eq!(log.matches("event=\"harvested\"").count(), 1, "{log}");
    assert!(log.contains("the organisation's own address"), "{log}");
    let listed = String::from_utf8_lossy(&gw.cli(&["certs", "list"]).stdout).into_owned();
    assert!(listed.contains("Demo Court"), "{listed}");
    assert!(!listed.contains("Archive Forger"), "{listed}");
}

#[test]
fn the_directory_certificate_wins_over_a_harvested_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = mallory(tmp.path());
    // The attacker forges the court's address as envelope sender too, so
    // the message binds their certificate to it.
    let forged = signed_by("Domstol <post@domstol.dk>", "forged-1", &cert, &key);

    // Positive control: with no directory certificate for the court, the
    // bound certificate is harvested and offered (what the directory
    // prevents below).
    let empty = tempfile::tempdir().unwrap();
    let sink = Sink::start(Script::default());
    let gw = gateway(&sink, empty.path());
    send(&gw, "post@domstol.dk", &forged);
    delivered(&sink, 1);
    assert!(
        wait_until(Duration::from_secs(10), || explain(&gw).contains("Mallory")),
        "{}",
        explain(&gw)
    );
    drop(gw);

    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(pki::cert("court-oces3"), folder.path().join("court.pem")).unwrap();
    let sink = Sink::start(Script::default());
    let gw = gateway(&sink, folder.path());
    send(&gw, "post@domstol.dk", &forged);
    delivered(&sink, 1);
    assert!(wait_until(Duration::from_secs(10), || gw
        .log()
        .contains("event=\"harvested\"")));
    let report = explain(&gw);
    assert!(report.contains("Demo Court"), "{report}");
    assert!(report.contains(", directory, "), "{report}");
    assert!(!report.contains("harvested"), "{report}");
    assert!(
        !report.contains("Mallory"),
        "harvested one joined the directory's:\n{report}"
    );
}

/// A gateway whose folders are empty, asking `ldap` over ldaps (verified
/// against the TLS certificate's CA in `ca`).
fn gateway_with_ldap(sink: &Sink, ldap: &Slapd, ca: &Path, empty: &Path) -> Gateway {
    gateway_with(
        sink,
        empty,
        &format!(
            "\n[[certificates.ldap]]\nurl = \"ldaps://127.0.0.1:{}\"\ntls_ca = \"{}\"\nbase = \"c=DK\"\n\
             timeout = \"3s\"\ncache_ttl = \"1s\"\n",
            ldap.tls_port.expect("ldaps"),
            ca.display(),
        ),
    )
}

/// Review 24: the attacker gets a CA-issued certificate naming the court's
/// address and forges the court as envelope sender and From, so the
/// signature binds it by harvest. The court's directory (LDAP over
/// verified TLS) holds the court's own certificate. Observed: what the
/// firm's next mail to the court is encrypted to (the attacker reads the
/// copy at the next hop with their key). Before, the harvested
/// certificate kept LDAP from being asked. Control: when the directory
/// holds nothing for the court, the harvested certificate is used.
#[test]
fn an_authenticated_directory_answer_wins_over_a_harvested_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = mallory(tmp.path());
    let forged = signed_by("Domstol <post@domstol.dk>", "forged-ldap", &cert, &key);
    let tls = NextHopCert::issue(&["127.0.0.1"]);
    let ca = tmp.path().join("ldap-ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mallory_opens = |message: &[u8]| pki::cms_try_decrypt_with(message, &key, &cert).is_some();
    let to_court = String::from_utf8(common::message("to-court", "Forligstilbud: 4,2 mio."))
        .unwrap()
        .replace("alice@example.org", "alice@example-law.dk");

    for (directory_holds, attacker_reads) in [
        ("post@domstol.dk", false),
        ("advokat@partner.example", true),
    ] {
        let ldap = Slapd::start(directory_holds, Some(&tls));
        let sink = Sink::start(Script::default());
        let gw = gateway_with_ldap(&sink, &ldap, &ca, empty.path());
        send(&gw, "post@domstol.dk", &forged);
        delivered(&sink, 1);
        harvested(&gw);
        let report = explain(&gw);
        let r = common::submit(
            &gw,
            "alice@example-law.dk",
            &["post@domstol.dk"],
            to_court.as_bytes(),
        );
        assert_eq!(r.code, 250, "{r:?}");
        delivered(&sink, 2);
        let copy = sink
            .received()
            .into_iter()
            .find(|m| m.rcpts.iter().any(|r| r == "post@domstol.dk"))
            .expect("the copy for the court");
        assert_eq!(
            mallory_opens(&copy.data),
            attacker_reads,
            "directory holds {directory_holds}:\n{report}"
        );
        if attacker_reads {
            // Control: nothing in the directory, the harvest is used.
            assert!(report.contains("Mallory"), "{report}");
        } else {
            assert!(
                !report.contains("Mallory"),
                "harvest beside the directory:\n{report}"
            );
            assert!(
                report.contains("Demo Court") && report.contains("LDAP"),
                "{report}"
            );
            assert!(
                !pki::cms_decrypt_fails(&copy.data, "court-oces3"),
                "the court cannot read it"
            );
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A message from the court signed by the gateway's own signing code with
/// the court's identity: it announces AES-256-GCM and RSA-OAEP.
fn court_signed_announcing_gcm(id: &str) -> Vec<u8> {
    let d = pki::demo();
    let settings = smime_gateway::config::IdentitySettings {
        pkcs12: Some(d.join("keys/court-oces3.p12")),
        cert: None,
        key: None,
        password_file: Some(d.join("keys/court-oces3.pass")),
        password_env: None,
        mailboxes: Vec::new(),
        decrypt_for: None,
    };
    let court = smime_gateway::pki::identity::load(0, &settings, false).unwrap();
    let message = format!(
        "From: Domstol <post@domstol.dk>\r\nTo: <bob@example-law.dk>\r\nSubject: {id}\r\n\
         Message-ID: <{id}@test>\r\nContent-Type: text/plain\r\n\r\nnew capabilities\r\n"
    );
    smime_gateway::smime::sign::protect(
        message.as_bytes(),
        Some((&court, smime_gateway::config::SignatureScheme::Pkcs1)),
        &[],
        smime_gateway::config::Encryption::Aes256Cbc,
    )
    .unwrap()
}

#[test]
fn a_replayed_older_signature_does_not_change_capabilities() {
    let old = court_signed("caps-old");
    let signed_old = unix_now();
    // Signing times have one-second resolution: the new one must be later.
    // A margin of a whole second more: a run on 1 December had both
    // signatures in the same second with a margin of one.
    assert!(wait_until(Duration::from_secs(5), || unix_now() > signed_old + 1));
    let new = court_signed_announcing_gcm("caps-new");

    let empty = tempfile::tempdir().unwrap();
    let sink = Sink::start(Script::default());
    let gw = gateway(&sink, empty.path());
    send(&gw, "post@domstol.dk", &old);
    delivered(&sink, 1);
    assert!(wait_until(Duration::from_secs(10), || explain(&gw)
        .contains("send encrypted (Aes256Cbc)")));
    // Positive control: a newer signature does change them.
    send(&gw, "post@domstol.dk", &new);
    delivered(&sink, 2);
    assert!(
        wait_until(Duration::from_secs(10), || explain(&gw)
            .contains("send encrypted (Aes256GcmOaep)")),
        "{}",
        explain(&gw)
    );
    // The replay: the old message again.
    send(&gw, "post@domstol.dk", &old);
    delivered(&sink, 3);
    let report = explain(&gw);
    assert!(
        report.contains("send encrypted (Aes256GcmOaep)"),
        "downgraded by a replay:\n{report}"
    );
}

/// Review 24: certificates that chain to the anchors but were not issued
/// for a mail recipient were encrypted to: a CA certificate (CA:TRUE)
/// and one whose extended key usage is for TLS servers only. They sit in
/// the operator's folder here (harvest and LDAP take the same check).
/// Observed: what `explain` says mail to their addresses is encrypted to.
/// Control: a certificate whose extended key usage names e-mail
/// protection is used.
#[test]
fn certificates_not_issued_for_mail_are_not_encrypted_to() {
    let issued = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let common = "keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign\n\
                  certificatePolicies = 0.4.0.2042.1.1\n";
    let cases = [
        (
            "ca-leaf",
            "basicConstraints = critical,CA:TRUE\n",
            "a CA certificate",
        ),
        (
            "tls-only",
            "basicConstraints = critical,CA:FALSE\nextendedKeyUsage = serverAuth\n",
            "does not allow e-mail protection",
        ),
        (
            "mail-eku",
            "basicConstraints = critical,CA:FALSE\nextendedKeyUsage = emailProtection,clientAuth\n",
            "",
        ),
    ];
    for (i, (name, extensions, _)) in cases.iter().enumerate() {
        let (_, cert) = pki::issue_by_oces3_ca(
            issued.path(),
            name,
            &format!("/CN=Profile {name}"),
            &format!("{extensions}{common}subjectAltName = email:{name}@domstol.dk\n"),
            5000 + i as u32,
        );
        std::fs::copy(&cert, folder.path().join(format!("{name}.pem"))).unwrap();
    }
    let sink = Sink::start(Script::default());
    let gw = gateway(&sink, folder.path());
    for (name, _, why) in cases {
        let out = gw.cli(&[
            "explain",
            "--rcpt",
            &format!("{name}@domstol.dk"),
            "--from",
            "alice@example-law.dk",
        ]);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        if why.is_empty() {
            assert!(report.contains("send encrypted"), "{name}:\n{report}");
        } else {
            assert!(!report.contains("send encrypted"), "{name} used:\n{report}");
            assert!(report.contains(why), "{name}:\n{report}");
        }
    }
}

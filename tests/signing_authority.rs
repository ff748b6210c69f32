//! Who can get mail signed by the organisation, played against the real
//! binary. The attacker is an internal client (or anyone a mail server in
//! front lets through) who wants the organisation's signature on a message
//! whose header From names someone else. What they observe is the copy at
//! the external next hop: it must carry no signature. Each refusal has a
//! positive control that is signed and verifies.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::client::Client;
use common::pki;
use common::sink::{Received, Script, Sink};
use common::{free_port, wait_until, Gateway, Options};

/// Sign everything, encrypt nothing: what arrives is the signed message
/// itself, easy to inspect.
const RULES: &str = r#"
[[rule]]
name = "everyone"
match = ["*@example.org"]
encrypt = "never"
sign = true

[[rule]]
name = "courts"
match = ["*@domstol.dk"]
encrypt = "never"
sign = "required"
"#;

const SHARED: &str = r#"
[[mailbox]]
address = "sikkermail@example-law.dk"
send_as = ["alice@example-law.dk"]
"#;

fn options(sink: &Sink, extra_server: &str) -> Options {
    let mut opts = Options::new(sink.addr);
    opts.extra_server = extra_server.to_string();
    opts.extra = format!(
        "{}{}{SHARED}{RULES}",
        pki::identity("org-oces3", &[]),
        pki::identity("alice-oces3", &["alice@example-law.dk"]),
    );
    opts
}

fn message(from: &str, to: &str, id: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: <{to}>\r\nSubject: {id}\r\nMessage-ID: <{id}@test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Retten bedes notere at sagen er forligt.\r\n"
    )
    .into_bytes()
}

fn send_on(addr: std::net::SocketAddr, sender: &str, from: &str, to: &str, id: &str) {
    let mut c = Client::connect(addr).unwrap();
    c.ehlo().unwrap();
    let r = c.send(sender, &[to], &message(from, to, id)).unwrap();
    assert_eq!(r.code, 250, "{r:?}");
}

fn arrived(sink: &Sink, gw: &Gateway, id: &str) -> Received {
    // The copy itself, not a notice to the sender quoting its headers.
    let has = |r: &Received| !r.from.is_empty() && r.text().contains(&format!("<{id}@test>"));
    assert!(
        wait_until(Duration::from_secs(20), || sink.received().iter().any(has)),
        "{id} never arrived; log:\n{}",
        gw.log()
    );
    sink.received().into_iter().find(|r| has(r)).unwrap()
}

fn is_signed(r: &Received) -> bool {
    let t = r.text().to_ascii_lowercase();
    t.contains("multipart/signed") || t.contains("pkcs7-signature") || t.contains("signed-data")
}

/// Whether the outermost signature of a copy is the organisation's (or
/// an employee's): its signer names Example Law.
fn signed_by_the_organisation(r: &Received) -> bool {
    if !is_signed(r) {
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let signer = dir.path().join("signer.pem");
    let verified = pki::run_output(
        "openssl",
        &[
            "cms",
            "-verify",
            "-noverify",
            "-signer",
            signer.to_str().unwrap(),
        ],
        &pki::crlf(&r.data),
    );
    verified.status.success() && subject_of(&signer).contains("Example Law")
}

/// The subject of the certificate file `cert`, as `openssl x509` prints it.
fn subject_of(cert: &std::path::Path) -> String {
    let text = pki::openssl(
        &["x509", "-noout", "-subject", "-in", cert.to_str().unwrap()],
        b"",
    );
    String::from_utf8_lossy(&text).into_owned()
}

/// The demo roots, for `openssl cms -verify`.
fn roots() -> PathBuf {
    let d = pki::demo();
    let path = d.join(format!("roots-{}.pem", std::process::id()));
    if !path.exists() {
        let roots: Vec<u8> = ["oces2-root", "oces3-root"]
            .iter()
            .flat_map(|n| std::fs::read(d.join(format!("trust/{n}.pem"))).unwrap())
            .collect();
        std::fs::write(&path, roots).unwrap();
    }
    path
}

/// Verifies the signature of a signed copy; returns the signer's
/// certificate (PEM text).
fn signer_of(r: &Received) -> String {
    let dir = tempfile::tempdir().unwrap();
    let signer = dir.path().join("signer.pem");
    let roots = roots();
    pki::openssl(
        &[
            "cms",
            "-verify",
            "-CAfile",
            roots.to_str().unwrap(),
            "-purpose",
            "any",
            "-signer",
            signer.to_str().unwrap(),
        ],
        &pki::crlf(&r.data),
    );
    subject_of(&signer)
}

#[test]
fn a_foreign_header_from_is_not_signed_by_anyone() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(options(&sink, ""));
    // The attack: an internal envelope sender, the court's name in From.
    send_on(
        gw.addr,
        "nobody@example-law.dk",
        "Dommer <dommer@domstol.dk>",
        "someone@example.org",
        "spoof-1",
    );
    // A colleague's address in From, sent by someone else: not Alice's key.
    send_on(
        gw.addr,
        "bob@example-law.dk",
        "Alice <alice@example-law.dk>",
        "someone@example.org",
        "spoof-2",
    );
    // Positive control: Alice as herself is signed, and it verifies.
    send_on(
        gw.addr,
        "alice@example-law.dk",
        "Alice <alice@example-law.dk>",
        "someone@example.org",
        "own-1",
    );
    for id in ["spoof-1", "spoof-2"] {
        let copy = arrived(&sink, &gw, id);
        assert!(!is_signed(&copy), "{id} was signed:\n{}", copy.text());
    }
    let own = arrived(&sink, &gw, "own-1");
    assert!(is_signed(&own), "the sender's own mail was not signed");
    assert!(
        signer_of(&own).contains("Example Law"),
        "{}",
        signer_of(&own)
    );
    let log = gw.log();
    assert!(
        log.contains("event=\"unsigned\"") && log.contains("not in the internal domains"),
        "the unsigned mail is not logged:\n{log}"
    );
    // The internal senders are told, by a notice from the null sender.
    let notice_for = |who: &str| {
        let who = who.to_string();
        move |r: &Received| r.from.is_empty() && r.rcpts == vec![who.clone()]
    };
    for who in ["nobody@example-law.dk", "bob@example-law.dk"] {
        assert!(
            wait_until(Duration::from_secs(20), || sink
                .received()
                .iter()
                .any(notice_for(who))),
            "{who} not told; log:\n{}",
            gw.log()
        );
        let notice = sink.received().into_iter().find(notice_for(who)).unwrap();
        assert!(
            notice.text().contains("WITHOUT the organisation's")
                && notice.text().contains("Action: relayed"),
            "{}",
            notice.text()
        );
    }
    // Positive control: nothing for the sender whose mail was signed.
    assert!(!sink
        .received()
        .iter()
        .any(notice_for("alice@example-law.dk")));
}

#[test]
fn send_as_lets_listed_senders_sign_as_a_shared_mailbox() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(options(&sink, ""));
    send_on(
        gw.addr,
        "alice@example-law.dk",
        "Sikker mail <sikkermail@example-law.dk>",
        "someone@example.org",
        "shared-alice",
    );
    send_on(
        gw.addr,
        "eve@example-law.dk",
        "Sikker mail <sikkermail@example-law.dk>",
        "someone@example.org",
        "shared-eve",
    );
    let listed = arrived(&sink, &gw, "shared-alice");
    assert!(is_signed(&listed), "a listed send_as sender was not signed");
    signer_of(&listed);
    let unlisted = arrived(&sink, &gw, "shared-eve");
    assert!(!is_signed(&unlisted), "an unlisted sender was signed");
}

#[test]
fn with_a_submission_listener_only_its_mail_is_signed() {
    let sink = Sink::start(Script::default());
    let port = free_port();
    let gw = Gateway::start(options(
        &sink,
        &format!("submission_listen = [\"127.0.0.1:{port}\"]\n"),
    ));
    let submission: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(submission).is_ok()
    }));
    // The same legitimate mail on the ordinary listener (re-injected,
    // forwarded, from port 25): not signed.
    send_on(
        gw.addr,
        "alice@example-law.dk",
        "Alice <alice@example-law.dk>",
        "someone@example.org",
        "relay-path",
    );
    send_on(
        submission,
        "alice@example-law.dk",
        "Alice <alice@example-law.dk>",
        "someone@example.org",
        "submission-path",
    );
    let relayed = arrived(&sink, &gw, "relay-path");
    assert!(
        !is_signed(&relayed),
        "mail off the submission path was signed"
    );
    let submitted = arrived(&sink, &gw, "submission-path");
    assert!(is_signed(&submitted), "submitted mail was not signed");
    signer_of(&submitted);
}

#[test]
fn sign_required_bounces_to_the_sender_instead_of_sending_unsigned() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(options(&sink, ""));
    send_on(
        gw.addr,
        "nobody@example-law.dk",
        "Someone <someone@example.org>",
        "post@domstol.dk",
        "required-1",
    );
    // Positive control: the same rule signs the sender's own mail.
    send_on(
        gw.addr,
        "alice@example-law.dk",
        "Alice <alice@example-law.dk>",
        "post@domstol.dk",
        "required-2",
    );
    let good = arrived(&sink, &gw, "required-2");
    assert!(is_signed(&good));
    assert!(
        wait_until(Duration::from_secs(20), || sink
            .received()
            .iter()
            .any(|r| r.rcpts == vec!["nobody@example-law.dk".to_string()])),
        "no bounce; log:\n{}",
        gw.log()
    );
    let bounce = sink
        .received()
        .into_iter()
        .find(|r| r.rcpts == vec!["nobody@example-law.dk".to_string()])
        .unwrap();
    assert!(
        bounce.text().contains("requires a signature"),
        "{}",
        bounce.text()
    );
    // Nothing of the refused message reached the court.
    assert!(!sink
        .received()
        .iter()
        .any(|r| r.rcpts.contains(&"post@domstol.dk".to_string())
            && r.text().contains("<required-1@test>")));
}

#[test]
fn without_a_submission_path_a_forged_internal_sender_gets_no_signature() {
    // The attacker is outside: they send to the mail server's MX as
    // `MAIL FROM:<alice@example-law.dk>` with the same header From, to an
    // internal alias that forwards to the court. The mail server relays
    // the forward to the gateway from a trusted address, exactly as
    // Alice's own mail would arrive. With no submission path configured
    // (the default), the gateway cannot tell the two apart: it signs
    // neither.
    let sink = Sink::start(Script::default());
    let mut opts = options(&sink, "");
    opts.sign_without_submission_path = false;
    let gw = Gateway::start(opts);
    send_on(
        gw.addr,
        "alice@example-law.dk",
        "Alice <alice@example-law.dk>",
        "someone@example.org",
        "forged-alias",
    );
    let forwarded = arrived(&sink, &gw, "forged-alias");
    assert!(
        !is_signed(&forwarded),
        "the organisation signed mail from an unproven sender"
    );
    assert!(
        gw.log().contains("outbound mail is not signed"),
        "no warning at start; log:\n{}",
        gw.log()
    );
    // A rule that requires a signature bounces instead of sending unsigned.
    send_on(
        gw.addr,
        "alice@example-law.dk",
        "Alice <alice@example-law.dk>",
        "post@domstol.dk",
        "forged-required",
    );
    assert!(
        wait_until(Duration::from_secs(20), || sink
            .received()
            .iter()
            .any(|r| r.rcpts == vec!["alice@example-law.dk".to_string()]
                && r.text().contains("no submission path"))),
        "no bounce naming the missing submission path; log:\n{}",
        gw.log()
    );
    assert!(
        !sink
            .received()
            .iter()
            .any(|r| r.text().contains("forged-required@test") && r.rcpts[0] == "post@domstol.dk"),
        "sent to the court unsigned"
    );

    // Positive control: the operator vouches for the mail server; the same
    // mail is signed.
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(options(&sink, ""));
    send_on(
        gw.addr,
        "alice@example-law.dk",
        "Alice <alice@example-law.dk>",
        "someone@example.org",
        "vouched",
    );
    let vouched = arrived(&sink, &gw, "vouched");
    assert!(is_signed(&vouched), "vouched-for mail was not signed");
    signer_of(&vouched);
    assert!(!gw.log().contains("outbound mail is not signed"));
}

#[test]
fn mail_the_sender_labelled_signed_still_gets_the_organisations_signature() {
    // A two-part multipart/signed whose "signature" is junk: the gateway
    // does not check the sender's signature, so a rule that requires one
    // must still get the organisation's, around it (before, the copy left
    // with the junk only, and the log said "signed").
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(options(&sink, ""));
    let body = "From: Alice <alice@example-law.dk>\r\nTo: <post@domstol.dk>\r\n\
                Subject: junk-signed\r\nMessage-ID: <junk-signed@test>\r\nMIME-Version: 1.0\r\n\
                Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; \
                micalg=sha-256; boundary=\"b\"\r\n\r\n\
                --b\r\nContent-Type: text/plain\r\n\r\nRetten bedes notere forliget.\r\n\
                --b\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n\
                Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n";
    let r = common::submit(
        &gw,
        "alice@example-law.dk",
        &["post@domstol.dk"],
        body.as_bytes(),
    );
    assert_eq!(r.code, 250, "{r:?}");
    let copy = arrived(&sink, &gw, "junk-signed");
    // The organisation's signature verifies over the whole entity.
    let signer = signer_of(&copy);
    assert!(signer.contains("Example Law"), "{signer}");
    // Control: the sender's own entity is inside, unchanged.
    assert!(copy.text().contains("Retten bedes notere forliget."));
}

/// mail-parser 0.11 reads the line end after a one-letter time zone
/// (`Date: … Z`) as part of the date: the field after it is swallowed,
/// and after the last field the body's first lines are read as fields.
/// Attacker: Bob puts Alice in the From every client shows, and himself
/// in a From only that parser reads. Observed: the external copy, which
/// must carry no signature. Control: the same message from Alice herself,
/// with a zone every reading agrees on, is signed.
#[test]
fn a_from_only_one_parser_reads_gets_no_signature() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(options(&sink, ""));
    let two_ways = |id: &str, zone: &str, shown: &str, hidden: &str| {
        format!(
            "Date: Mon, 30 Nov 2026 12:00:00 {zone}\r\nFrom: Alice <{shown}>\r\n\
             Resent-Date: Mon, 30 Nov 2026 12:00:00 {zone}\r\n\r\n\
             From: {hidden}\r\nTo: <someone@example.org>\r\nSubject: {id}\r\n\
             Message-ID: <{id}@test>\r\n\r\nBetal fakturaen i dag.\r\n"
        )
        .into_bytes()
    };
    let cases = [
        (
            "z-spoof",
            "Z",
            "alice@example-law.dk",
            "bob@example-law.dk",
            "bob@example-law.dk",
        ),
        (
            "z-own",
            "+0000",
            "alice@example-law.dk",
            "x@example.org",
            "alice@example-law.dk",
        ),
    ];
    for (id, zone, shown, hidden, sender) in cases {
        let mut c = Client::connect(gw.addr).unwrap();
        c.ehlo().unwrap();
        let r = c
            .send(
                sender,
                &["someone@example.org"],
                &two_ways(id, zone, shown, hidden),
            )
            .unwrap();
        assert_eq!(r.code, 250, "{r:?}");
    }
    let spoof = arrived(&sink, &gw, "z-spoof");
    assert!(
        !is_signed(&spoof),
        "signed for Bob as Alice:\n{}",
        spoof.text()
    );
    let own = arrived(&sink, &gw, "z-own");
    assert!(is_signed(&own), "control not signed:\n{}", own.text());
    assert!(
        signer_of(&own).contains("Example Law"),
        "{}",
        signer_of(&own)
    );
}

/// A client shows the display name and the Sender field too. Attacker:
/// Bob, sending as himself, puts the managing partner's address in the
/// display name of his From (plainly or as an encoded word), or in a
/// Sender field ("on behalf of"). Observed: the external copy, which must
/// carry no signature. Control: Bob with his own name is signed.
#[test]
fn an_address_shown_beside_the_from_gets_no_signature() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(options(&sink, ""));
    let bob = "bob@example-law.dk";
    for (id, from) in [
        (
            "dn-plain",
            "\"partner@example-law.dk\" <bob@example-law.dk>",
        ),
        (
            "dn-encoded",
            "=?utf-8?q?partner=40example-law=2Edk?= <bob@example-law.dk>",
        ),
        (
            "dn-wide",
            "\"partner\u{FF20}example-law.dk\" <bob@example-law.dk>",
        ),
        (
            // ISO-2022-JP, which mail-parser leaves undecoded: clients
            // show "partner＠example-law.dk".
            "dn-jp",
            "=?iso-2022-jp?b?cGFydG5lchskQiF3GyhCZXhhbXBsZS1sYXcuZGs=?= <bob@example-law.dk>",
        ),
        (
            "dn-glued",
            "partner=?utf-8?q?=40?=example-law.dk <bob@example-law.dk>",
        ),
        ("dn-own", "Bob Berg <bob@example-law.dk>"),
    ] {
        send_on(gw.addr, bob, from, "someone@example.org", id);
    }
    let with_sender = String::from_utf8(message(bob, "someone@example.org", "dn-sender"))
        .unwrap()
        .replacen("\r\n", "\r\nSender: partner@example-law.dk\r\n", 1);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c
        .send(bob, &["someone@example.org"], with_sender.as_bytes())
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    for id in [
        "dn-plain",
        "dn-encoded",
        "dn-wide",
        "dn-jp",
        "dn-glued",
        "dn-sender",
    ] {
        let copy = arrived(&sink, &gw, id);
        assert!(!is_signed(&copy), "{id} was signed:\n{}", copy.text());
    }
    let own = arrived(&sink, &gw, "dn-own");
    assert!(is_signed(&own), "control not signed:\n{}", own.text());
}

/// Review 24: a Sender whose display name is another address, a
/// Resent-From, a raw ISO-2022-JP name (a client decodes ESC $ B !w as a
/// full-width `@`), and a message whose whole content is an attached
/// message from the CEO (RFC 8551 §3.1 wrapping: clients show the inner
/// header section as the sender's). Bob sends each as himself; the copy
/// at the next hop must carry no signature. Controls: his own message
/// wrapped, and a Sender with a plain name, are signed.
#[test]
fn a_sender_in_a_name_a_resent_field_or_a_wrapped_message_gets_no_signature() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(options(&sink, ""));
    let bob = "bob@example-law.dk";
    let head = |id: &str, extra: &[u8]| {
        let mut m = format!(
            "To: <someone@example.org>\r\nSubject: {id}\r\nMessage-ID: <{id}@test>\r\nMIME-Version: 1.0\r\n"
        )
        .into_bytes();
        m.extend_from_slice(extra);
        m
    };
    let plain = b"Content-Type: text/plain; charset=utf-8\r\n\r\nBetal fakturaen i dag.\r\n";
    let wrapping = |id: &str, inner_from: &str| {
        let mut m = head(
            id,
            b"From: Bob <bob@example-law.dk>\r\nContent-Type: message/rfc822; forwarded=no\r\n\r\n",
        );
        m.extend_from_slice(
            format!("From: {inner_from}\r\nSubject: Betaling\r\nMIME-Version: 1.0\r\n").as_bytes(),
        );
        m.extend_from_slice(plain);
        m
    };
    let ceo = "Anders Direktor <ceo@example-law.dk>";
    let wrapped_beneath = |id: &str, inner_from: &str, how: Beneath| {
        let mut entity = format!(
            "Content-Type: message/rfc822\r\n\r\nFrom: {inner_from}\r\nSubject: Betaling\r\nMIME-Version: 1.0\r\n"
        )
        .into_bytes();
        entity.extend_from_slice(plain);
        let (cert, key) = (pki::cert("stranger"), pki::key("stranger"));
        let content = match how {
            Beneath::Detached => {
                // openssl's own MIME-Version line would be a second one.
                let root = pki::demo().join("certs/stranger-root.pem");
                let signed = pki::crlf(&pki::cms_sign_with(&entity, &cert, &key, &root));
                String::from_utf8(signed)
                    .unwrap()
                    .replacen("MIME-Version: 1.0\r\n", "", 1)
                    .into_bytes()
            }
            Beneath::Opaque => {
                let der = pki::cms_sign_opaque(&entity, &cert, &key);
                let mut e = b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n\
                              Content-Transfer-Encoding: base64\r\n\r\n"
                    .to_vec();
                e.extend_from_slice(&smime_gateway::smime::mime::base64_lines(&der));
                e
            }
            Beneath::OnePart => {
                let mut e =
                    b"Content-Type: multipart/mixed; boundary=one\r\n\r\n--one\r\n".to_vec();
                e.extend_from_slice(&entity);
                e.extend_from_slice(b"--one--\r\n");
                e
            }
        };
        let mut m = head(id, b"From: Bob <bob@example-law.dk>\r\n");
        m.extend_from_slice(&content);
        m
    };
    let with = |id: &str, fields: &[u8]| {
        let mut m = head(id, fields);
        m.extend_from_slice(plain);
        m
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "sa-sender-name",
            with(
                "sa-sender-name",
                b"From: <bob@example-law.dk>\r\nSender: \"ceo@example-law.dk\" <bob@example-law.dk>\r\n",
            ),
            false,
        ),
        (
            "sa-resent",
            with(
                "sa-resent",
                b"From: <bob@example-law.dk>\r\nResent-From: ceo@example-law.dk\r\n",
            ),
            false,
        ),
        (
            "sa-raw-jp",
            with(
                "sa-raw-jp",
                b"From: \"partner \x1b$B!w\x1b(B example-law.dk\" <bob@example-law.dk>\r\n",
            ),
            false,
        ),
        (
            "sa-wrapped",
            wrapping("sa-wrapped", "Anders Direktor <ceo@example-law.dk>"),
            false,
        ),
        (
            "sa-own-wrapped",
            wrapping("sa-own-wrapped", "Bob Berg <bob@example-law.dk>"),
            true,
        ),
        (
            "sa-own-sender",
            with(
                "sa-own-sender",
                b"From: <bob@example-law.dk>\r\nSender: Bob Berg <bob@example-law.dk>\r\n",
            ),
            true,
        ),
        // Review 26: the wrapped message beneath a signature the sender
        // made (detached or opaque), or as a multipart's one part.
        ("sa-wrapped-signed", wrapped_beneath("sa-wrapped-signed", ceo, Beneath::Detached), false),
        ("sa-wrapped-opaque", wrapped_beneath("sa-wrapped-opaque", ceo, Beneath::Opaque), false),
        ("sa-wrapped-one", wrapped_beneath("sa-wrapped-one", ceo, Beneath::OnePart), false),
        // Review 27: the type written twice (clients read the first,
        // mail-parser the last).
        (
            "sa-wrapped-twice",
            {
                let mut m = head(
                    "sa-wrapped-twice",
                    b"From: Bob <bob@example-law.dk>\r\nContent-Type: message/rfc822\r\n\
                      Content-Type: text/plain\r\n\r\n",
                );
                m.extend_from_slice(
                    format!("From: {ceo}\r\nSubject: Betaling\r\n\r\nBetal i dag.\r\n").as_bytes(),
                );
                m
            },
            false,
        ),
        (
            "sa-own-wrapped-signed",
            wrapped_beneath("sa-own-wrapped-signed", "Bob Berg <bob@example-law.dk>", Beneath::Detached),
            true,
        ),
    ];
    for (_, m, _) in &cases {
        let mut c = Client::connect(gw.addr).unwrap();
        c.ehlo().unwrap();
        let r = c.send(bob, &["someone@example.org"], m).unwrap();
        assert_eq!(r.code, 250, "{r:?}");
    }
    let mut wrong = Vec::new();
    for (id, _, signed) in &cases {
        let copy = arrived(&sink, &gw, id);
        // The organisation's signature, not one the sender made inside.
        let by_us = signed_by_the_organisation(&copy);
        if by_us != *signed {
            wrong.push(format!("{id}: signed={by_us} wanted {signed}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Where a wrapped message sits beneath the content.
#[derive(Clone, Copy)]
enum Beneath {
    /// The first part of a multipart/signed.
    Detached,
    /// An opaque signature's content.
    Opaque,
    /// A multipart's one part.
    OnePart,
}

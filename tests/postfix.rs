//! End to end behind a real Postfix (a private instance on loopback) with
//! the lines from deploy/postfix: swaks -> Postfix -> gateway -> Postfix
//! re-injection -> delivery. Plain mail passes, encrypted mail arrives
//! decrypted, outbound mail submitted on the submission service leaves
//! signed and encrypted while the same mail on port 25 is not signed, and
//! while the gateway is down
//! Postfix keeps the mail and delivers it once it is back.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::pki::{self, P7M};
use common::postfix::{self, Postfix};
use common::sink::{Script, Sink};
use common::{free_port, wait_until, Gateway, Options};

struct Setup {
    sink: Sink,
    gw: Gateway,
    pf: Postfix,
    front: u16,
    /// Postfix's submission service.
    submission: u16,
    _recips: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    setup_with("")
}

/// As [`setup`], with extra main.cf lines for the Postfix instance.
fn setup_with(main_extra: &str) -> Option<Setup> {
    setup_full(main_extra, Script::default())
}

/// As [`setup_with`], with a scripted next hop behind Postfix.
fn setup_full(main_extra: &str, script: Script) -> Option<Setup> {
    if let Some(why) = postfix::unavailable() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let sink = Sink::start(script);
    // A port chosen here can be taken by another process before Postfix
    // binds it: then everything is set up again on other ports.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_setup(main_extra, &sink) {
            Ok((gw, pf, front, submission, recips)) => {
                return Some(Setup {
                    sink,
                    gw,
                    pf,
                    front,
                    submission,
                    _recips: recips,
                })
            }
            Err(why) if attempt < 4 => eprintln!("setting up again on other ports: {why}"),
            Err(why) => panic!("{why}"),
        }
    }
}

type Started = (Gateway, Postfix, u16, u16, tempfile::TempDir);

/// The gateway and Postfix in front of it, on ports chosen now.
fn try_setup(main_extra: &str, sink: &Sink) -> Result<Started, String> {
    let (front, reinject) = (free_port(), free_port());
    let (submission, gw_submission) = (free_port(), free_port());
    let reinject_addr = SocketAddr::from(([127, 0, 0, 1], reinject));

    let recips = tempfile::tempdir().unwrap();
    std::fs::copy(pki::cert("court-oces3"), recips.path().join("court.pem")).unwrap();
    let mut opts = Options::new(reinject_addr);
    opts.extra_server = format!("submission_listen = [\"127.0.0.1:{gw_submission}\"]\n");
    opts.extra = format!(
        "{}{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n[certificates]\ndirs = [\"{}\"]\n\
         [[rule]]\nname = \"courts\"\nmatch = [\"*@domstol.dk\"]\ngeneration = \"oces3\"\nencrypt = \"required\"\n\
         on_missing_certificate = \"bounce\"\n",
        pki::identity("org-oces2", &[]),
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        recips.path().display()
    );
    let gw = Gateway::start(opts);

    let root = env!("CARGO_MANIFEST_DIR");
    let main = std::fs::read_to_string(format!("{root}/deploy/postfix/main.cf")).unwrap();
    let master = std::fs::read_to_string(format!("{root}/deploy/postfix/master.cf")).unwrap();
    let main = main.replace(
        "[127.0.0.1]:10025",
        &format!("[127.0.0.1]:{}", gw.addr.port()),
    );
    // The lines as written, on test ports. The test instance has no SASL
    // or TLS server, so "logged in" is played by "on loopback" and the
    // sender map is inline (reject_sender_login_mismatch is inert without
    // SASL; the submission routing is what is tested here).
    let master = master
        .replace("127.0.0.1:10026", &reinject_addr.to_string())
        .replace("submission inet", &format!("127.0.0.1:{submission} inet"))
        .replace("[127.0.0.1]:10028", &format!("[127.0.0.1]:{gw_submission}"))
        .replace(
            "smtpd_tls_security_level=encrypt",
            "smtpd_tls_security_level=none",
        )
        .replace("smtpd_sasl_auth_enable=yes", "smtpd_sasl_auth_enable=no")
        .replace("permit_sasl_authenticated", "permit_mynetworks")
        .replace(
            "hash:/etc/postfix/sender_login",
            "inline:{alice@example-law.dk=alice}",
        );
    let pf = Postfix::try_start(
        &format!("127.0.0.1:{front}"),
        &format!("[127.0.0.1]:{}", sink.addr.port()),
        &format!(
            "{main}\n{}\n",
            main_extra.replace(
                "[127.0.0.1]:10025",
                &format!("[127.0.0.1]:{}", gw.addr.port())
            )
        ),
        &master,
    )?;
    Ok((gw, pf, front, submission, recips))
}

fn swaks(port: u16, from: &str, to: &str, data: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    let out = Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--from",
            from,
            "--to",
            to,
            "--timeout",
            "20",
        ])
        .arg("--data")
        .arg(format!("@{}", file.path().display()))
        .output()
        .expect("swaks");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "swaks: {text}");
    text
}

#[test]
fn mail_through_postfix_and_the_gateway() {
    let Some(s) = setup() else { return };
    // Plain mail passes; the gateway logs the original client (XFORWARD).
    swaks(
        s.front,
        "alice@example.org",
        "bob@example-law.dk",
        &common::message("pf-plain", "plain through postfix"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || s.sink.count() == 1),
        "{}",
        s.pf.log()
    );
    let got = s.sink.received()[0].clone();
    assert!(got.text().contains("plain through postfix"));
    assert!(
        got.text().matches("Received: ").count() >= 2,
        "both Postfix hops recorded: {}",
        got.text()
    );
    assert!(
        s.gw.log().contains("original_client=localhost[127.0.0.1]"),
        "{}",
        s.gw.log()
    );

    // Encrypted inbound mail arrives decrypted.
    let cms = pki::cms_encrypt(
        &pki::inner("hemmelig via postfix"),
        "org-oces2",
        &["-aes-256-cbc"],
    );
    swaks(
        s.front,
        "sender@example.org",
        "bob@example-law.dk",
        &pki::enveloped_message("pf-enc", "bob@example-law.dk", &cms, P7M),
    );
    assert!(
        wait_until(Duration::from_secs(30), || s.sink.count() == 2),
        "{}",
        s.pf.log()
    );
    let got = s.sink.received()[1].clone();
    assert!(
        got.text().contains("hemmelig via postfix"),
        "{}",
        got.text()
    );
    assert!(got.text().contains("X-SMIME-Gateway: decrypted"));

    // Outbound mail submitted on the submission service, From the sender
    // itself, leaves signed and encrypted.
    let from_bob = String::from_utf8(common::message("pf-out", "til retten via postfix"))
        .unwrap()
        .replace(
            "From: Alice <alice@example.org>",
            "From: Bob <bob@example-law.dk>",
        );
    swaks(
        s.submission,
        "bob@example-law.dk",
        "post@domstol.dk",
        from_bob.as_bytes(),
    );
    assert!(
        wait_until(Duration::from_secs(30), || s.sink.count() == 3),
        "{}",
        s.pf.log()
    );
    let got = s.sink.received()[2].clone();
    assert!(
        got.text().contains("smime-type=enveloped-data"),
        "{}",
        got.text()
    );
    let inner = pki::cms_decrypt_smime(&got.data, "court-oces3");
    assert!(String::from_utf8_lossy(&inner).contains("multipart/signed"));

    // The same mail on port 25 (or re-sent by Postfix) is encrypted but
    // not signed: it did not come on the submission path.
    let from_bob_25 = from_bob.replace("pf-out@test", "pf-out-25@test");
    swaks(
        s.front,
        "bob@example-law.dk",
        "post@domstol.dk",
        from_bob_25.as_bytes(),
    );
    // The copy (a notice to Bob that it went out unsigned follows too).
    let copy_25 =
        |r: &common::sink::Received| !r.from.is_empty() && r.text().contains("<pf-out-25@test>");
    assert!(
        wait_until(Duration::from_secs(30), || s
            .sink
            .received()
            .iter()
            .any(copy_25)),
        "{}",
        s.pf.log()
    );
    let got = s.sink.received().into_iter().find(copy_25).unwrap();
    let inner = pki::cms_decrypt_smime(&got.data, "court-oces3");
    assert!(
        !String::from_utf8_lossy(&inner).contains("multipart/signed"),
        "port 25 mail was signed"
    );
}

#[test]
fn postfix_keeps_mail_while_the_gateway_is_down() {
    let Some(mut s) = setup() else { return };
    s.gw.kill9();
    let transcript = swaks(
        s.front,
        "alice@example.org",
        "bob@example-law.dk",
        &common::message("pf-down", "waiting in postfix"),
    );
    assert!(transcript.contains("250 2.0.0 Ok: queued"), "{transcript}");
    assert!(
        wait_until(Duration::from_secs(20), || s
            .pf
            .log()
            .contains("status=deferred")),
        "postfix did not defer: {}",
        s.pf.log()
    );
    assert_eq!(s.sink.count(), 0);
    assert!(s.pf.queued() >= 1, "postfix must keep the message");
    s.gw.spawn();
    s.pf.flush();
    assert!(
        wait_until(Duration::from_secs(30), || {
            s.pf.flush();
            s.sink.count() == 1
        }),
        "not delivered after the gateway came back: {}",
        s.pf.log()
    );
    assert!(s.sink.received()[0].text().contains("waiting in postfix"));
}

#[test]
fn a_virtual_alias_to_an_outside_address_receives_no_plaintext() {
    let secret = "hemmelig: bilag til sag 2024-117";
    let Some(s) = setup_with(
        "virtual_alias_maps = inline:{ { alias@example-law.dk = friend@example.org, bob@example-law.dk } }",
    ) else {
        return;
    };
    let cms = pki::cms_encrypt(&pki::inner(secret), "org-oces3", &["-aes-256-cbc"]);
    swaks(
        s.front,
        "sender@example.org",
        "alias@example-law.dk",
        &pki::enveloped_message("pf-alias", "alias@example-law.dk", &cms, P7M),
    );
    // One copy each: bob's decrypted, the outside friend's as it came.
    let has = |rcpt: &str| {
        s.sink
            .received()
            .iter()
            .any(|r| r.rcpts.iter().any(|x| x == rcpt))
    };
    assert!(
        wait_until(Duration::from_secs(30), || has("friend@example.org")
            && has("bob@example-law.dk")),
        "{}\n{}",
        s.pf.log(),
        s.gw.log()
    );
    let got = s.sink.received();
    let friend = got
        .iter()
        .find(|r| r.rcpts.iter().any(|x| x == "friend@example.org"))
        .expect("the outside address got nothing");
    let bob = got
        .iter()
        .find(|r| r.rcpts.iter().any(|x| x == "bob@example-law.dk"))
        .expect("bob got nothing");
    assert!(
        bob.text().contains(secret),
        "the internal copy is decrypted (the test can fail)"
    );
    assert!(
        !friend.text().contains(secret),
        "plaintext reached an outside address: {}",
        friend.text()
    );
    assert!(friend.text().contains("smime-type=enveloped-data"));
    // The gateway saw the final recipients (mapping before the filter),
    // and Postfix did not map again after it.
    assert!(s.gw.log().contains("friend@example.org"), "{}", s.gw.log());
    let deliveries: usize = s.sink.received().iter().map(|r| r.rcpts.len()).sum();
    assert_eq!(deliveries, 2, "mapped twice?");
}

#[test]
fn a_mailbox_failure_after_the_gateway_is_reported_to_the_postmaster_not_the_sender() {
    let secret = "hemmelig: retur til afsender?";
    let mut script = Script::default();
    script.rcpt_replies.insert(
        "gone@example-law.dk".into(),
        "550 5.1.1 <gone@example-law.dk>: no such mailbox".into(),
    );
    // The gateway's hostname in the harness is gw.test: its return path.
    let Some(s) = setup_full(
        "transport_maps = inline:{gw.test=smime-gateway:[127.0.0.1]:10025}",
        script,
    ) else {
        return;
    };
    let cms = pki::cms_encrypt(&pki::inner(secret), "org-oces3", &["-aes-256-cbc"]);
    swaks(
        s.front,
        "sender@example.org",
        "gone@example-law.dk",
        &pki::enveloped_message("pf-gone", "gone@example-law.dk", &cms, P7M),
    );
    // Postfix's bounce goes to the gateway's return path; the gateway
    // tells the postmaster.
    assert!(
        wait_until(Duration::from_secs(40), || s
            .sink
            .received()
            .iter()
            .any(|r| r.rcpts == ["postmaster@example-law.dk"])),
        "{}\n{}",
        s.pf.log(),
        s.gw.log()
    );
    assert!(s.gw.log().contains("event=\"returned\""), "{}", s.gw.log());
    let got = s.sink.received();
    assert!(
        !got.iter()
            .any(|r| r.rcpts.iter().any(|x| x == "sender@example.org")),
        "the outside sender heard of it"
    );
    for r in &got {
        assert!(!r.text().contains(secret), "plaintext left: {:?}", r.rcpts);
    }
    assert!(
        s.pf.log().contains("smimegw-bounce+"),
        "Postfix bounced to the return path: {}",
        s.pf.log()
    );
}

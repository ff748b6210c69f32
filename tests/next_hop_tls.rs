//! Verified TLS towards next hops: with `relay.tls = "required"` the
//! gateway hands mail (and recipient-verification probes) only to a next
//! hop whose certificate it can verify. The attacker here sits on the path
//! to the mailbox server with a certificate of their own: from an unknown
//! CA, or from the right CA but for another host name, or simply not the
//! pinned one. What they would observe is the message arriving at their
//! next hop; each refusal has a positive control with the genuine
//! certificate that does arrive.

mod common;

use std::time::Duration;

use common::client::Client;
use common::sink::{NextHopCert, Script, Sink};
use common::{submit, wait_until, Gateway, Options};

/// Options for a gateway that requires verified TLS towards `sink`, which
/// is both next hops; `env` adds settings (`SMIMEGW__RELAY__...`).
fn required(sink: &Sink, env: &[(&str, String)]) -> Options {
    let mut opts = Options::new(sink.addr);
    opts.env
        .push(("SMIMEGW__RELAY__TLS".into(), "required".into()));
    for (k, v) in env {
        opts.env.push((k.to_string(), v.clone()));
    }
    opts
}

/// Both hops expect the name `name`.
fn expect_name(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SMIMEGW__RELAY__INTERNAL_TLS__NAME", name.to_string()),
        ("SMIMEGW__RELAY__EXTERNAL_TLS__NAME", name.to_string()),
    ]
}

fn write_ca(gw_dir: &std::path::Path, file: &str, pem: &str) -> String {
    let path = gw_dir.join(file);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

/// Sends one message to an internal and an external recipient.
fn send(gw: &Gateway, id: &str) {
    let r = submit(
        gw,
        "alice@example.org",
        &["bob@example-law.dk", "carol@example.org"],
        &common::message(id, "secret case file"),
    );
    assert_eq!(r.code, 250, "{r:?}");
}

/// Waits for two deferrals (one per recipient) and returns the log.
fn deferred_log(gw: &Gateway) -> String {
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log()
            .matches("event=\"deferred\"")
            .count()
            >= 2),
        "not deferred; log:\n{}",
        gw.log()
    );
    gw.log()
}

#[test]
fn a_next_hop_with_a_certificate_from_an_unknown_ca_gets_nothing() {
    let attacker = NextHopCert::issue(&["mail.test"]);
    let sink = Sink::start_tls(Script::default(), &attacker);
    // No tls_ca: the system's roots, which know nothing of the attacker's CA.
    let gw = Gateway::start(required(&sink, &expect_name("mail.test")));
    send(&gw, "unknown-ca-1");
    let log = deferred_log(&gw);
    assert!(log.contains("UnknownIssuer"), "reason not logged:\n{log}");
    assert_eq!(sink.count(), 0, "delivered to an unverified next hop");
    assert_eq!(sink.data_attempts(), 0);
    assert_eq!(gw.queued(), 1, "the message must stay queued");
}

#[test]
fn a_configured_ca_trusts_only_that_ca() {
    let genuine = NextHopCert::issue(&["mail.test"]);
    let attacker = NextHopCert::issue(&["mail.test"]);
    let sink = Sink::start_tls(Script::default(), &attacker);
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "ca.pem", &genuine.ca_pem);
    let mut env = expect_name("mail.test");
    env.push(("SMIMEGW__RELAY__TLS_CA", ca));
    let gw = Gateway::start(required(&sink, &env));
    send(&gw, "other-ca-1");
    let log = deferred_log(&gw);
    assert!(log.contains("UnknownIssuer"), "reason not logged:\n{log}");
    assert_eq!(sink.count(), 0);
}

#[test]
fn a_certificate_for_another_host_name_gets_nothing() {
    let cert = NextHopCert::issue(&["other.test"]);
    let sink = Sink::start_tls(Script::default(), &cert);
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "ca.pem", &cert.ca_pem);
    let mut env = expect_name("mail.test");
    env.push(("SMIMEGW__RELAY__TLS_CA", ca));
    let gw = Gateway::start(required(&sink, &env));
    send(&gw, "wrong-name-1");
    let log = deferred_log(&gw);
    assert!(
        // The reply is quoted in the log, its quotes escaped.
        log.contains("not valid for name \\\"mail.test\\\""),
        "reason not logged:\n{log}"
    );
    assert_eq!(sink.count(), 0);
}

#[test]
fn with_its_ca_configured_the_next_hop_gets_the_mail_over_tls() {
    // Positive control for the three refusals above: same sink, same
    // settings, the genuine CA and name.
    let cert = NextHopCert::issue(&["mail.test"]);
    let sink = Sink::start_tls(Script::default(), &cert);
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "ca.pem", &cert.ca_pem);
    let mut env = expect_name("mail.test");
    env.push(("SMIMEGW__RELAY__TLS_CA", ca));
    let gw = Gateway::start(required(&sink, &env));
    send(&gw, "good-ca-1");
    assert!(
        wait_until(Duration::from_secs(20), || sink
            .received()
            .iter()
            .map(|r| r.rcpts.len())
            .sum::<usize>()
            == 2),
        "not delivered; log:\n{}",
        gw.log()
    );
    assert!(sink.received().iter().all(|r| r.tls), "sent without TLS");
    assert!(!gw.log().contains("event=\"deferred\""), "{}", gw.log());
}

#[test]
fn a_pinned_fingerprint_accepts_that_certificate_and_no_other() {
    let pinned = NextHopCert::issue(&["mail.test"]);
    let other = NextHopCert::issue(&["mail.test"]);
    let pin = |c: &NextHopCert| {
        // Written the way openssl prints it: upper case with colons.
        let hex = c.fingerprint().to_ascii_uppercase();
        let pairs: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
        pairs.join(":")
    };
    let env = vec![
        ("SMIMEGW__RELAY__INTERNAL_TLS__FINGERPRINT", pin(&pinned)),
        ("SMIMEGW__RELAY__EXTERNAL_TLS__FINGERPRINT", pin(&pinned)),
    ];

    let impostor = Sink::start_tls(Script::default(), &other);
    let gw = Gateway::start(required(&impostor, &env));
    send(&gw, "pin-bad-1");
    let log = deferred_log(&gw);
    assert!(log.contains("not the pinned"), "reason not logged:\n{log}");
    assert_eq!(impostor.count(), 0);
    drop(gw);

    // Positive control: the pinned certificate, though from a CA nobody
    // trusts, is accepted.
    let genuine = Sink::start_tls(Script::default(), &pinned);
    let gw = Gateway::start(required(&genuine, &env));
    send(&gw, "pin-good-1");
    assert!(
        wait_until(Duration::from_secs(20), || genuine.count() >= 1),
        "not delivered; log:\n{}",
        gw.log()
    );
    assert!(genuine.received().iter().all(|r| r.tls));
}

#[test]
fn opportunistic_tls_takes_any_certificate() {
    // What "opportunistic" means, stated as a test: encrypted, unverified.
    let cert = NextHopCert::issue(&["whatever.test"]);
    let sink = Sink::start_tls(Script::default(), &cert);
    let mut opts = Options::new(sink.addr);
    opts.env
        .push(("SMIMEGW__RELAY__TLS".into(), "opportunistic".into()));
    let gw = Gateway::start(opts);
    send(&gw, "opportunistic-1");
    assert!(wait_until(Duration::from_secs(20), || sink.count() >= 1));
    assert!(sink.received().iter().all(|r| r.tls));
}

/// Recipient verification asks the mailbox server over the same verified
/// TLS: a probe to an impostor finds nothing out (450, try later), the
/// genuine server answers.
#[test]
fn recipient_verification_probes_verify_the_certificate_too() {
    let genuine = NextHopCert::issue(&["mail.test"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "ca.pem", &genuine.ca_pem);
    let probe = |cert: &NextHopCert| -> u16 {
        let mut script = Script::default();
        script.rcpt_replies.insert(
            "nobody@example-law.dk".into(),
            "550 5.1.1 no such user".into(),
        );
        let sink = Sink::start_tls(script, cert);
        let mut env = expect_name("mail.test");
        env.push(("SMIMEGW__RELAY__TLS_CA", ca.clone()));
        let mut opts = required(&sink, &env);
        opts.trusted = false;
        opts.extra_server = "verify_recipients = true\n".into();
        let gw = Gateway::start(opts);
        let mut c = Client::connect(gw.addr).unwrap();
        c.ehlo().unwrap();
        assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").unwrap().code, 250);
        c.cmd("RCPT TO:<nobody@example-law.dk>").unwrap().code
    };
    let impostor = NextHopCert::issue(&["mail.test"]);
    assert_eq!(probe(&impostor), 450, "an unverified server was asked");
    assert_eq!(probe(&genuine), 550, "the genuine server's answer is used");
}

#[test]
fn a_next_hop_that_does_not_offer_starttls_gets_nothing_when_tls_is_required() {
    // The attacker strips STARTTLS: their hop answers EHLO without it.
    let stripped = Sink::start(Script::default());
    let gw = Gateway::start(required(&stripped, &expect_name("mail.test")));
    send(&gw, "stripped-1");
    let log = deferred_log(&gw);
    assert!(
        log.contains("does not offer STARTTLS"),
        "reason not logged:\n{log}"
    );
    assert_eq!(stripped.count(), 0, "delivered without TLS");
    assert_eq!(stripped.data_attempts(), 0);
    assert_eq!(gw.queued(), 1, "the message must stay queued");

    // Control: the same hop without TLS required gets the message, so the
    // absence above is the policy's doing.
    let plain = Sink::start(Script::default());
    let gw = Gateway::start(Options::new(plain.addr));
    send(&gw, "stripped-2");
    assert!(wait_until(Duration::from_secs(20), || plain.count() >= 1));
}

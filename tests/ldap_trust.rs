//! LDAP answers bind a certificate to an address only when they come over
//! verified TLS and are for the address asked. The attacker is a directory
//! (or someone between it and the gateway) answering a lookup for one
//! address with an entry for another, or answering a plain `ldap://`
//! search at all: its certificate must not be used for the address asked.
//! Observed through `explain --rcpt` (which certificates outbound mail
//! would be encrypted to) and the message that reaches the next hop,
//! against a real slapd, with the genuine answer over StartTLS as positive
//! control.

mod common;

use common::sink::{NextHopCert, Script, Sink};
use common::slapd::Slapd;
use common::{pki, submit, wait_until, Gateway, Options};
use std::time::Duration;

const RULES: &str = r#"
[[rule]]
name = "partners"
match = ["*@partner.example", "*@domstol.dk"]
generation = "any"
encrypt = "required"
sign = true
on_missing_certificate = "bounce"
"#;

/// A gateway asking the directory described by the `ldap` TOML lines.
fn gateway(sink: &Sink, ldap: &str) -> Gateway {
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n\n[[certificates.ldap]]\nbase = \"c=DK\"\n\
         timeout = \"3s\"\ncache_ttl = \"1s\"\n{ldap}\n{RULES}",
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
    );
    Gateway::start(opts)
}

/// `explain --rcpt rcpt`: stdout and stderr.
fn explain(gw: &Gateway, rcpt: &str) -> (String, String) {
    let out = gw.cli(&["explain", "--rcpt", rcpt, "--from", "alice@example-law.dk"]);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A slapd with TLS whose one entry is `mail=advokat@partner.example`
/// with the court's certificate (which names post@domstol.dk only), the
/// CA of its TLS certificate, and the folder holding that CA's file.
fn tls_slapd() -> (Slapd, std::path::PathBuf, tempfile::TempDir) {
    let cert = NextHopCert::issue(&["127.0.0.1"]);
    let ldap = Slapd::start("advokat@partner.example", Some(&cert));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ldap-ca.pem");
    std::fs::write(&ca, &cert.ca_pem).unwrap();
    (ldap, ca, dir)
}

/// A message from Alice (as herself, so it may be signed) to `rcpt`.
fn send(gw: &Gateway, rcpt: &str, id: &str) {
    let body = String::from_utf8(common::message(id, "Til retten: bilag 1-3."))
        .unwrap()
        .replace("alice@example.org", "alice@example-law.dk");
    let r = submit(gw, "alice@example-law.dk", &[rcpt], body.as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
}

#[test]
fn an_ldap_answer_for_another_address_is_ignored() {
    let (ldap, ca, _dir) = tls_slapd();
    let sink = Sink::start(Script::default());
    // A filter that lets the server answer with the Partner entry whatever
    // is asked: the server's answer is all that decides.
    let gw = gateway(
        &sink,
        &format!(
            "url = \"ldap://127.0.0.1:{}\"\nstarttls = true\ntls_ca = \"{}\"\n\
             filter = \"(|(mail={{address}})(cn=Partner))\"\n",
            ldap.port,
            ca.display()
        ),
    );
    let (report, log) = explain(&gw, "other@partner.example");
    assert!(
        !report.contains("Demo Court"),
        "used for another address:\n{report}"
    );
    assert!(report.contains("outcome:     bounce"), "{report}");
    assert!(log.contains("ldap-mismatch"), "not logged:\n{log}");
    // Positive control: asked for the address the entry holds, it is used.
    let (report, _) = explain(&gw, "advokat@partner.example");
    assert!(
        report.contains("Demo Court") && report.contains("LDAP"),
        "{report}"
    );
    assert!(report.contains("outcome:     send encrypted"), "{report}");
}

#[test]
fn ldaps_and_starttls_are_verified() {
    let cert = NextHopCert::issue(&["127.0.0.1"]);
    let ldap = Slapd::start("advokat@partner.example", Some(&cert));
    let tls_port = ldap.tls_port.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ldap-ca.pem");
    std::fs::write(&ca, &cert.ca_pem).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, NextHopCert::issue(&["127.0.0.1"]).ca_pem).unwrap();
    let sink = Sink::start(Script::default());
    let cases = [
        (
            "ldaps with its CA",
            format!(
                "url = \"ldaps://127.0.0.1:{tls_port}\"\ntls_ca = \"{}\"\n",
                ca.display()
            ),
            true,
        ),
        (
            "StartTLS with its CA",
            format!(
                "url = \"ldap://127.0.0.1:{}\"\nstarttls = true\ntls_ca = \"{}\"\n",
                ldap.port,
                ca.display()
            ),
            true,
        ),
        (
            "ldaps with another CA",
            format!(
                "url = \"ldaps://127.0.0.1:{tls_port}\"\ntls_ca = \"{}\"\n",
                other_ca.display()
            ),
            false,
        ),
        (
            "StartTLS with the system roots",
            format!(
                "url = \"ldap://127.0.0.1:{}\"\nstarttls = true\n",
                ldap.port
            ),
            false,
        ),
    ];
    for (what, lines, works) in cases {
        let gw = gateway(&sink, &lines);
        let (report, log) = explain(&gw, "advokat@partner.example");
        if works {
            assert!(
                report.contains("Demo Court") && report.contains("outcome:     send encrypted"),
                "{what}:\n{report}\n{log}"
            );
        } else {
            assert!(
                !report.contains("Demo Court"),
                "{what}: unverified server used:\n{report}"
            );
            assert!(
                report.contains("outcome:     defer"),
                "{what}: an unverifiable directory must defer:\n{report}\n{log}"
            );
        }
    }
}

#[test]
fn a_plain_ldap_answer_is_never_a_certificate_to_encrypt_to() {
    let (ldap, ca, _dir) = tls_slapd();
    let sink = Sink::start(Script::default());
    // The attacker on the path answers every plain search with an entry
    // listing the address asked and carrying a certificate that chains to
    // the anchors (the court's, which names post@domstol.dk).
    let plain = gateway(
        &sink,
        &format!(
            "url = \"ldap://127.0.0.1:{}\"\nfilter = \"(|(mail={{address}})(cn=Partner))\"\n",
            ldap.port
        ),
    );
    // What reaches the next hop: nothing for the partner, nothing the
    // court's key opens (the bounce goes back to Alice).
    send(&plain, "advokat@partner.example", "plain-ldap");
    assert!(
        wait_until(Duration::from_secs(20), || sink.received().iter().any(
            |r| r.from.is_empty() || r.rcpts.contains(&"advokat@partner.example".to_string())
        )),
        "neither a bounce nor the message:\n{}",
        plain.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    for r in sink.received() {
        assert!(
            pki::cms_decrypt_fails(&r.data, "court-oces3"),
            "encrypted to the attacker's certificate"
        );
        assert!(
            !r.rcpts.contains(&"advokat@partner.example".to_string()),
            "sent to the partner over a plain LDAP answer:\n{}",
            r.text()
        );
    }

    let (report, log) = explain(&plain, "advokat@partner.example");
    assert!(
        !report.contains("Demo Court"),
        "plain LDAP answer used:\n{report}\n{log}"
    );
    assert!(report.contains("outcome:     bounce"), "{report}");
    assert!(
        report.contains("is plain ldap:// (unauthenticated)"),
        "explain does not say why:\n{report}"
    );
    // Nor when the certificate itself names the address: anyone can hold
    // one that chains to the anchors and names any address.
    let (report, _) = explain(&plain, "post@domstol.dk");
    assert!(
        !report.contains("Demo Court") && report.contains("outcome:     bounce"),
        "plain LDAP answer used:\n{report}"
    );

    // Positive control: the same entry over StartTLS is the directory's
    // word for the address; explain and the message use its certificate,
    // and the observation above would have seen it.
    let sink = Sink::start(Script::default());
    let tls = gateway(
        &sink,
        &format!(
            "url = \"ldap://127.0.0.1:{}\"\nstarttls = true\ntls_ca = \"{}\"\n",
            ldap.port,
            ca.display()
        ),
    );
    let (report, log) = explain(&tls, "advokat@partner.example");
    assert!(
        report.contains("Demo Court") && report.contains("outcome:     send encrypted"),
        "{report}\n{log}"
    );
    send(&tls, "advokat@partner.example", "tls-ldap");
    assert!(
        wait_until(Duration::from_secs(20), || sink
            .received()
            .iter()
            .any(|r| r.rcpts.contains(&"advokat@partner.example".to_string()))),
        "{}",
        tls.log()
    );
    let copy = sink
        .received()
        .into_iter()
        .find(|r| r.rcpts.contains(&"advokat@partner.example".to_string()))
        .unwrap();
    assert!(
        pki::cms_try_decrypt(&copy.data, "court-oces3").is_some(),
        "the control message is not encrypted to the directory's certificate"
    );
}

/// An LDAP answer is not used once the directory's settings changed: a
/// reload that narrows the search (here the filter; StartTLS, the CA,
/// base and attribute alike) is in force at once, not after `cache_ttl`.
/// Attacker: whoever got an answer into the cache under the old settings.
/// Positive control: before the reload the message goes out encrypted to
/// the directory's certificate (and that answer is cached for an hour).
#[test]
fn a_reload_does_not_keep_answers_fetched_under_other_ldap_settings() {
    let (ldap, ca, _dir) = tls_slapd();
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n\n[[certificates.ldap]]\nbase = \"c=DK\"\n\
         timeout = \"3s\"\ncache_ttl = \"1h\"\nurl = \"ldap://127.0.0.1:{}\"\nstarttls = true\n\
         tls_ca = \"{}\"\n{RULES}",
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        ldap.port,
        ca.display(),
    );
    let gw = Gateway::start(opts);
    let partner = "advokat@partner.example".to_string();
    let to_partner = |sink: &Sink| {
        sink.received()
            .into_iter()
            .filter(|r| r.rcpts.contains(&partner))
            .collect::<Vec<_>>()
    };
    send(&gw, &partner, "ldap-before");
    assert!(
        wait_until(Duration::from_secs(20), || to_partner(&sink).len() == 1),
        "{}",
        gw.log()
    );
    assert!(
        pki::cms_try_decrypt(&to_partner(&sink)[0].data, "court-oces3").is_some(),
        "the control message is not encrypted to the directory's certificate"
    );

    // The operator narrows the filter: the directory no longer answers
    // for the partner.
    let text = std::fs::read_to_string(&gw.config).unwrap().replace(
        "cache_ttl = \"1h\"\n",
        "cache_ttl = \"1h\"\nfilter = \"(mail=nobody-{address})\"\n",
    );
    let tmp = gw.config.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &gw.config).unwrap();
    gw.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log()
            .contains("configuration reloaded")),
        "{}",
        gw.log()
    );
    send(&gw, &partner, "ldap-after");
    assert!(
        wait_until(Duration::from_secs(20), || to_partner(&sink).len() > 1
            || sink.received().iter().any(|r| r.from.is_empty())),
        "{}",
        gw.log()
    );
    assert_eq!(
        to_partner(&sink).len(),
        1,
        "sent on the answer cached under the old filter"
    );
    assert!(sink.received().iter().any(|r| r.from.is_empty()));
}

/// A directory on `port` that answers the first search with a flood:
/// one PDU that never ends (`endless`), or whole entries of 30,000 empty
/// values each up to 8 MiB, then the search's end. The counter says how
/// many octets of it were sent.
fn flooding_directory(endless: bool) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n => {
                out.push(0x84);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        out.extend_from_slice(content);
        out
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&sent);
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = [0u8; 4096];
        let Ok(n) = s.read(&mut request) else {
            return;
        };
        // 30 len 02 len id: the search's message id.
        let at = 2 + usize::from(request[1] & 0x80 != 0) * usize::from(request[1] & 0x7f);
        let id = request[at + 2..at + 2 + usize::from(request[at + 1])].to_vec();
        assert!(n > at + 2);
        let mut send = |bytes: &[u8]| {
            let ok = s.write_all(bytes).is_ok();
            if ok {
                counted.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            ok
        };
        if endless {
            // A SearchResultEntry that claims 2 GiB and never ends.
            let head = [
                0x30, 0x84, 0x7f, 0xff, 0xff, 0xf0, 0x02, 0x01, 0x01, 0x64, 0x84, 0x7f, 0xff, 0xff,
                0x00,
            ];
            if !send(&head) {
                return;
            }
            let chunk = vec![0x04u8; 64 * 1024];
            while counted.load(Ordering::Relaxed) < 256 << 20 && send(&chunk) {}
        } else {
            let values = b"\x04\x00".repeat(30_000);
            let attribute = tlv(
                0x30,
                &[tlv(0x04, b"userCertificate;binary"), tlv(0x31, &values)].concat(),
            );
            let entry = tlv(
                0x30,
                &[
                    tlv(0x02, &id),
                    tlv(
                        0x64,
                        &[tlv(0x04, b"cn=x,c=DK"), tlv(0x30, &attribute)].concat(),
                    ),
                ]
                .concat(),
            );
            while counted.load(Ordering::Relaxed) + (entry.len() as u64) < 8 << 20 && send(&entry) {
            }
            let done = tlv(
                0x30,
                &[tlv(0x02, &id), tlv(0x65, b"\x0a\x01\x00\x04\x00\x04\x00")].concat(),
            );
            send(&done);
        }
        // Held open, silent, until the daemon lets go.
        let _ = s.read(&mut request);
    });
    (port, sent)
}

/// Review 25: ldap3 keeps an answer whole in memory, with no bound of its
/// own. The attacker is the directory, or anyone on the path of plain
/// `ldap://`, answering the lookup for a signer's certificate with one
/// PDU that never ends (256 MiB here; 1.5 GB in 3 s took 1.5 GB of
/// memory), or (review 26) with entries of empty values, which ldap3
/// holds at some 25 times their size (8 MiB took 200 MiB). Observed: the
/// daemon's peak memory, and that the message is delivered all the same.
/// Control: the flood did reach the daemon (the server sent at least the
/// cap, 1 MiB, before it was cut off).
#[test]
fn an_endless_ldap_answer_costs_no_more_memory_than_its_cap() {
    for endless in [true, false] {
        let (port, sent) = flooding_directory(endless);
        let sink = Sink::start(Script::default());
        let gw = gateway(&sink, &format!("url = \"ldap://127.0.0.1:{port}\"\n"));
        let mut m = b"From: Domstol <post@domstol.dk>\r\nTo: <bob@example-law.dk>\r\n\
                      Subject: flood\r\nMessage-ID: <ldap-flood@test>\r\n"
            .to_vec();
        m.extend_from_slice(&pki::cms_sign_bare(&pki::inner("Kendelse"), "court-oces3"));
        let before = gw.peak_kb();
        let r = submit(&gw, "post@domstol.dk", &["bob@example-law.dk"], &m);
        assert_eq!(r.code, 250, "{r:?}");
        assert!(
            wait_until(Duration::from_secs(30), || sink
                .received()
                .iter()
                .any(|r| r.text().contains("<ldap-flood@test>"))),
            "not delivered:\n{}",
            gw.log()
        );
        let grown = (gw.peak_kb() - before) / 1024;
        let flooded = sent.load(std::sync::atomic::Ordering::Relaxed) >> 20;
        assert!(
            flooded >= 1,
            "endless {endless}: the server sent under 1 MiB: no flood to bound"
        );
        assert!(
            grown < 48,
            "endless {endless}: peak memory grew {grown} MiB ({flooded} MiB sent)"
        );
    }
}

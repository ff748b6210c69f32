//! LDAP answers count only for the address asked, and the directory can
//! be reached over verified TLS. The attacker is a directory (or someone
//! between it and the gateway) answering a lookup for one address with an
//! entry for another: its certificate must not be used for the address
//! asked. Observed through `explain --rcpt` (which certificates outbound
//! mail would be encrypted to), against a real slapd, with the genuine
//! answer as positive control.

mod common;

use common::sink::{NextHopCert, Script, Sink};
use common::slapd::Slapd;
use common::{pki, Gateway, Options};

const RULES: &str = r#"
[[rule]]
name = "partners"
match = ["*@partner.example"]
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

#[test]
fn an_ldap_answer_for_another_address_is_ignored() {
    let ldap = Slapd::start("advokat@partner.example", None);
    let sink = Sink::start(Script::default());
    // A filter that lets the server answer with the Partner entry whatever
    // is asked: the server's answer is all that decides.
    let gw = gateway(
        &sink,
        &format!(
            "url = \"ldap://127.0.0.1:{}\"\nfilter = \"(|(mail={{address}})(cn=Partner))\"\n",
            ldap.port
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

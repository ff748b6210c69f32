//! Unit tests of the mailbox side of the pipeline: verdicts, harvest
//! offers and binding, revocation and LDAP asks, the trace header.

use super::*;
use crate::config::load::test_settings;
use crate::pki::Keyring;
use crate::smime::mime;
use openssl::cms::{CMSOptions, CmsContentInfo};
use std::collections::HashMap;

fn envelope() -> Envelope {
    Envelope {
        mail_from: "a@example.org".into(),
        rcpts: vec!["bob@example-law.dk".into()],
        received: 0,
        client: "127.0.0.1".into(),
        helo: "x".into(),
        eight_bit: false,
        smtputf8: false,
        released: false,
        submission: false,
    }
}

/// A message signed (opaque) by a self-signed identity that is also
/// the trust anchor.
fn signed_message(id: &crate::pki::Identity) -> Vec<u8> {
    let der = CmsContentInfo::sign(
        Some(&id.cert),
        Some(&id.key),
        None,
        Some(b"Content-Type: text/plain\r\n\r\nhello\r\n"),
        CMSOptions::BINARY,
    )
    .unwrap()
    .to_der()
    .unwrap();
    let mut m = b"From: <a@example.org>\r\nSubject: s\r\nContent-Type: application/pkcs7-mime; smime-type=signed-data\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    m.extend_from_slice(&mime::base64_lines(&der));
    m
}

fn run(
    settings: &crate::config::Settings,
    keys: &Keyring,
    body: &[u8],
    answers: &HashMap<String, SignerRevocation>,
) -> Vec<String> {
    let ctx = Context {
        settings,
        keys,
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        known: &[],
        signer_revocation: answers,
        ldap_asked: false,
        spill: &crate::blob::InMemory,
        seen: None,
        quarantine_full: false,
    };
    let mut out = Actions::default();
    let mailbox = Mailbox {
        rcpt: "bob@example-law.dk".into(),
        deliver: Deliver::Plain,
        encryption: Encryption::default(),
    };
    mailboxes(
        &envelope(),
        vec![mailbox],
        body,
        Arc::new(mime::shape(body)),
        &ctx,
        &mut out,
    );
    out.into_vec()
        .into_iter()
        .map(|a| match a {
            // The trace header, unfolded.
            Action::Deliver(c) => String::from_utf8_lossy(&c.body)
                .replace("\r\n ", " ")
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            Action::CheckSigner { .. } => "check-signer".into(),
            other => format!("{other:?}").chars().take(20).collect(),
        })
        .collect()
}

#[test]
fn an_unknown_revocation_is_asked_for_and_the_answer_decides() {
    let id = crate::pki::testkit::identity(1024, "Signer").unwrap();
    let keys = Keyring {
        identities: Vec::new(),
        anchors: vec![id.cert.clone()],
        ..Keyring::default()
    };
    let body = signed_message(&id);
    let soft = test_settings("");
    // First run: not known yet, so asked for; the copy says unknown.
    let first = run(&soft, &keys, &body, &HashMap::new());
    assert!(first.iter().any(|a| a == "check-signer"), "{first:?}");
    assert!(
        first.iter().any(|a| a.contains("revocation=unknown")),
        "{first:?}"
    );
    // With the answer: revoked, and not asked again.
    let mut answers = HashMap::new();
    answers.insert(
        crate::pki::signer::answer_key(&id.cert, std::slice::from_ref(&id.cert)),
        SignerRevocation::Revoked("CRL".into()),
    );
    let second = run(&soft, &keys, &body, &answers);
    assert!(!second.iter().any(|a| a == "check-signer"), "{second:?}");
    assert!(
        second
            .iter()
            .any(|a| a.starts_with("X-SMIME-Gateway: signature[1]=revoked")),
        "{second:?}"
    );
    // Revocation off: nothing asked, said so.
    let off = test_settings("[trust]\nrevocation = \"off\"\n");
    let third = run(&off, &keys, &body, &HashMap::new());
    assert!(!third.iter().any(|a| a == "check-signer"), "{third:?}");
    assert!(
        third.iter().any(|a| a.contains("revocation=not-checked")),
        "{third:?}"
    );
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_certificate_is_bound_only_to_its_own_sender() {
    let court = v(&["post@domstol.dk"]);
    assert_eq!(
        binding("post@Domstol.dk", &v(&["Post@domstol.dk"]), &court).as_deref(),
        Ok("post@domstol.dk")
    );
    // The poisoning mail, every way round.
    for (sender, from) in [
        ("random@evil.example", "random@evil.example"),
        ("random@evil.example", "post@domstol.dk"),
        ("post@domstol.dk", "random@evil.example"),
    ] {
        assert!(
            binding(sender, &v(&[from]), &court).is_err(),
            "{sender} {from}"
        );
    }
    assert!(binding(
        "post@domstol.dk",
        &v(&["post@domstol.dk", "post@domstol.dk"]),
        &court
    )
    .is_err());
    assert!(binding("post@domstol.dk", &[], &court).is_err());
}

/// A work folder on a full disk.
struct Full;

impl crate::blob::Spill for Full {
    fn spill(
        &self,
        _: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> std::io::Result<crate::blob::Blob> {
        Err(std::io::Error::other("no space left on device"))
    }
    fn large(&self) -> bool {
        true
    }
}

#[test]
fn a_full_work_folder_defers_and_never_quarantines_or_passes_ciphertext_on() {
    let id = crate::pki::testkit::identity(2048, "Org Key").unwrap();
    let inner = b"Content-Type: text/plain\r\n\r\nfortroligt\r\n";
    let der =
        crate::smime::cms::encrypt(inner, std::slice::from_ref(&id.cert), Encryption::Aes256Cbc)
            .unwrap();
    let mut body = b"From: <a@example.org>\r\nSubject: s\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    body.extend_from_slice(&mime::base64_lines(&der));
    let keys = Keyring {
        identities: vec![id],
        anchors: Vec::new(),
        ..Keyring::default()
    };
    let settings = test_settings("[smime]\non_undecryptable = \"quarantine\"\n");
    let answers = HashMap::new();
    let actions = |spill: &dyn crate::blob::Spill| {
        let ctx = Context {
            settings: &settings,
            keys: &keys,
            now: 0,
            known: &[],
            signer_revocation: &answers,
            ldap_asked: false,
            spill,
            seen: None,
            quarantine_full: false,
        };
        let mut out = Actions::default();
        let mailbox = Mailbox {
            rcpt: "bob@example-law.dk".into(),
            deliver: Deliver::Plain,
            encryption: Encryption::default(),
        };
        mailboxes(
            &envelope(),
            vec![mailbox],
            &body,
            Arc::new(mime::shape(&body)),
            &ctx,
            &mut out,
        );
        out.into_vec()
    };
    // Positive control: with room to write, it is opened and delivered.
    let opened = actions(&crate::blob::InMemory);
    assert!(
        opened.iter().any(
            |a| matches!(a, Action::Deliver(c) if String::from_utf8_lossy(&c.body).contains("fortroligt"))
        ),
        "{opened:?}"
    );
    // A full disk: tried again later, never quarantined or delivered.
    let full = actions(&Full);
    assert!(
        full.iter()
            .any(|a| matches!(a, Action::Defer { reason, .. } if reason.contains("work file"))),
        "{full:?}"
    );
    assert!(!full
        .iter()
        .any(|a| matches!(a, Action::Deliver(_) | Action::Quarantine { .. })));
}

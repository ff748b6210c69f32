//! A large message (a ~16 MiB attachment, ~30 MB as the encrypted mail
//! arrives) through the running gateway on its streaming path (files in
//! the spool's work folder): decrypted for a plain mailbox, re-encrypted
//! for the shared mailbox, and signed and encrypted for a court, each copy
//! opened by `openssl cms` and compared byte for byte with what was sent.
//! The work folder is empty afterwards.

mod common;

use std::path::Path;
use std::time::Duration;

use common::client::Client;
use common::pki::{self, P7M};
use common::sink::{Received, Script, Sink};
use common::{wait_until, Gateway, Options};

/// Deterministic bytes that do not compress (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A multipart entity with a short text and a large PDF-like attachment,
/// CRLF line ends, only Content-* fields in its header.
fn large_entity(attachment: usize) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(noise(attachment));
    let mut e = b"Content-Type: multipart/mixed; boundary=\"bundle\"\r\n\r\n\
--bundle\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBilag til sag 2023-117.\r\n\
--bundle\r\nContent-Type: application/pdf; name=\"bundle.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    for line in b64.as_bytes().chunks(76) {
        e.extend_from_slice(line);
        e.extend_from_slice(b"\r\n");
    }
    e.extend_from_slice(b"--bundle--\r\n");
    e
}

fn gateway(sink: &Sink, recips: &Path) -> Gateway {
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "max_deliveries = 4\n\n{}{}\
         [trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n\n\
         [certificates]\ndirs = [\"{}\"]\n\n\
         [[mailbox]]\naddress = \"sikkermail@example-law.dk\"\ndeliver = \"reencrypt\"\n\n\
         [[mailbox]]\naddress = \"*@example-law.dk\"\ndeliver = \"plain\"\n\n\
         [[rule]]\nname = \"courts\"\nmatch = [\"*@domstol.dk\"]\ngeneration = \"oces3\"\n\
         encrypt = \"required\"\nsign = true\non_missing_certificate = \"bounce\"\n",
        pki::identity("org-oces2", &[]),
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        recips.display(),
    );
    opts.extra_server = "max_message_size = 104857600\n".into();
    opts.env = vec![("SMIMEGW__RELAY__TIMEOUT".into(), "120s".into())];
    Gateway::start(opts)
}

fn send(gw: &Gateway, from: &str, to: &[&str], message: &[u8]) {
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c.send(from, to, message).unwrap();
    assert_eq!(r.code, 250, "{r:?}");
}

fn received_for(sink: &Sink, rcpt: &str, id: &str) -> Received {
    let needle = format!("<{id}@test>");
    let found = |r: &Received| r.rcpts.iter().any(|x| x == rcpt) && r.text().contains(&needle);
    assert!(
        wait_until(Duration::from_secs(600), || sink
            .received()
            .iter()
            .any(found)),
        "nothing for {rcpt} ({id})"
    );
    sink.received().into_iter().find(found).unwrap()
}

fn body_of(message: &[u8]) -> &[u8] {
    let at = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section");
    &message[at + 4..]
}

fn openssl_file(args: &[&str], input: &Path) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .arg("-in")
        .arg(input)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_large_message_is_decrypted_reencrypted_signed_and_encrypted_byte_for_byte() {
    let sink = Sink::start(Script::default());
    let recips = tempfile::tempdir().unwrap();
    std::fs::copy(
        pki::cert("court-oces3"),
        recips.path().join("court-oces3.pem"),
    )
    .unwrap();
    let gw = gateway(&sink, recips.path());
    let scratch = tempfile::tempdir().unwrap();
    let entity = large_entity(16 * 1024 * 1024);

    // Inbound: encrypted to the organisation's OCES2 key, for a plain
    // mailbox and for the re-encrypting shared mailbox.
    let cms = pki::cms_encrypt(&entity, "org-oces2", &["-aes-256-cbc"]);
    let message = pki::enveloped_message("big-in", "reader@example-law.dk", &cms, P7M);
    assert!(message.len() > 25 * 1024 * 1024, "{}", message.len());
    send(
        &gw,
        "sender@example.org",
        &["reader@example-law.dk", "sikkermail@example-law.dk"],
        &message,
    );
    let plain = received_for(&sink, "reader@example-law.dk", "big-in");
    let text = String::from_utf8_lossy(&plain.data[..4096]).to_string();
    assert!(text.contains("X-SMIME-Gateway: decrypted"), "{text}");
    assert!(
        body_of(&plain.data) == body_of(&entity),
        "the decrypted body differs from what was encrypted"
    );
    let sealed = received_for(&sink, "sikkermail@example-law.dk", "big-in");
    let file = scratch.path().join("reencrypted.eml");
    std::fs::write(&file, &sealed.data).unwrap();
    let key = pki::key("org-oces3");
    let cert = pki::cert("org-oces3");
    let opened = openssl_file(
        &[
            "cms",
            "-decrypt",
            "-binary",
            "-inkey",
            key.to_str().unwrap(),
            "-recip",
            cert.to_str().unwrap(),
        ],
        &file,
    );
    assert!(opened == entity, "the re-encrypted content differs");

    // Outbound: the same entity from Alice to a court, signed and
    // encrypted to the court's OCES3 certificate.
    let mut out_message = b"From: <alice@example-law.dk>\r\nTo: <post@domstol.dk>\r\n\
Subject: bundle\r\nMessage-ID: <big-out@test>\r\nMIME-Version: 1.0\r\n"
        .to_vec();
    out_message.extend_from_slice(&entity);
    send(
        &gw,
        "alice@example-law.dk",
        &["post@domstol.dk"],
        &out_message,
    );
    let court = received_for(&sink, "post@domstol.dk", "big-out");
    let file = scratch.path().join("court.eml");
    std::fs::write(&file, &court.data).unwrap();
    let key = pki::key("court-oces3");
    let cert = pki::cert("court-oces3");
    let signed = openssl_file(
        &[
            "cms",
            "-decrypt",
            "-binary",
            "-inkey",
            key.to_str().unwrap(),
            "-recip",
            cert.to_str().unwrap(),
        ],
        &file,
    );
    let file = scratch.path().join("signed.eml");
    std::fs::write(&file, &signed).unwrap();
    let anchors = scratch.path().join("roots.pem");
    let roots: Vec<u8> = ["oces2-root", "oces3-root"]
        .iter()
        .flat_map(|n| std::fs::read(pki::demo().join(format!("trust/{n}.pem"))).unwrap())
        .collect();
    std::fs::write(&anchors, roots).unwrap();
    let content = openssl_file(
        &[
            "cms",
            "-verify",
            "-CAfile",
            anchors.to_str().unwrap(),
            "-purpose",
            "any",
        ],
        &file,
    );
    assert!(content == entity, "the signed content differs");

    // Both took the streaming path, and its work folder is left empty.
    let log = gw.log();
    assert_eq!(log.matches("event=\"streamed\"").count(), 2, "{log}");
    let work = gw.spool().join("work");
    assert!(work.is_dir(), "the work folder exists");
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_dir(&work)
            .unwrap()
            .next()
            .is_none()),
        "work files left behind"
    );
}

//! DKIM and the gateway, inbound: the `Authentication-Results` and
//! `DKIM-Signature` fields a verifying milter in front added (or the
//! sender's own) stay on the copies the gateway decrypts and re-encrypts,
//! so the mailbox can still see how the message was authenticated on its
//! way in. (Outbound DKIM signing runs after the gateway: deploy/postfix.)

mod common;

use std::time::Duration;

use common::pki::{self, P7M};
use common::sink::{Script, Sink};
use common::{submit, wait_until, Gateway, Options};

const AUTH: &str =
    "Authentication-Results: mx.example-law.dk; dkim=pass header.d=example.org; spf=pass";
const DKIM: &str =
    "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from:to:subject; bh=AAAA; b=BBBB";

#[test]
fn authentication_fields_stay_on_decrypted_and_reencrypted_copies() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}{}\n[[mailbox]]\naddress = \"sikkermail@example-law.dk\"\ndeliver = \"reencrypt\"\n",
        pki::identity("org-oces2", &[]),
        pki::identity("org-oces3", &[]),
    );
    let gw = Gateway::start(opts);
    let cms = pki::cms_encrypt(&pki::inner("sagsakter"), "org-oces2", &["-aes-256-cbc"]);
    for (id, rcpt) in [
        ("dkim-plain", "bob@example-law.dk"),
        ("dkim-reenc", "sikkermail@example-law.dk"),
    ] {
        let mut m = format!("{AUTH}\r\n{DKIM}\r\n").into_bytes();
        m.extend_from_slice(&pki::enveloped_message(id, rcpt, &cms, P7M));
        let r = submit(&gw, "sender@example.org", &[rcpt], &m);
        assert_eq!(r.code, 250, "{r:?}");
    }
    assert!(
        wait_until(Duration::from_secs(20), || sink.count() == 2),
        "{}",
        gw.log()
    );
    for r in sink.received() {
        let text = r.text();
        assert!(text.contains(AUTH), "Authentication-Results lost:\n{text}");
        assert!(text.contains(DKIM), "DKIM-Signature lost:\n{text}");
        let header = text.split("\r\n\r\n").next().unwrap();
        assert!(header.contains("X-SMIME-Gateway: decrypted"), "{header}");
    }
    // The decrypted copy is really decrypted, the other re-encrypted.
    let plain = sink
        .received()
        .into_iter()
        .find(|r| r.rcpts == vec!["bob@example-law.dk".to_string()])
        .unwrap();
    assert!(plain.text().contains("sagsakter"));
}

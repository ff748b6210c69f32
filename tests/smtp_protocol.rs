//! The inbound server against hostile and careless clients: SMTP
//! smuggling, STARTTLS command injection, open relay tricks and the
//! RFC 5321 limits, each answered with the documented reply.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::client::Client;
use common::sink::{Script, Sink};
use common::{wait_until, Gateway, Options};

const SMUGGLING: &[&[u8]] = &[
    b"\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n\0.\r\n",
    b"\r\n.\0\r\n",
    b"\r\n\n.\r\n",
    b"\r\n\r.\r\n",
    b"\r\n\r\r.\r\n",
];

/// Look-alikes sent as the very first bytes of DATA, with no cover text.
const SMUGGLING_AT_START: &[&[u8]] = &[b"\n.\r\n", b"\r.\r\n", b"\r\n\n.\r\n"];

#[test]
fn smuggling_sequences_are_rejected_and_never_yield_a_second_message() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(Options::new(sink.addr));
    let cases = SMUGGLING
        .iter()
        .map(|seq| {
            (
                &b"From: alice@example.org\r\nSubject: cover\r\n\r\ncover text"[..],
                *seq,
            )
        })
        .chain(SMUGGLING_AT_START.iter().map(|seq| (&b""[..], *seq)));
    for (cover, seq) in cases {
        let mut c = Client::connect(gw.addr).unwrap();
        c.ehlo().unwrap();
        assert_eq!(c.cmd("MAIL FROM:<alice@example.org>").unwrap().code, 250);
        assert_eq!(c.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 250);
        assert_eq!(c.cmd("DATA").unwrap().code, 354);
        let mut data = cover.to_vec();
        data.extend_from_slice(seq);
        data.extend_from_slice(
            b"MAIL FROM:<admin@example-law.dk>\r\nRCPT TO:<victim@example-law.dk>\r\nDATA\r\n\
              From: admin@example-law.dk\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n",
        );
        c.write(&data).unwrap();
        let r = c.read().unwrap();
        assert_eq!(r.code, 554, "sequence {seq:?}: {r:?}");
        assert!(r.text.contains("5.6.0"), "{r:?}");
        // Nothing else is pending: the next reply belongs to our NOOP.
        let r = c.cmd("NOOP").unwrap();
        assert_eq!(r.code, 250, "sequence {seq:?} left replies behind: {r:?}");
        // The session still works for an honest message.
        let ok = c
            .send(
                "alice@example.org",
                &["bob@example-law.dk"],
                &common::message("honest", "fine"),
            )
            .unwrap();
        assert_eq!(ok.code, 250, "{ok:?}");
        c.cmd("QUIT").unwrap();
    }
    let honest = SMUGGLING.len() + SMUGGLING_AT_START.len();
    assert!(wait_until(Duration::from_secs(10), || sink.count() == honest));
    std::thread::sleep(Duration::from_millis(500));
    let got = sink.received();
    assert_eq!(got.len(), honest);
    for r in got {
        assert!(!r.text().contains("smuggled"), "smuggled content delivered");
        assert_eq!(r.rcpts, vec!["bob@example-law.dk".to_string()]);
    }
    assert_eq!(common::count_files(&gw.spool().join("tmp"), ""), 0);
}

fn tls_files(dir: &std::path::Path) -> (String, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = cert.cert.pem();
    std::fs::write(dir.join("tls.crt"), &pem).unwrap();
    std::fs::write(dir.join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
    (pem, cert.cert.der().to_vec())
}

#[test]
fn starttls_injection_is_discarded() {
    use tokio_rustls::rustls;
    let sink = Sink::start(Script::default());
    let certdir = tempfile::tempdir().unwrap();
    let (_, der) = tls_files(certdir.path());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        certdir.path().join("tls.crt").display(),
        certdir.path().join("tls.key").display()
    );
    let gw = Gateway::start(opts);

    let mut c = Client::connect(gw.addr).unwrap();
    let ehlo = c.ehlo().unwrap();
    assert!(ehlo.text.contains("STARTTLS"), "{ehlo:?}");
    c.cmd("MAIL FROM:<alice@example.org>").unwrap();
    c.cmd("RSET").unwrap();
    // The injection: a command pipelined behind STARTTLS in one write.
    c.write(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        .unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.code, 220, "{r:?}");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp: TcpStream = c.stream().try_clone().unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);

    let read_reply = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            tls.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
            if buf.ends_with(b"\r\n") {
                let last = buf[..buf.len() - 2]
                    .rsplit(|&b| b == b'\n')
                    .next()
                    .unwrap()
                    .to_vec();
                if last.get(3) == Some(&b' ') {
                    return String::from_utf8_lossy(&buf).into_owned();
                }
            }
        }
    };
    // The session is reset: MAIL before EHLO is refused, and the injected
    // MAIL did not start a transaction.
    tls.write_all(b"RCPT TO:<bob@example-law.dk>\r\n").unwrap();
    let r = read_reply(&mut tls);
    assert!(r.starts_with("503"), "injected command was executed: {r}");
    tls.write_all(b"MAIL FROM:<alice@example.org>\r\n").unwrap();
    let r = read_reply(&mut tls);
    assert!(r.starts_with("503"), "session not reset after TLS: {r}");
    tls.write_all(b"EHLO client.test\r\n").unwrap();
    let r = read_reply(&mut tls);
    assert!(r.starts_with("250-gw.test"), "{r}");
    assert!(!r.contains("STARTTLS"), "STARTTLS offered twice: {r}");
    tls.write_all(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example-law.dk>\r\nDATA\r\n")
        .unwrap();
    assert!(read_reply(&mut tls).starts_with("250"));
    assert!(read_reply(&mut tls).starts_with("250"));
    assert!(read_reply(&mut tls).starts_with("354"));
    tls.write_all(&common::message("tls-1", "over TLS"))
        .unwrap();
    tls.write_all(b".\r\n").unwrap();
    assert!(read_reply(&mut tls).starts_with("250 2.0.0 Ok: queued"));
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 1));
    assert_eq!(sink.received()[0].from, "alice@example.org");
}

#[test]
fn open_relay_attempts_are_refused() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.trusted = false;
    let gw = Gateway::start(opts);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(c.cmd("MAIL FROM:<spammer@example.org>").unwrap().code, 250);
    for rcpt in [
        "<victim@ext.example>",
        "<u%ext.example@example-law.dk>",
        "<\"u@ext.example\"@example-law.dk>",
        "<@example-law.dk:u@ext.example>",
        "<ext.example!u@example-law.dk>",
        "<victim@example-law.dk.ext.example>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}")).unwrap();
        assert_eq!(r.code, 554, "{rcpt} accepted: {r:?}");
        assert!(r.text.contains("5.7.1"), "{r:?}");
    }
    // Look-alikes of `@` (full-width, small) after a foreign address: never
    // an address of the internal domain (UTS-46 alone maps them to `@`).
    for rcpt in [
        "<x@attacker.example\u{FF20}example-law.dk>",
        "<x@attacker.example\u{FE6B}example-law.dk>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}")).unwrap();
        assert!(r.code >= 500, "{rcpt} accepted: {r:?}");
    }
    let r = c.cmd("RCPT TO:<bob@Example-Law.DK.>").unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    // The bare postmaster is always accepted (RFC 5321 4.5.1); with a foreign
    // domain it is relaying like any other address.
    assert_eq!(c.cmd("RCPT TO:<Postmaster>").unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<postmaster@ext.example>").unwrap().code, 554);
    assert!(c.cmd("RCPT TO:postmaster@ext.example").unwrap().code >= 500);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.write(b"Subject: x\r\n\r\nx\r\n.\r\n").unwrap();
    assert_eq!(c.read().unwrap().code, 250);
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 1));
    let mut rcpts = sink.received()[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![
            "bob@example-law.dk".to_string(),
            "postmaster@example-law.dk".to_string()
        ],
        "addresses kept in normal form"
    );
    // Addresses that cannot be written back safely are refused.
    assert_eq!(
        c.cmd("MAIL FROM:<\"x> RET=FULL\"@z.example>").unwrap().code,
        501
    );
    assert!(gw.log().contains("relay attempt refused"));
}

#[test]
fn limits_get_their_replies() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "max_recipients = 3\nmax_message_size = 20000\n".into();
    let gw = Gateway::start(opts);
    let mut c = Client::connect(gw.addr).unwrap();
    let ehlo = c.ehlo().unwrap();
    for ext in [
        "PIPELINING",
        "SIZE 20000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(
            ehlo.text.contains(ext),
            "{ext} not advertised: {}",
            ehlo.text
        );
    }
    // Command line over 512 octets.
    let r = c.cmd(&format!("NOOP {}", "a".repeat(600))).unwrap();
    assert_eq!(r.code, 500, "{r:?}");
    assert!(r.text.contains("5.5.2"));
    assert_eq!(
        c.cmd("NOOP").unwrap().code,
        250,
        "session lost step after a long line"
    );

    // Too many recipients.
    assert_eq!(c.cmd("MAIL FROM:<alice@example.org>").unwrap().code, 250);
    for i in 0..3 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<u{i}@example-law.dk>"))
                .unwrap()
                .code,
            250
        );
    }
    let r = c.cmd("RCPT TO:<u4@example-law.dk>").unwrap();
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text.contains("4.5.3"));
    assert_eq!(c.cmd("RSET").unwrap().code, 250);

    // SIZE announced too big.
    let r = c.cmd("MAIL FROM:<alice@example.org> SIZE=30000").unwrap();
    assert_eq!(r.code, 552, "{r:?}");

    // Too big while streaming, without SIZE.
    let big = common::message("big", &"0123456789abcdef\r\n".repeat(2000));
    let r = c
        .send("alice@example.org", &["bob@example-law.dk"], &big)
        .unwrap();
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text.contains("5.3.4"));

    // A text line over 1000 octets.
    let long = common::message("long", &"y".repeat(1500));
    let r = c
        .send("alice@example.org", &["bob@example-law.dk"], &long)
        .unwrap();
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("longer than 1000"), "{r:?}");

    // Commands out of order, unknown commands, VRFY.
    assert_eq!(c.cmd("DATA").unwrap().code, 503);
    assert_eq!(c.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 503);
    assert_eq!(c.cmd("FROB").unwrap().code, 500);
    assert_eq!(c.cmd("VRFY bob").unwrap().code, 252);

    // And an ordinary message still goes through.
    let ok = c
        .send(
            "alice@example.org",
            &["bob@example-law.dk"],
            &common::message("ok", "small"),
        )
        .unwrap();
    assert_eq!(ok.code, 250, "{ok:?}");
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 1));
    assert_eq!(common::count_files(&gw.spool().join("tmp"), ""), 0);
}

#[test]
fn pipelined_transaction_gets_every_reply_in_order() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(Options::new(sink.addr));
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let mut batch = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example-law.dk>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n".to_vec();
    c.write(&batch).unwrap();
    for want in [250, 250, 250, 354] {
        assert_eq!(c.read().unwrap().code, want);
    }
    batch = common::message("pipe", "pipelined");
    batch.extend_from_slice(b".\r\nQUIT\r\n");
    c.write(&batch).unwrap();
    assert_eq!(c.read().unwrap().code, 250);
    assert_eq!(c.read().unwrap().code, 221);
    assert!(wait_until(Duration::from_secs(10), || sink.count() >= 1));
}

/// A session within the connection limits (the harness's own readiness
/// probe may hold a slot for a moment).
fn connect_within_limit(gw: &Gateway) -> Client {
    let mut got = None;
    wait_until(Duration::from_secs(5), || {
        got = Client::connect(gw.addr).ok();
        got.is_some()
    });
    got.expect("a connection within the limit")
}

/// What a connection over the limit is told before it is closed.
fn refused_greeting(gw: &Gateway) -> String {
    let mut third = TcpStream::connect(gw.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = String::new();
    let _ = third.read_to_string(&mut buf);
    buf
}

#[test]
fn connection_limit_per_ip_refuses_with_421() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "max_connections_per_ip = 2\n".into();
    let gw = Gateway::start(opts);
    let _a = connect_within_limit(&gw);
    let _b = connect_within_limit(&gw);
    let buf = refused_greeting(&gw);
    assert!(buf.starts_with("421 4.7.0"), "{buf:?}");
    drop(_a);
    assert!(wait_until(Duration::from_secs(5), || Client::connect(
        gw.addr
    )
    .is_ok()));
}

#[test]
fn idle_client_is_dropped_after_the_command_timeout() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "command_timeout = \"1s\"\n".into();
    let gw = Gateway::start(opts);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let started = std::time::Instant::now();
    let r = c.read().unwrap();
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.contains("4.4.2"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(c.read().is_err(), "connection still open");
}

#[test]
fn unknown_internal_recipients_are_refused_at_rcpt_when_verification_is_on() {
    let mut script = Script::default();
    script.rcpt_replies.insert(
        "nobody@example-law.dk".into(),
        "550 5.1.1 <nobody@example-law.dk>: no such user".into(),
    );
    script.rcpt_replies.insert(
        "busy@example-law.dk".into(),
        "450 4.2.1 mailbox busy".into(),
    );
    let sink = Sink::start(script);
    let mut opts = Options::new(sink.addr);
    opts.trusted = false;
    opts.extra_server = "verify_recipients = true\n".into();
    let gw = Gateway::start(opts);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").unwrap().code, 250);
    let r = c.cmd("RCPT TO:<nobody@example-law.dk>").unwrap();
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text.contains("5.1.1"));
    assert_eq!(c.cmd("RCPT TO:<busy@example-law.dk>").unwrap().code, 450);
    assert_eq!(c.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 250);
    // Answers are remembered: the second ask does not reach the server.
    assert_eq!(c.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.write(b"Subject: verified\r\n\r\nx\r\n.\r\n").unwrap();
    assert_eq!(c.read().unwrap().code, 250);
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 1));
    // Nothing was sent by the probes themselves.
    assert_eq!(sink.data_attempts(), 1);
}

#[test]
fn total_connection_limit_refuses_with_421() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "max_connections = 2\n".into();
    let gw = Gateway::start(opts);
    let _a = connect_within_limit(&gw);
    let _b = connect_within_limit(&gw);
    let buf = refused_greeting(&gw);
    assert!(buf.starts_with("421 4.7.0 Too many connections"), "{buf:?}");
}

#[test]
fn the_exact_starttls_rset_injection_is_not_executed() {
    use tokio_rustls::rustls;
    let sink = Sink::start(Script::default());
    let certdir = tempfile::tempdir().unwrap();
    let (_, der) = tls_files(certdir.path());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        certdir.path().join("tls.crt").display(),
        certdir.path().join("tls.key").display()
    );
    let gw = Gateway::start(opts);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    c.write(b"STARTTLS\r\nRSET\r\n").unwrap();
    assert_eq!(c.read().unwrap().code, 220);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, c.stream().try_clone().unwrap());
    // Had RSET run after the handshake, its "250 2.0.0 Ok" would come
    // before the EHLO reply.
    tls.write_all(b"EHLO client.test\r\n").unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while !first.ends_with(b"\r\n") {
        tls.read_exact(&mut byte).unwrap();
        first.push(byte[0]);
    }
    assert!(
        first.starts_with(b"250-gw.test"),
        "{}",
        String::from_utf8_lossy(&first)
    );
}

#[test]
fn a_client_trickling_data_is_cut_off_and_nothing_of_it_is_kept() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "min_data_rate = 1000\ndata_rate_grace = \"1s\"\n".into();
    let gw = Gateway::start(opts);

    // Positive control: a client at ordinary speed gets its mail through.
    let mut fast = Client::connect(gw.addr).unwrap();
    fast.ehlo().unwrap();
    let ok = fast
        .send(
            "alice@example.org",
            &["bob@example-law.dk"],
            &common::message("fast", &"0123456789 abcdefghij\r\n".repeat(1_000)),
        )
        .unwrap();
    assert_eq!(ok.code, 250, "{ok:?}");

    // The attacker: one byte every 100 ms, far below 1000 octets/s.
    let mut slow = Client::connect(gw.addr).unwrap();
    slow.ehlo().unwrap();
    assert_eq!(slow.cmd("MAIL FROM:<alice@example.org>").unwrap().code, 250);
    assert_eq!(slow.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 250);
    assert_eq!(slow.cmd("DATA").unwrap().code, 354);
    let body = b"Subject: slow\r\n\r\nslowly slowly slowly slowly slowly slowly slowly\r\n";
    let mut cut = None;
    for b in body.iter().cycle().take(600) {
        if slow.write(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(r) = slow.read_nonblocking() {
            cut = Some(r);
            break;
        }
    }
    let r = cut.expect("the gateway closed the slow session");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.contains("too slowly"), "{r:?}");
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.count(),
        1,
        "only the fast client's message is delivered"
    );
    assert!(!sink.received()[0].text().contains("slowly"));
    assert!(wait_until(Duration::from_secs(10), || common::count_files(
        &gw.spool().join("tmp"),
        ""
    ) == 0));
}

#[test]
fn a_message_whose_client_stalls_twice_in_data_arrives_whole() {
    // A stall of over a second makes the session write what it holds of
    // the message to the spool and give its buffers back: once before the
    // message has a spool file (under 64 KiB), once in the middle of a
    // 256 KiB piece. Nothing of it may be lost or doubled.
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(Options::new(sink.addr));
    let lines: String = (0..12_000)
        .map(|i| format!("line {i:05} of a message that stalls now and then\r\n"))
        .collect();
    let body = String::from_utf8(common::message("stalls", &lines)).unwrap();
    let bytes = body.as_bytes();
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(c.cmd("MAIL FROM:<alice@example.org>").unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    let (first, rest) = bytes.split_at(20_000);
    let (second, third) = rest.split_at(300_000);
    c.write(first).unwrap();
    std::thread::sleep(Duration::from_millis(1_600));
    c.write(second).unwrap();
    std::thread::sleep(Duration::from_millis(1_600));
    c.write(third).unwrap();
    c.write(b"\r\n.\r\n").unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 1));
    let got = sink.received()[0].text();
    let start = got.find("From: Alice").expect("the message's header");
    assert_eq!(
        got[start..].trim_end(),
        body.trim_end(),
        "the message arrived changed"
    );
}

#[test]
fn stalled_sessions_holding_spool_files_do_not_run_the_daemon_out_of_descriptors() {
    // Started with a soft limit of 64 open files: 100 clients that each
    // send 20 KiB of DATA and stall hold a socket and a spool file each.
    // The daemon raised its limit to the hard one at start, so it still
    // accepts and delivers a normal message meanwhile.
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "max_connections = 500\nmax_connections_per_ip = 500\n".into();
    opts.open_files = Some(64);
    let gw = Gateway::start(opts);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid().unwrap())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        nums[0], nums[1],
        "soft limit not raised to the hard one: {line}"
    );
    assert!(gw.log().contains("limit on open files"), "{}", gw.log());

    let chunk = "x".repeat(78) + "\r\n";
    let piece = format!("Subject: stall\r\n\r\n{}", chunk.repeat(20 * 1024 / 80 + 1));
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut c = Client::connect(gw.addr).unwrap();
        c.ehlo().unwrap();
        assert_eq!(c.cmd("MAIL FROM:<alice@example.org>").unwrap().code, 250);
        assert_eq!(c.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 250);
        assert_eq!(c.cmd("DATA").unwrap().code, 354);
        c.write(piece.as_bytes()).unwrap();
        stalled.push(c);
    }
    // Every one of them has stalled and written its piece to a file.
    std::thread::sleep(Duration::from_millis(2_000));
    // Without descriptors the greeting would wait until stalled sessions
    // time out (a minute); served at once, it takes milliseconds.
    let asked = std::time::Instant::now();
    let r = common::submit(
        &gw,
        "alice@example.org",
        &["bob@example-law.dk"],
        &common::message("meanwhile", "delivered while 100 clients stall"),
    );
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "served only after {:?}: out of descriptors?",
        asked.elapsed()
    );
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 1));
    drop(stalled);
}

#[test]
fn a_session_ends_at_its_time_limit_however_busy() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "session_timeout = \"2s\"\n".into();
    let gw = Gateway::start(opts);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let mut answered = 0;
    let last = loop {
        let r = match c.cmd("NOOP") {
            Ok(r) => r,
            Err(e) => panic!("connection closed without a reply: {e}"),
        };
        if r.code != 250 {
            break r;
        }
        answered += 1;
        assert!(answered < 200, "the session outlived its limit");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The client was served until the limit: NOOPs were answered.
    assert!(answered > 0);
    assert_eq!(last.code, 421, "{last:?}");
    assert!(last.text.contains("Session time limit"), "{last:?}");
    assert!(c.read().is_err(), "connection still open");
}

#[test]
fn a_client_that_reads_no_replies_is_cut_off_and_frees_its_slot() {
    // Review 15: a client pipelined megabytes of NOOP and read nothing.
    // Once the socket buffers were full, the gateway waited to write its
    // replies with no limit, past command and session timeouts, and the
    // connection held its slot for good (with 2 per address, the next
    // client from there got 421).
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "session_timeout = \"3s\"\ncommand_timeout = \"2s\"\n\
                         max_connections_per_ip = 2\n"
        .into();
    let gw = Gateway::start(opts);
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            std::thread::spawn(move || {
                // Writes until the gateway hangs up (reset, broken pipe) or
                // the write blocks for 30 s; never reads.
                let started = std::time::Instant::now();
                let mut noops = b"EHLO flood\r\n".to_vec();
                noops.extend(b"NOOP\r\n".repeat(50_000));
                let mut sent = 0usize;
                let end = loop {
                    if let Err(e) = s.write_all(&noops) {
                        break e.kind();
                    }
                    sent += 1;
                    if sent > 100 {
                        break std::io::ErrorKind::Other;
                    }
                };
                (end, started.elapsed())
            })
        })
        .collect();
    for f in flooders {
        let (end, took) = f.join().unwrap();
        assert!(
            matches!(
                end,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "the gateway still held a client that reads nothing after {took:?} ({end:?})"
        );
        assert!(took < Duration::from_secs(25), "{took:?}");
    }
    // Their slots are free again.
    let buf = {
        let mut c = TcpStream::connect(gw.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        let n = c.read(&mut b).unwrap_or(0);
        String::from_utf8_lossy(&b[..n]).to_string()
    };
    assert!(buf.starts_with("220"), "{buf:?}");
}

#[test]
fn recipient_probes_are_rate_limited() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.trusted = false;
    opts.extra_server =
        "verify_recipients = true\nverify_rate = 20\nverify_rate_per_client = 1\n".into();
    let gw = Gateway::start(opts);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").unwrap().code, 250);
    let started = std::time::Instant::now();
    let mut codes = Vec::new();
    // An attacker inventing addresses, each one a new question.
    for n in 0..30 {
        codes.push(
            c.cmd(&format!("RCPT TO:<made-up-{n}@example-law.dk>"))
                .unwrap()
                .code,
        );
    }
    let seconds = started.elapsed().as_secs();
    // Another client (127.0.0.2) is not starved by the first one: its own
    // questions still reach the mailbox server.
    let mut other = Client::connect_from(gw.addr, "127.0.0.2".parse().unwrap()).unwrap();
    other.ehlo().unwrap();
    assert_eq!(
        other.cmd("MAIL FROM:<friend@example.org>").unwrap().code,
        250
    );
    assert_eq!(
        other.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code,
        250,
        "the other client was refused because of the first"
    );
    // Positive control: the first question was asked and answered.
    assert_eq!(codes[0], 250, "{codes:?}");
    assert!(sink.rcpt_attempts() >= 1);
    // One question per second for the first client (plus the burst of
    // one), and one for the other client, reached the server.
    assert!(
        sink.rcpt_attempts() as u64 <= seconds + 3,
        "{} probes in {seconds}s",
        sink.rcpt_attempts()
    );
    assert!(codes.contains(&450), "{codes:?}");
    assert!(gw.log().contains("verify-rate"));
}

#[test]
fn a_command_line_trickled_byte_by_byte_times_out() {
    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra_server = "command_timeout = \"2s\"\n".into();
    let gw = Gateway::start(opts);
    let mut c = Client::connect(gw.addr).unwrap();
    // Positive control: a whole line in time is answered.
    assert_eq!(c.cmd("NOOP").unwrap().code, 250);
    // One byte every 300 ms and never a line end: each read arrives well
    // within the timeout, the line as a whole does not.
    let mut reply = None;
    for _ in 0..100 {
        if c.write(b"N").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(r) = c.read_nonblocking() {
            reply = Some(r);
            break;
        }
    }
    let r = reply.expect("the trickling client was cut off");
    assert_eq!(r.code, 421, "{r:?}");
}

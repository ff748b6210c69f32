//! Relay core, end to end: mail sent with lettre and swaks arrives
//! byte-identical at the next hop; temporary failures are retried; permanent
//! failures bounce with an RFC 3464 report that itself arrives.

mod common;

use std::process::Command;
use std::time::Duration;

use common::client::Client;
use common::sink::{Script, Sink};
use common::{wait_until, Gateway, Options};
use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};

fn tricky_body() -> Vec<u8> {
    let mut m = b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example-law.dk>\r\n\
Subject: byte for byte\r\nMessage-ID: <bytes-1@test>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    m.extend_from_slice(".leading dot\r\n..two dots\r\n.\r\nnot the end above\r\n".as_bytes());
    m.extend_from_slice("Blåbærgrød og Ærø, 8-bit\r\n".as_bytes());
    m.extend_from_slice(&[b'x'; 990]);
    m.extend_from_slice(b"\r\n\r\n\r\ntrailing blank lines");
    m
}

/// lettre and swaks end the data with CRLF "." CRLF whatever the message
/// ends with, so a message is given to them without its last CRLF; this is
/// what they then put on the wire, and what must arrive.
fn on_the_wire(body: &[u8]) -> Vec<u8> {
    let mut m = body.to_vec();
    m.extend_from_slice(b"\r\n");
    m
}

#[test]
fn lettre_message_arrives_byte_identical() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(Options::new(sink.addr));
    let body = tricky_body();
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(gw.addr.port())
        .build();
    let envelope = Envelope::new(
        Some("alice@example.org".parse().unwrap()),
        vec![
            "bob@example-law.dk".parse().unwrap(),
            "carol@example.org".parse().unwrap(),
        ],
    )
    .unwrap();
    transport
        .send_raw(&envelope, &body)
        .expect("gateway accepts");
    assert!(
        wait_until(Duration::from_secs(15), || sink.count() >= 1),
        "not delivered"
    );
    let got = sink.received();
    let all_rcpts: Vec<String> = got.iter().flat_map(|r| r.rcpts.clone()).collect();
    assert!(all_rcpts.contains(&"bob@example-law.dk".to_string()));
    assert!(all_rcpts.contains(&"carol@example.org".to_string()));
    for r in &got {
        assert_eq!(r.from, "alice@example.org");
        assert_eq!(r.data, on_the_wire(&body), "bytes changed on the way");
    }
    assert!(wait_until(Duration::from_secs(5), || gw.queued() == 0));
    // The log line follows the removal from the queue.
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .contains("event=\"delivered\"")));
}

#[test]
fn swaks_message_arrives_byte_identical() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(Options::new(sink.addr));
    let body = tricky_body();
    let file = gw.dir.path().join("message.eml");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("swaks")
        .args(["--server", &gw.addr.to_string()])
        .args(["--from", "alice@example.org", "--to", "bob@example-law.dk"])
        .args(["--ehlo", "swaks.test", "--timeout", "20"])
        .arg("--data")
        .arg(&file)
        .output()
        .expect("swaks is installed (scripts/test installs it)");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    assert!(wait_until(Duration::from_secs(15), || sink.count() == 1));
    assert_eq!(sink.received()[0].data, on_the_wire(&body));
}

/// The next hop is told what the message needs: BODY=8BITMIME for 8-bit
/// content, SMTPUTF8 for an internationalised envelope; an ASCII message
/// with an ASCII envelope gets neither (the control).
#[test]
fn eight_bit_and_smtputf8_reach_the_next_hop() {
    let sink = Sink::start(Script::default());
    let gw = Gateway::start(Options::new(sink.addr));
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c
        .send("alice@example.org", &["bob@example-law.dk"], &tricky_body())
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(wait_until(Duration::from_secs(15), || sink.count() == 1));
    assert_eq!(sink.received()[0].mail_params.trim(), "BODY=8BITMIME");

    let plain = common::message("ascii-1", "plain ASCII");
    let r = c
        .send("alice@example.org", &["bob@example-law.dk"], &plain)
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(wait_until(Duration::from_secs(15), || sink.count() == 2));
    assert_eq!(sink.received()[1].mail_params.trim(), "", "control");

    assert_eq!(
        c.cmd("MAIL FROM:<ærø@example.org> SMTPUTF8").unwrap().code,
        250
    );
    assert_eq!(c.cmd("RCPT TO:<bob@example-law.dk>").unwrap().code, 250);
    assert_eq!(c.cmd("DATA").unwrap().code, 354);
    c.write(b"Subject: utf8\r\n\r\nascii body\r\n.\r\n")
        .unwrap();
    assert_eq!(c.read().unwrap().code, 250);
    assert!(wait_until(Duration::from_secs(15), || sink.count() == 3));
    let third = &sink.received()[2];
    assert_eq!(third.from, "ærø@example.org");
    assert!(third.mail_params.contains("SMTPUTF8"), "{third:?}");
}

#[test]
fn temporary_failure_is_retried_until_delivered() {
    let mut script = Script::default();
    script
        .data_replies
        .push_back("451 4.3.0 try again later".into());
    script.data_replies.push_back("421 4.3.2 busy".into());
    let sink = Sink::start(script);
    let gw = Gateway::start(Options::new(sink.addr));
    let mut c = common::client::Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let body = common::message("retry-1", "deferred twice");
    let r = c
        .send("alice@example.org", &["bob@example-law.dk"], &body)
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(20), || sink.count() == 1),
        "not delivered after retries"
    );
    assert_eq!(sink.data_attempts(), 3);
    assert_eq!(sink.received()[0].data, body);
    let log = gw.log();
    assert_eq!(log.matches("event=\"deferred\"").count(), 2, "{log}");
    assert!(wait_until(Duration::from_secs(5), || gw.queued() == 0));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.count(), 1, "delivered twice");
}

/// A next hop that has no mailbox for nobody@example-law.dk.
fn without_nobody(script: Script) -> Script {
    let mut script = script;
    script.rcpt_replies.insert(
        "nobody@example-law.dk".into(),
        "550 5.1.1 <nobody@example-law.dk>: no such user".into(),
    );
    script
}

#[test]
fn permanent_failure_bounces_and_the_bounce_arrives() {
    let sink = Sink::start(without_nobody(Script::default()));
    let gw = Gateway::start(Options::new(sink.addr));
    let mut c = common::client::Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let body = common::message("bounce-1", "one good, one bad recipient");
    let r = c
        .send(
            "alice@example.org",
            &["bob@example-law.dk", "nobody@example-law.dk"],
            &body,
        )
        .unwrap();
    assert_eq!(r.code, 250);
    assert!(
        wait_until(Duration::from_secs(15), || sink.count() == 2),
        "expected the message and its bounce"
    );
    let got = sink.received();
    let original = got
        .iter()
        .find(|r| r.from == "alice@example.org")
        .expect("original");
    assert_eq!(original.rcpts, vec!["bob@example-law.dk".to_string()]);
    let dsn = got
        .iter()
        .find(|r| r.from.is_empty())
        .expect("bounce from <>");
    assert_eq!(dsn.rcpts, vec!["alice@example.org".to_string()]);
    let text = dsn.text();
    assert!(
        text.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@example-law.dk"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{text}");
    assert!(
        text.contains("Message-ID: <bounce-1@test>"),
        "original headers missing: {text}"
    );
    assert!(!text.contains("Final-Recipient: rfc822; bob@example-law.dk"));
    assert!(wait_until(Duration::from_secs(5), || gw.queued() == 0));
}

#[test]
fn rejected_data_bounces_and_null_sender_is_never_bounced() {
    let mut script = Script::default();
    script
        .data_replies
        .push_back("554 5.7.1 content refused".into());
    script
        .data_replies
        .push_back("554 5.7.1 content refused".into());
    let sink = Sink::start(script);
    let gw = Gateway::start(Options::new(sink.addr));
    let mut c = common::client::Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    // A bounce that fails is not bounced again.
    let r = c
        .send("", &["bob@example-law.dk"], &common::message("null-1", "x"))
        .unwrap();
    assert_eq!(r.code, 250);
    assert!(wait_until(Duration::from_secs(10), || gw
        .log()
        .contains("bounce-discarded")));
    // An ordinary message refused at "." bounces to its sender.
    let r = c
        .send(
            "alice@example.org",
            &["bob@example-law.dk"],
            &common::message("rej-1", "x"),
        )
        .unwrap();
    assert_eq!(r.code, 250);
    assert!(wait_until(Duration::from_secs(15), || sink.count() == 1));
    let dsn = &sink.received()[0];
    assert!(dsn.from.is_empty());
    assert!(dsn
        .text()
        .contains("Diagnostic-Code: smtp; 554 5.7.1 content refused"));
    assert!(wait_until(Duration::from_secs(5), || gw.queued() == 0));
}

#[test]
fn unreachable_next_hop_defers_and_keeps_the_message() {
    let down = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let gw = Gateway::start(Options::new(down));
    let r = common::submit(
        &gw,
        "alice@example.org",
        &["bob@example-law.dk"],
        &common::message("down-1", "x"),
    );
    assert_eq!(r.code, 250);
    assert!(wait_until(Duration::from_secs(10), || gw
        .log()
        .contains("event=\"deferred\"")));
    assert_eq!(gw.queued(), 1);
}

#[test]
fn message_past_its_lifetime_bounces_with_4_4_7() {
    let sink = Sink::start(Script::default());
    let down = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut opts = Options::new(sink.addr);
    opts.internal_hop = down;
    opts.extra = "max_lifetime = \"3s\"\n".into();
    let gw = Gateway::start(opts);
    let r = common::submit(
        &gw,
        "alice@example.org",
        &["bob@example-law.dk"],
        &common::message("old-1", "x"),
    );
    assert_eq!(r.code, 250);
    assert!(
        wait_until(Duration::from_secs(20), || sink.count() == 1),
        "no bounce after the lifetime"
    );
    let dsn = &sink.received()[0];
    assert!(dsn.from.is_empty());
    let text = dsn.text();
    assert!(text.contains("Status: 4.4.7"), "{text}");
    assert!(text.contains("maximum queue lifetime"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; bob@example-law.dk"),
        "{text}"
    );
    assert!(wait_until(Duration::from_secs(5), || gw.queued() == 0));
}

/// A next hop that accepts connections and never answers: a delivery to
/// it stays in progress. Returns its address and the connections taken.
fn silent_hop() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&taken);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    (addr, taken)
}

fn two_large_messages(gw: &Gateway) {
    let body = "0123456789 abcdefghijklmnopqrstuvwxyz 0123456789\r\n".repeat(14_000);
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    for n in 0..2 {
        let r = c
            .send(
                "alice@example.org",
                &["bob@example-law.dk"],
                &common::message(&format!("large{n}"), &body),
            )
            .unwrap();
        assert_eq!(r.code, 250, "{r:?}");
    }
}

#[test]
fn the_memory_budget_makes_the_second_large_message_wait() {
    // 2 x 700 KiB against a 1 MiB budget: one delivery at a time.
    let (hop, taken) = silent_hop();
    let mut opts = Options::new(hop);
    opts.extra = "memory_budget = 1048576\n".into();
    // The silent hop must hold the first delivery for the whole test.
    opts.env = vec![("SMIMEGW__RELAY__TIMEOUT".into(), "300s".into())];
    let gw = Gateway::start(opts);
    two_large_messages(&gw);
    assert!(
        wait_until(Duration::from_secs(20), || gw.log().contains("budget-wait")),
        "{}",
        gw.log()
    );
    assert!(wait_until(Duration::from_secs(10), || taken
        .lock()
        .unwrap()
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(taken.lock().unwrap().len(), 1, "the second did not wait");

    // Positive control: with the default budget both are delivered at once.
    let (hop, taken) = silent_hop();
    let gw = Gateway::start(Options::new(hop));
    two_large_messages(&gw);
    assert!(wait_until(Duration::from_secs(20), || taken
        .lock()
        .unwrap()
        .len()
        == 2));
    assert!(!gw.log().contains("budget-wait"));
}

/// One message to two good recipients and a refused one, through a hop
/// with or without PIPELINING: what the hop saw.
fn send_to_three(no_pipelining: bool) -> (Sink, Gateway) {
    let sink = Sink::start(without_nobody(Script {
        no_pipelining,
        ..Script::default()
    }));
    let gw = Gateway::start(Options::new(sink.addr));
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let body = common::message("group-1", "three recipients, one refused");
    let r = c
        .send(
            "alice@example.org",
            &[
                "bob@example-law.dk",
                "nobody@example-law.dk",
                "carol@example-law.dk",
            ],
            &body,
        )
        .unwrap();
    assert_eq!(r.code, 250);
    assert!(
        wait_until(Duration::from_secs(15), || sink.count() == 2),
        "expected the message and the bounce for the refused recipient"
    );
    (sink, gw)
}

#[test]
fn a_hop_offering_pipelining_gets_one_group_and_every_recipient_its_own_outcome() {
    for no_pipelining in [false, true] {
        let (sink, gw) = send_to_three(no_pipelining);
        let got = sink.received();
        let original = got
            .iter()
            .find(|r| r.from == "alice@example.org")
            .expect("original");
        assert_eq!(
            original.rcpts,
            vec!["bob@example-law.dk", "carol@example-law.dk"],
            "no_pipelining = {no_pipelining}"
        );
        // The observation can go both ways: a group where the hop offers
        // PIPELINING, one command per reply where it does not.
        assert_eq!(original.pipelined, !no_pipelining);
        let dsn = got.iter().find(|r| r.from.is_empty()).expect("bounce");
        assert!(dsn
            .text()
            .contains("Final-Recipient: rfc822; nobody@example-law.dk"));
        assert!(!dsn.text().contains("Final-Recipient: rfc822; bob@"));
        assert!(wait_until(Duration::from_secs(5), || gw.queued() == 0));
    }
}

#[test]
fn a_hop_that_says_354_after_refusing_every_recipient_gets_no_message() {
    // The sink says 354 to any DATA, as a careless server would; with the
    // DATA of the group following refused RCPTs, the gateway must end
    // the connection without sending the message or a final ".".
    let sink = Sink::start(without_nobody(Script::default()));
    let gw = Gateway::start(Options::new(sink.addr));
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let body = common::message("refused-all", "nobody gets this");
    let r = c
        .send("alice@example.org", &["nobody@example-law.dk"], &body)
        .unwrap();
    assert_eq!(r.code, 250);
    // The bounce reaches alice (through the same hop, on a new
    // connection); the refused message itself never arrives.
    assert!(
        wait_until(Duration::from_secs(15), || sink
            .received()
            .iter()
            .any(|r| r.from.is_empty())),
        "expected the bounce"
    );
    let body2 = common::message("after-refused", "this one arrives");
    let r = c
        .send("alice@example.org", &["bob@example-law.dk"], &body2)
        .unwrap();
    assert_eq!(r.code, 250);
    assert!(wait_until(Duration::from_secs(15), || sink
        .received()
        .iter()
        .any(|r| r.text().contains("after-refused"))));
    assert!(wait_until(Duration::from_secs(5), || gw.queued() == 0));
    let got = sink.received();
    assert!(
        !got.iter()
            .any(|r| r.from == "alice@example.org" && r.text().contains("refused-all")),
        "the message for a refused recipient was delivered"
    );
    assert_eq!(
        got.iter().filter(|r| r.from.is_empty()).count(),
        1,
        "one bounce"
    );
}

/// Whether any file under `dir` holds `needle`.
fn any_file_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let p = e.path();
        if p.is_dir() {
            any_file_holds(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| memchr::memmem::find(&b, needle).is_some())
        }
    })
}

#[test]
fn a_delivered_message_leaves_nothing_of_itself_in_the_spool() {
    // Someone who reads the spool folder (a backup, an operator) after
    // traffic stopped finds no delivered message in it, though its file
    // was kept for the next message to be written over.
    let mut script = Script::default();
    script
        .data_replies
        .push_back("451 4.3.0 try again later".into());
    let sink = Sink::start(script);
    let mut gw = Gateway::start(Options::new(sink.addr));
    let secret = "the merger closes on friday at nine";
    let send = |gw: &Gateway, id: &str| {
        let body = common::message(id, secret);
        let r = common::submit(gw, "alice@example.org", &["bob@example-law.dk"], &body);
        assert_eq!(r.code, 250, "{r:?}");
    };
    send(&gw, "kept-1");
    // Positive control: while the message waits for its retry, the scan
    // finds it in the spool.
    assert!(wait_until(Duration::from_secs(10), || sink.data_attempts() == 1));
    assert!(any_file_holds(&gw.spool(), secret.as_bytes()));
    assert!(wait_until(Duration::from_secs(20), || sink.count() == 1));
    assert!(
        wait_until(Duration::from_secs(10), || !any_file_holds(
            &gw.spool(),
            secret.as_bytes()
        )),
        "a delivered message's bytes are still in the spool"
    );
    // And at shutdown, however soon after the delivery.
    send(&gw, "kept-2");
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 2
        && gw.queued() == 0));
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    assert!(
        !any_file_holds(&gw.spool(), secret.as_bytes()),
        "a delivered message's bytes are in the spool after shutdown"
    );
}

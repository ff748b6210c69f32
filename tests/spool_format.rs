//! Spool files across upgrades and against alteration, with the real
//! binary: a spool written in format 1 (today's files before format 2) is
//! delivered after the upgrade; files altered so that their checksum is
//! wrong, or correct but naming a time after the year 9999, are moved to
//! `spool/corrupt/` with a log line while `queue list` keeps working and
//! the rest of the mail is delivered.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::sink::{Script, Sink};
use common::{wait_until, Gateway, Options};
use smime_gateway::spool::format;
use smime_gateway::spool::Envelope;

const FRESH: &str = "066170214BFB30";
const HELD: &str = "066170214BFDEC";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn body_of(file: &[u8]) -> Vec<u8> {
    // Format 1: header line, envelope line, body, 39-byte trailer.
    let first = file.iter().position(|&b| b == b'\n').unwrap();
    let second = first + 1 + file[first + 1..].iter().position(|&b| b == b'\n').unwrap();
    file[second + 1..file.len() - 39].to_vec()
}

#[test]
fn a_spool_written_in_format_1_is_delivered_after_the_upgrade() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
    let spool = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("queue"), &spool.path().join("queue"));
    copy_dir(
        &fixture.join("quarantine"),
        &spool.path().join("quarantine"),
    );

    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.spool_dir = Some(spool.path().to_path_buf());
    // The fixture's messages arrived in 2026 and must not expire here.
    opts.extra = "max_lifetime = \"36500d\"".into();
    let gw = Gateway::start(opts);

    assert!(
        wait_until(Duration::from_secs(20), || sink.count() == 2),
        "format 1 messages not delivered; sink has {}",
        sink.count()
    );
    let got = sink.received();
    let fresh = got
        .iter()
        .find(|r| r.text().contains("Message-ID: <v1-fresh@test>"))
        .expect("the never-tried message");
    assert_eq!(fresh.from, "carol@example.org");
    assert_eq!(fresh.rcpts, vec!["bob@example-law.dk".to_string()]);
    let original = std::fs::read(fixture.join(format!("queue/{FRESH}.msg"))).unwrap();
    assert_eq!(
        fresh.data,
        body_of(&original),
        "8-bit body changed on the way"
    );
    let partial = got
        .iter()
        .find(|r| r.text().contains("Message-ID: <v1-partial@test>"))
        .expect("the half-delivered message");
    assert_eq!(
        partial.rcpts,
        vec!["later@example-law.dk".to_string()],
        "the recipient the format 1 state marks delivered was sent again"
    );

    assert!(wait_until(Duration::from_secs(10), || common::count_files(
        &spool.path().join("queue"),
        "msg"
    ) == 0));
    assert_eq!(common::count_files(&spool.path().join("corrupt"), "msg"), 0);
    assert!(!gw.log().contains("moved aside"), "{}", gw.log());

    // The quarantine written in format 1 is listed with its reason.
    let out = gw.cli(&["queue", "quarantined"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(HELD), "{text}");
    assert!(
        text.contains("cannot decrypt: no key for the RecipientInfo"),
        "{text}"
    );
    assert!(text.contains("Thu, 01 Jan 2026 00:03:20 +0000"), "{text}");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn envelope(rcpt: &str) -> Envelope {
    Envelope {
        mail_from: "alice@example.org".into(),
        rcpts: vec![rcpt.into()],
        received: now(),
        client: "192.0.2.1".into(),
        helo: "client.test".into(),
        eight_bit: false,
        smtputf8: false,
        released: false,
        submission: false,
    }
}

/// `content` with a correct format 2 trailer: an altered file whose
/// checksum was made to fit.
fn seal(content: Vec<u8>) -> Vec<u8> {
    let mut out = content.clone();
    out.extend_from_slice(&format::trailer(
        content.len() as u64,
        crc32fast::hash(&content),
    ));
    out
}

fn sealed_message(envelope_json: &str, body: &[u8]) -> Vec<u8> {
    let mut content =
        format!("SMIMEGW-SPOOL 2 {}\n{envelope_json}\n", envelope_json.len()).into_bytes();
    content.extend_from_slice(body);
    seal(content)
}

#[test]
fn altered_spool_files_are_set_aside_and_the_rest_is_delivered() {
    const GOOD: &str = "00000000000A01";
    const LATE_STATE: &str = "00000000000A02";
    const MAX_ENVELOPE: &str = "00000000000A03";
    const Y10000_ENVELOPE: &str = "00000000000A04";
    const FLIPPED: &str = "00000000000A05";
    let bad = [LATE_STATE, MAX_ENVELOPE, Y10000_ENVELOPE, FLIPPED];

    // A gateway that made its spool, stopped: the altered files are put
    // in, the operator commands run on them with no daemon, then it starts.
    let sink = Sink::start(Script::default());
    let mut gw = Gateway::start(Options::new(sink.addr));
    gw.kill9();
    let spool = gw.spool();
    let queue = spool.join("queue");
    let write = |id: &str, ext: &str, bytes: &[u8]| {
        std::fs::write(queue.join(format!("{id}.{ext}")), bytes).unwrap()
    };
    let message = |id: &str| common::message(id, "spool format test");

    // The positive control: untouched.
    write(
        GOOD,
        "msg",
        &format::encode_message(&envelope("good@example-law.dk"), &message("good")).unwrap(),
    );
    // A good message whose state names the year 10000, checksum correct.
    write(
        LATE_STATE,
        "msg",
        &format::encode_message(&envelope("late@example-law.dk"), &message("late")).unwrap(),
    );
    write(
        LATE_STATE,
        "state",
        &seal(
            b"SMIMEGW-STATE 2\n{\"attempts\":1,\"next_attempt\":253402300800,\
              \"rcpts\":[{\"addr\":\"late@example-law.dk\",\"status\":\"pending\"}]}"
                .to_vec(),
        ),
    );
    // Envelopes received at u64::MAX and in the year 10000, checksums correct.
    for (id, received) in [
        (MAX_ENVELOPE, "18446744073709551615"),
        (Y10000_ENVELOPE, "253402300800"),
    ] {
        let json = format!(
            "{{\"mail_from\":\"alice@example.org\",\"rcpts\":[\"far@example-law.dk\"],\
             \"received\":{received},\"client\":\"192.0.2.1\",\"helo\":\"c\",\
             \"eight_bit\":false,\"smtputf8\":false}}"
        );
        write(id, "msg", &sealed_message(&json, &message(id)));
    }
    // One byte of the envelope changed: the recipient's domain.
    let mut flipped =
        format::encode_message(&envelope("flip@example-law.dk"), &message("flip")).unwrap();
    let at = flipped
        .windows(b"example-law".len())
        .position(|w| w == b"example-law")
        .unwrap();
    flipped[at] ^= 0x01;
    write(FLIPPED, "msg", &flipped);

    let out = gw.cli(&["queue", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "queue list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("5 message(s) in the queue"), "{text}");
    let good_line = text.lines().find(|l| l.starts_with(GOOD)).unwrap();
    assert!(good_line.contains("alice@example.org"), "{text}");
    assert!(good_line.contains("+0000"), "{text}");
    for id in bad {
        let line = text.lines().find(|l| l.starts_with(id)).unwrap();
        assert!(line.contains("unreadable"), "{text}");
    }
    assert!(text.contains("next_attempt"), "{text}");
    assert!(text.contains("checksum"), "{text}");
    for id in bad {
        let out = gw.cli(&["queue", "show", id]);
        assert!(!out.status.success(), "{id}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{id}: {err}");
    }
    let out = gw.cli(&["queue", "show", GOOD]);
    assert!(out.status.success(), "{out:?}");

    gw.spawn();
    let corrupt = spool.join("corrupt");
    assert!(
        wait_until(Duration::from_secs(20), || common::count_files(
            &corrupt, "msg"
        ) == bad.len()),
        "altered files not set aside"
    );
    assert!(corrupt.join(format!("{LATE_STATE}.state")).exists());
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 1));
    let got = sink.received();
    assert_eq!(got[0].rcpts, vec!["good@example-law.dk".to_string()]);
    assert!(got[0].text().contains("Message-ID: <good@test>"));

    let log = gw.log();
    for id in bad {
        assert!(
            log.lines()
                .any(|l| l.contains(id) && l.contains("moved aside")),
            "no log line for {id}:\n{log}"
        );
    }
    assert!(log.contains("in the year 10000"), "{log}");
    assert!(log.contains("checksum does not match"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // The queue listing works and the daemon goes on delivering.
    let out = gw.cli(&["queue", "list"]);
    assert!(out.status.success(), "{out:?}");
    let r = common::submit(
        &gw,
        "alice@example.org",
        &["after@example-law.dk"],
        &common::message("after", "still delivering"),
    );
    assert_eq!(r.code, 250, "{r:?}");
    assert!(wait_until(Duration::from_secs(10), || sink.count() == 2));
    assert!(sink.received()[1]
        .text()
        .contains("Message-ID: <after@test>"));
    assert!(wait_until(Duration::from_secs(10), || gw.queued() == 0));
    assert_eq!(common::count_files(&corrupt, "msg"), bad.len());
}

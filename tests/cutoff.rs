//! Cutoff readiness through the running gateway: real deliveries to the
//! demo PKI's counterparties (OCES2 only, OCES3 only, both, an OCES3
//! certificate that runs out, none) and real encrypted mail to the
//! organisation's OCES2 and OCES3 keys fill the SQLite journal; `cutoff
//! report` before and after the cutoff names exactly the counterparties
//! that change and why, `--set` and `--proposed` answer "what if" without
//! touching the live file, exit codes say what they promise, and `keys
//! usage` lists who still encrypts to the OCES2 key. A locked journal or
//! one that cannot be opened does not stop mail. Two gateways share one
//! PostgreSQL journal (a private cluster, TLS required).
//!
//! Why one long file: the SQLite and PostgreSQL tests share one scenario
//! (the counterparties, the rules, the senders and the report readers).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::pki::{self, P7M};
use common::sink::{Script, Sink};
use common::{submit, wait_until, Gateway, Options, BIN};

const DAY: i64 = 86_400;
const NORDBY: &str = "sikkermail@nordby-advokater.dk";
const VESTKYST: &str = "post@vestkyst-revision.dk";
const SYDHAVN: &str = "post@sydhavn-kommune.dk";
const COURT: &str = "post@domstol.dk";
const NOBODY: &str = "info@ukendt.dk";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The Danish date `days` from now, as an operator types it.
fn date(days: i64) -> String {
    chrono::DateTime::from_timestamp(now() + days * DAY, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// The demo counterparties' certificates, in a folder of their own.
fn recipients() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in [
        "court-oces2",
        "court-oces3",
        "partner-oces2",
        "partner-oces3",
        "partner-oces3-expiring",
    ] {
        std::fs::copy(pki::cert(n), dir.path().join(format!("{n}.pem"))).unwrap();
    }
    dir
}

/// Keys, trust, certificates, a cutoff 100 days from now and the rules:
/// courts OCES3 only (bounce), Nordby held without a usable certificate,
/// everyone else encrypted when possible and plain otherwise.
fn extra(recips: &Path, cutoff_days: i64, journal: &str) -> String {
    format!(
        "{}{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n\n\
         [certificates]\ndirs = [\"{}\"]\n\n[policy]\noces2_cutoff = \"{}\"\n\n{journal}\n\
         [[rule]]\nname = \"courts\"\nmatch = [\"*@domstol.dk\"]\ngeneration = \"oces3\"\n\
         encrypt = \"required\"\nsign = false\non_missing_certificate = \"bounce\"\n\n\
         [[rule]]\nname = \"partners\"\nmatch = [\"*@nordby-advokater.dk\"]\ngeneration = \"any\"\n\
         encrypt = \"required\"\nsign = false\non_missing_certificate = \"hold\"\n\n\
         [[rule]]\nname = \"default\"\nmatch = [\"*\"]\ngeneration = \"any\"\n\
         encrypt = \"if-possible\"\nsign = false\non_missing_certificate = \"send-plain\"\n",
        pki::identity("org-oces2", &[]),
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        recips.display(),
        date(cutoff_days),
    )
}

fn gateway(sink: &Sink, recips: &Path, journal: &str) -> Gateway {
    let mut opts = Options::new(sink.addr);
    opts.extra = extra(recips, 100, journal);
    Gateway::start(opts)
}

/// Mail from Alice to outside recipients.
fn send_out(gw: &Gateway, id: &str, rcpts: &[&str]) {
    let body = String::from_utf8(common::message(id, "Bilag vedlagt."))
        .unwrap()
        .replacen(
            "From: Alice <alice@example.org>",
            "From: <alice@example-law.dk>",
            1,
        );
    let r = submit(gw, "alice@example-law.dk", rcpts, body.as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
}

/// Mail from `sender` encrypted to the demo key `key`, for Bob.
fn send_in(gw: &Gateway, id: &str, sender: &str, key: &str) {
    let cms = pki::cms_encrypt(&pki::inner("Fortroligt."), key, &[]);
    let body = String::from_utf8(pki::enveloped_message(id, "bob@example-law.dk", &cms, P7M))
        .unwrap()
        .replacen(
            "From: Sender <sender@example.org>",
            &format!("From: <{sender}>"),
            1,
        );
    let r = submit(gw, sender, &["bob@example-law.dk"], body.as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
}

fn cli(args: &[&str]) -> Output {
    std::process::Command::new(BIN).args(args).output().unwrap()
}

fn report(gw: &Gateway, extra: &[&str]) -> Output {
    let mut args = vec!["cutoff", "report", "--config", gw.config.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli(&args)
}

/// The report's counterparties by address.
fn rows(out: &Output) -> HashMap<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["counterparties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["address"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn changed(rows: &HashMap<String, serde_json::Value>) -> Vec<String> {
    let mut c: Vec<String> = rows
        .iter()
        .filter(|(_, r)| r["changes"] == true)
        .map(|(a, _)| a.clone())
        .collect();
    c.sort();
    c
}

#[test]
fn the_report_names_exactly_who_breaks_at_the_cutoff_and_why() {
    // The first copy the next hop sees is deferred once: a retried
    // delivery must be counted once.
    let sink = Sink::start(Script {
        data_replies: ["451 4.3.0 try again later".to_string()].into(),
        ..Script::default()
    });
    let recips = recipients();
    let gw = gateway(&sink, recips.path(), "");
    send_out(&gw, "out-1", &[NORDBY, VESTKYST, SYDHAVN, COURT, NOBODY]);
    // One of its copies meets the deferral.
    assert!(wait_until(Duration::from_secs(30), || sink.data_attempts() >= 1));
    send_out(&gw, "out-2", &[NORDBY]);
    send_in(&gw, "in-1", COURT, "org-oces2");
    send_in(&gw, "in-2", VESTKYST, "org-oces3");
    // 5 + 1 outside copies, 2 for Bob; one of them was deferred first.
    assert!(
        wait_until(Duration::from_secs(60), || sink.count() == 8),
        "delivered: {}",
        sink.count()
    );
    assert!(gw.log().contains("event=\"deferred\""), "no retry happened");
    let nordby_copy = sink
        .received()
        .into_iter()
        .find(|r| r.rcpts == [NORDBY])
        .unwrap();
    assert!(nordby_copy.text().contains("application/pkcs7-mime"));

    // Before the cutoff nothing changes.
    let before = date(50);
    let journalled = || {
        let out = report(&gw, &["--at", &before, "--format", "json"]);
        rows(&out)
            .get(NORDBY)
            .is_some_and(|r| r["mail"] == 2)
            .then_some(out)
    };
    assert!(
        wait_until(Duration::from_secs(30), || journalled().is_some()),
        "the journal never showed both messages to Nordby"
    );
    let out = journalled().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = rows(&out);
    for a in [NORDBY, VESTKYST, SYDHAVN, COURT, NOBODY] {
        assert!(r.contains_key(a), "{a} missing: {r:?}");
        assert_eq!(
            r[a]["mail"].as_u64(),
            Some(if a == NORDBY { 2 } else { 1 }),
            "{a}: counted once per message"
        );
    }
    assert!(changed(&r).is_empty(), "{r:?}");
    assert_eq!(r[NORDBY]["today"], "encrypted-oces2");
    assert_eq!(r[NORDBY]["readiness"], "oces2-only");
    assert_eq!(r[COURT]["today"], "encrypted-oces3");
    assert_eq!(r[NOBODY]["today"], "plain");
    assert_eq!(r[NOBODY]["encrypted_mail"], 0);

    // After the cutoff: Nordby is held, nobody else changes; exit 1.
    let out = report(&gw, &["--at", &date(150), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = rows(&out);
    assert_eq!(changed(&r), [NORDBY]);
    assert_eq!(r[NORDBY]["at_date"], "hold");
    assert_eq!(r[NORDBY]["reason"], "only OCES2 certificate");
    assert_eq!(r[NORDBY]["at_risk"], true);
    assert_eq!(r[VESTKYST]["at_date"], "encrypted-oces3");

    // Later still: Sydhavn's only certificate has run out: plain (flagged).
    let out = report(&gw, &["--at", &date(300), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = rows(&out);
    // Sorted by address.
    assert_eq!(changed(&r), [SYDHAVN, NORDBY]);
    assert_eq!(r[SYDHAVN]["at_date"], "plain");
    assert_eq!(r[SYDHAVN]["turns_plain"], true);
    assert!(
        r[SYDHAVN]["reason"]
            .as_str()
            .unwrap()
            .starts_with("OCES3 certificate expires "),
        "{:?}",
        r[SYDHAVN]
    );

    // The table says the same for people, with the summaries.
    let out = report(&gw, &["--at", &date(150)]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(NORDBY)).unwrap();
    assert!(
        line.starts_with('!') && line.contains("only OCES2 certificate"),
        "{text}"
    );
    assert!(
        text.contains("per rule:") && text.contains("per domain:"),
        "{text}"
    );
    // --rule keeps that rule's counterparties only; CSV has a header.
    let out = report(
        &gw,
        &["--at", &date(150), "--rule", "partners", "--format", "csv"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("address,domain,"), "{text}");
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].starts_with(NORDBY));

    // What if the cutoff moved a year on? --set answers, the file stays.
    let before_bytes = std::fs::read(&gw.config).unwrap();
    let out = report(
        &gw,
        &[
            "--at",
            &date(150),
            "--format",
            "json",
            "--set",
            &format!("policy.oces2_cutoff={}", date(400)),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(changed(&rows(&out)).is_empty());
    assert_eq!(
        std::fs::read(&gw.config).unwrap(),
        before_bytes,
        "--set touched the live file"
    );
    // And a proposed file that holds Nordby to OCES3 now: it changes today.
    let proposed = gw.dir.path().join("proposed.toml");
    std::fs::write(
        &proposed,
        String::from_utf8(before_bytes.clone()).unwrap().replace(
            "match = [\"*@nordby-advokater.dk\"]\ngeneration = \"any\"",
            "match = [\"*@nordby-advokater.dk\"]\ngeneration = \"oces3\"",
        ),
    )
    .unwrap();
    let out = report(
        &gw,
        &[
            "--at",
            &date(50),
            "--format",
            "json",
            "--proposed",
            proposed.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let r = rows(&out);
    assert_eq!(r[NORDBY]["today"], "hold");
    assert_eq!(std::fs::read(&gw.config).unwrap(), before_bytes);

    // Exit 2: the report cannot be made.
    for bad in [
        vec!["--at", "tomorrow"],
        vec!["--at", &before, "--since", "a while"],
        vec!["--at", &before, "--set", "nonsense"],
        vec!["--at", &before, "--set", "policy.oces2_cutof=2027-01-01"],
        vec!["--at", &before, "--proposed", "/nonexistent.toml"],
    ] {
        let out = report(&gw, &bad);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Who still encrypts to the OCES2 key: the court, not Vestkyst.
    let out = gw.cli(&["keys", "usage", "--since", "30d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let oces2 = text.find("OCES2 (SHA-256").expect(&text);
    let oces3 = text.find("OCES3 (SHA-256").expect(&text);
    let court = text.find(COURT).expect(&text);
    let vestkyst = text.find(VESTKYST).expect(&text);
    assert!(oces2 < court && court < oces3 && oces3 < vestkyst, "{text}");
    assert!(
        text.contains("1 sender still encrypts to an OCES2 key"),
        "{text}"
    );
}

#[test]
fn a_locked_or_unopenable_journal_does_not_stop_mail() {
    let sink = Sink::start(Script::default());
    let recips = recipients();
    // The journal's path is a folder: it cannot be opened.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    std::fs::create_dir(&db).unwrap();
    let gw = gateway(
        &sink,
        recips.path(),
        &format!("[journal]\ndatabase = \"{}\"\n", db.display()),
    );
    send_out(&gw, "blocked-1", &[VESTKYST]);
    assert!(wait_until(Duration::from_secs(30), || sink.count() == 1));
    assert!(
        wait_until(Duration::from_secs(30), || gw
            .log()
            .contains("event=\"journal-error\"")),
        "the failure was not logged"
    );
    // Once it can be opened, what was kept is written (retried).
    std::fs::remove_dir(&db).unwrap();
    let reported = || {
        let out = report(&gw, &["--at", &date(1), "--format", "json"]);
        out.status.success() && rows(&out).get(VESTKYST).is_some_and(|r| r["mail"] == 1)
    };
    assert!(
        wait_until(Duration::from_secs(60), reported),
        "{}",
        gw.log()
    );

    // Someone else holds an exclusive lock: mail still flows.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let errors = gw.log().matches("event=\"journal-error\"").count();
    send_out(&gw, "locked-1", &[VESTKYST]);
    send_out(&gw, "locked-2", &[COURT]);
    assert!(
        wait_until(Duration::from_secs(30), || sink.count() == 3),
        "mail waited for the journal"
    );
    assert!(
        wait_until(Duration::from_secs(30), || gw
            .log()
            .matches("event=\"journal-error\"")
            .count()
            > errors),
        "the lock was not noticed"
    );
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    let both = || {
        let out = report(&gw, &["--at", &date(1), "--format", "json"]);
        let r = rows(&out);
        r.get(VESTKYST).is_some_and(|r| r["mail"] == 2)
            && r.get(COURT).is_some_and(|r| r["mail"] == 1)
    };
    assert!(wait_until(Duration::from_secs(60), both), "{}", gw.log());
}

#[test]
fn without_a_journal_the_report_says_so_and_fails_with_2() {
    let sink = Sink::start(Script::default());
    let recips = recipients();
    let gw = gateway(&sink, recips.path(), "[journal]\nenabled = false\n");
    send_out(&gw, "off-1", &[VESTKYST]);
    assert!(wait_until(Duration::from_secs(30), || sink.count() == 1));
    let out = report(&gw, &["--at", &date(1)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("switched off"));
    assert!(!gw.spool().join("journal").exists());
}

#[test]
fn two_gateways_share_one_postgresql_journal_and_one_report_sees_both() {
    if let Some(why) = common::postgres::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    // Over TLS, required, to a server whose certificate chains to a CA of
    // the test's own.
    let server = common::sink::NextHopCert::issue(&["127.0.0.1"]);
    let pg = common::postgres::Postgres::start_tls(&server);
    let url = pg.database("journal");
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let journal = format!(
        "[journal]\ndatabase = \"{url}?sslmode=require\"\ntls_ca = \"{}\"\n",
        ca.display()
    );
    let sink = Sink::start(Script::default());
    let recips = recipients();
    let a = gateway(&sink, recips.path(), &journal);
    let b = gateway(&sink, recips.path(), &journal);
    send_out(&a, "pg-a", &[NORDBY, VESTKYST]);
    send_out(&b, "pg-b", &[NORDBY]);
    send_in(&b, "pg-in", COURT, "org-oces2");
    assert!(
        wait_until(Duration::from_secs(60), || sink.count() == 4),
        "delivered: {}",
        sink.count()
    );
    // Gateway A's report sees B's mail too.
    let both = || {
        let out = report(&a, &["--at", &date(150), "--format", "json"]);
        let r = rows(&out);
        (r.get(NORDBY).is_some_and(|r| r["mail"] == 2)
            && r.get(VESTKYST).is_some_and(|r| r["mail"] == 1))
        .then_some((out, r))
    };
    assert!(
        wait_until(Duration::from_secs(60), || both().is_some()),
        "A: {}\nB: {}\nPostgreSQL: {}",
        a.log(),
        b.log(),
        pg.log()
    );
    let (out, r) = both().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(changed(&r), [NORDBY]);
    assert_eq!(r[NORDBY]["reason"], "only OCES2 certificate");
    // Nothing went to a local SQLite file instead.
    assert!(!a.spool().join("journal").exists() && !b.spool().join("journal").exists());
    let out = a.cli(&["keys", "usage"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(COURT) && text.contains("1 sender still encrypts to an OCES2 key"),
        "{text}"
    );

    // A server whose certificate does not chain to tls_ca is not spoken to.
    let other = common::sink::NextHopCert::issue(&["127.0.0.1"]);
    let wrong_ca = ca_dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, &other.ca_pem).unwrap();
    let wrong = ca_dir.path().join("wrong-ca.toml");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(&a.config)
            .unwrap()
            .replace(ca.to_str().unwrap(), wrong_ca.to_str().unwrap()),
    )
    .unwrap();
    let out = cli(&[
        "cutoff",
        "report",
        "--config",
        wrong.to_str().unwrap(),
        "--at",
        &date(150),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate verify failed"), "{err}");

    // No tls_ca: the system's roots, here the test CA given as the
    // system's bundle (SSL_CERT_FILE, as on a host whose roots include
    // it); the wrong CA as the bundle is the control.
    let no_ca = ca_dir.path().join("system-roots.toml");
    std::fs::write(
        &no_ca,
        std::fs::read_to_string(&a.config)
            .unwrap()
            .replace(&format!("tls_ca = \"{}\"\n", ca.display()), ""),
    )
    .unwrap();
    assert!(!std::fs::read_to_string(&no_ca).unwrap().contains("tls_ca"));
    for (bundle, code) in [(&ca, 1), (&wrong_ca, 2)] {
        let out = std::process::Command::new(BIN)
            .args(["cutoff", "report", "--config", no_ca.to_str().unwrap()])
            .args(["--at", &date(150)])
            .env("SSL_CERT_FILE", bundle)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // PostgreSQL gone: mail still flows, and the report cannot be made.
    drop(pg);
    send_out(&a, "pg-down", &[VESTKYST]);
    assert!(wait_until(Duration::from_secs(30), || sink.count() == 5));
    assert!(wait_until(Duration::from_secs(30), || a
        .log()
        .contains("event=\"journal-error\"")));
    let out = report(&a, &["--at", &date(150)]);
    assert_eq!(out.status.code(), Some(2));
}

/// The PostgreSQL journal's password stays out of the log whichever way
/// the URL carries it. Attacker: whoever reads the log (log shipping, a
/// support bundle). The daemon names the journal at start and on every
/// failed write; the server (port 1) refuses, so both lines are written.
/// Control: the log does name the target (user, host, port, database), so
/// the search for the password looks at the lines that would carry it.
#[test]
fn the_journal_password_is_not_logged() {
    let sink = Sink::start(Script::default());
    for url in [
        "postgres://gw@127.0.0.1:1/j?password=s3cret",
        "postgres://gw:s3cret@127.0.0.1:1/j",
    ] {
        let mut opts = Options::new(sink.addr);
        opts.extra = format!("[journal]\ndatabase = \"{url}\"\n");
        let gw = Gateway::start(opts);
        let r = submit(
            &gw,
            "alice@example-law.dk",
            &["someone@unknown.example"],
            &common::message("pw-1", "journalled"),
        );
        assert_eq!(r.code, 250, "{r:?}");
        assert!(
            wait_until(Duration::from_secs(30), || gw
                .log()
                .contains("event=\"journal-error\"")),
            "{url}: the failed write was not logged:\n{}",
            gw.log()
        );
        let log = gw.log();
        assert!(
            !log.contains("s3cret"),
            "{url}: password in the log:\n{log}"
        );
        assert!(
            log.contains("postgres://gw@127.0.0.1:1/j"),
            "{url}: the journal is not named:\n{log}"
        );
    }
}

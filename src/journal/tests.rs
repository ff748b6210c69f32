//! Unit tests of the SQLite journal: a retried decision is counted once,
//! days are Danish, old rows are pruned, a locked database is retried by
//! the writer and nothing waits for it. (PostgreSQL: tests/journal.rs
//! against a private cluster.)

use super::*;

const T: i64 = 1_798_761_600; // 2027-01-01T00:00:00Z

fn out(message: &str, recipient: &str, outcome: &str, at: i64) -> Record {
    Record::Outbound(Outbound {
        message: message.into(),
        recipient: recipient.into(),
        rule: "default".into(),
        outcome: outcome.into(),
        generation: "OCES2".into(),
        certificates: "AB:CD".into(),
        at,
    })
}

fn inb(message: &str, identity: &str, at: i64) -> Record {
    Record::Inbound(Inbound {
        message: message.into(),
        sender: "post@domstol.dk".into(),
        identity: identity.into(),
        subject: "Example Law ApS - sikkermail".into(),
        generation: "OCES2".into(),
        at,
    })
}

#[tokio::test]
async fn a_retried_decision_is_counted_once_and_the_last_one_stands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j/journal.db");
    let mut s = Store::open(&Target::Sqlite(path.clone())).await.unwrap();
    s.write(
        "gw1",
        &[
            out("M1", "a@x.dk", "hold", T),
            out("M2", "a@x.dk", "encrypted-oces2", T + 10),
            inb("M1", "FP2", T),
            inb("M1", "FP2", T + 5),
        ],
    )
    .await
    .unwrap();
    // The held message is tried again and leaves encrypted.
    s.write("gw1", &[out("M1", "a@x.dk", "encrypted-oces2", T + 60)])
        .await
        .unwrap();
    // Another gateway's message with the same queue id is another message.
    s.write("gw2", &[out("M1", "a@x.dk", "encrypted-oces2", T + 70)])
        .await
        .unwrap();
    let rows = s.outbound(T - 1).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, "encrypted-oces2");
    assert_eq!(rows[0].count, 3);
    assert_eq!(rows[0].last_seen, T + 70);
    assert_eq!(rows[0].day, "2027-01-01");
    let keys = s.inbound(T - 1).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].count, 1);
    assert_eq!(keys[0].last_seen, T + 5);

    // A reader sees the same; a missing file is no journal, not an empty one.
    let r = Store::open_for_reading(&Target::Sqlite(path))
        .await
        .unwrap();
    assert_eq!(r.outbound(T - 1).await.unwrap().len(), 1);
    assert!(matches!(
        Store::open_for_reading(&Target::Sqlite(dir.path().join("none.db"))).await,
        Err(JournalError::Missing(_))
    ));
}

#[tokio::test]
async fn rows_are_per_danish_day_and_old_ones_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&Target::Sqlite(dir.path().join("journal.db")))
        .await
        .unwrap();
    // 23:30 UTC on 31 December is already 1 January in Denmark.
    s.write(
        "gw",
        &[
            out("M1", "a@x.dk", "plain", T - 1800),
            out("M2", "a@x.dk", "plain", T - 2 * 86_400),
        ],
    )
    .await
    .unwrap();
    let days: Vec<String> = s
        .outbound(0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.day)
        .collect();
    assert_eq!(days, ["2026-12-30", "2027-01-01"]);
    assert_eq!(s.prune(T - 86_400).await.unwrap(), 1);
    assert_eq!(s.outbound(0).await.unwrap().len(), 1);
    assert_eq!(s.outbound(T).await.unwrap().len(), 0, "since filters");
}

#[tokio::test]
async fn a_locked_database_is_retried_and_nothing_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    drop(Store::open(&Target::Sqlite(path.clone())).await.unwrap());
    // Someone else holds an exclusive lock.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let settings = crate::config::load::test_settings(&format!(
        "[journal]\ndatabase = \"{}\"\n",
        path.display()
    ));
    let (journal, writer) = Journal::start(&settings);
    let writer = writer.unwrap();
    for i in 0..3 {
        // Never waits, whatever the database does.
        journal.record(out(&format!("M{i}"), "a@x.dk", "plain", T));
    }
    // Positive control that it is really locked: a write of ours fails.
    let mut mine = sqlite::Sqlite::open_existing(path.clone()).await.unwrap();
    assert!(mine
        .write("x", &[out("Z", "z@x.dk", "plain", T)])
        .await
        .is_err());
    // The writer has failed at least once, and keeps the records.
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while journal.errors() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the writer never tried the locked database");

    other.execute_batch("COMMIT").unwrap();
    drop(journal);
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finishes once the lock is gone")
        .unwrap();
    let s = Store::open_for_reading(&Target::Sqlite(path))
        .await
        .unwrap();
    let rows = s.outbound(0).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 3, "{rows:?}");
}

#[test]
fn a_full_channel_drops_and_counts_instead_of_waiting() {
    let (tx, _rx) = mpsc::channel(1);
    let j = Journal {
        tx: Some(tx),
        ..Journal::default()
    };
    j.record(out("M1", "a@x.dk", "plain", T));
    j.record(out("M2", "a@x.dk", "plain", T));
    j.record(out("M3", "a@x.dk", "plain", T));
    assert_eq!(j.dropped(), 2);
    let off = Journal::disabled();
    off.record(out("M1", "a@x.dk", "plain", T));
    assert_eq!(off.dropped(), 0);
}

#[test]
fn targets_and_their_names() {
    let s = crate::config::load::test_settings("");
    assert_eq!(
        Target::of(&s),
        Some(Target::Sqlite("/nonexistent/journal/journal.db".into()))
    );
    let s = crate::config::load::test_settings("[journal]\nenabled = false\n");
    assert_eq!(Target::of(&s), None);
    let t = Target::Postgres("postgres://gw:secret@db.example:5432/journal".into(), None);
    assert_eq!(t.describe(), "postgres://gw@db.example:5432/journal");
}

#[test]
fn no_form_of_the_password_is_described() {
    let pg = |url: &str| Target::Postgres(url.into(), None).describe();
    for (url, want) in [
        (
            "postgres://gw:s3cret@db.example/j",
            "postgres://gw@db.example:5432/j",
        ),
        (
            "postgres://gw@db.example:5433/j?password=s3cret",
            "postgres://gw@db.example:5433/j",
        ),
        (
            "postgresql://db.example/j?user=gw&password=s3cret&sslmode=require",
            "postgres://gw@db.example:5432/j",
        ),
        (
            "postgres://gw:s3cret@a.example:1,b.example:2/j?password=s3cret",
            "postgres://gw@a.example:1,b.example:2/j",
        ),
        (
            "postgres://gw:s%33cret@%2Frun%2Fpostgresql/j",
            "postgres://gw@/run/postgresql:5432/j",
        ),
        (
            "postgres://gw:s3cret@db.example/j?nonsense=1",
            "postgres://(unreadable URL)",
        ),
        ("postgres://gw:s3cret@[::1/j", "postgres://(unreadable URL)"),
    ] {
        let got = pg(url);
        assert_eq!(got, want, "{url}");
        assert!(!got.contains("s3cret"), "{url}: {got}");
    }
}

#[tokio::test]
async fn the_writer_deletes_rows_older_than_keep() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let now = now();
    let mut s = Store::open(&Target::Sqlite(path.clone())).await.unwrap();
    s.write(
        "gw",
        &[
            out("OLD", "a@x.dk", "plain", now - 10 * 86_400),
            inb("OLD", "FP2", now - 10 * 86_400),
            out("RECENT", "a@x.dk", "plain", now - 86_400),
        ],
    )
    .await
    .unwrap();
    drop(s);
    let settings = crate::config::load::test_settings(&format!(
        "[journal]\ndatabase = \"{}\"\nkeep = \"5d\"\n",
        path.display()
    ));
    let (journal, writer) = Journal::start(&settings);
    journal.record(out("NEW", "b@x.dk", "plain", now));
    drop(journal);
    tokio::time::timeout(Duration::from_secs(60), writer.unwrap())
        .await
        .unwrap()
        .unwrap();
    let s = Store::open_for_reading(&Target::Sqlite(path))
        .await
        .unwrap();
    let rows = s.outbound(0).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 2, "{rows:?}");
    assert!(s.inbound(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_journal_is_private_to_the_gateway() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool/journal/journal.db");
    let s = Store::open(&Target::Sqlite(path.clone())).await.unwrap();
    drop(s);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
}

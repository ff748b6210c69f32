//! Unit tests of readiness: the demo PKI's counterparties (OCES2 only,
//! OCES3 only, both, an OCES3 certificate that runs out, none) assessed
//! before and after a cutoff through the real `decide`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::*;
use crate::config::load::test_settings;
use crate::pki::directory::Directory;

const DAY: i64 = 86_400;

/// The demo PKI, generated once for these tests (valid from `now()`).
fn demo() -> &'static (PathBuf, i64) {
    static DEMO: OnceLock<(PathBuf, i64)> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("readiness-demo")
            .tempdir()
            .expect("tempdir")
            .keep();
        let now = chrono::Utc::now().timestamp();
        crate::ops::demo::generate(&dir, now, &crate::ops::demo::Urls::default())
            .expect("demo PKI");
        (dir, now)
    })
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .expect("time")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn cert(dir: &Path, name: &str) -> String {
    format!("\"{}\"", dir.join(format!("certs/{name}.pem")).display())
}

/// Settings with a cutoff 100 days from now, courts OCES3 only (bounce),
/// Nordby held without a usable certificate, a rule for ukendt.dk that
/// starts in 100 days, and everyone else encrypted when possible.
fn snapshot() -> Snapshot {
    let (dir, now) = demo();
    let certs: Vec<String> = [
        "court-oces2",
        "court-oces3",
        "partner-oces2",
        "partner-oces3",
        "partner-oces3-expiring",
    ]
    .iter()
    .map(|n| cert(dir, n))
    .collect();
    let settings = test_settings(&format!(
        "[trust]\nanchors = [\"{trust}\"]\nrevocation = \"off\"\n\
         [certificates]\ndirs = [{certs}]\n\
         [policy]\noces2_cutoff = \"{cutoff}\"\n\
         [[rule]]\nname = \"courts\"\nmatch = [\"*@domstol.dk\"]\ngeneration = \"oces3\"\n\
         encrypt = \"required\"\nsign = false\non_missing_certificate = \"bounce\"\n\
         [[rule]]\nname = \"strict\"\nmatch = [\"*@ukendt.dk\"]\nfrom = \"{cutoff}\"\n\
         encrypt = \"required\"\nsign = false\non_missing_certificate = \"bounce\"\n\
         [[rule]]\nname = \"partners\"\nmatch = [\"*@nordby-advokater.dk\"]\ngeneration = \"any\"\n\
         encrypt = \"required\"\nsign = false\non_missing_certificate = \"hold\"\n\
         [[rule]]\nname = \"default\"\nmatch = [\"*\"]\ngeneration = \"any\"\n\
         encrypt = \"if-possible\"\nsign = false\non_missing_certificate = \"send-plain\"\n",
        trust = dir.join("trust").display(),
        certs = certs.join(", "),
        cutoff = rfc3339(now + 100 * DAY),
    ));
    let keys = Keyring::load(&settings).expect("keys");
    let certs = Directory::for_settings(&settings).expect("certificates");
    Snapshot {
        settings: Arc::new(settings),
        keys: Arc::new(keys),
        certs: Arc::new(certs),
        checked: Arc::new(crate::pki::checked::Checked::new()),
    }
}

async fn at(days: i64, address: &str) -> Assessment {
    let (_, now) = demo();
    let snap = snapshot();
    let live = Live::new(snapshot());
    assess(&snap, &live, address, *now, now + days * DAY).await
}

#[tokio::test]
async fn oces2_only_is_held_after_the_cutoff_and_not_before() {
    let before = at(50, "sikkermail@nordby-advokater.dk").await;
    assert_eq!(before.today.outcome, Outcome::Encrypted(Generation::Oces2));
    assert_eq!(before.at_date.outcome, before.today.outcome);
    assert!(!before.changes() && before.reason.is_none(), "{before:?}");
    assert_eq!(before.readiness, Readiness::Oces2Only);
    assert_eq!(before.today.certificates.len(), 1);

    let after = at(150, "sikkermail@nordby-advokater.dk").await;
    assert_eq!(after.at_date.outcome, Outcome::Hold);
    assert!(after.changes());
    assert_eq!(after.reason.as_deref(), Some("only OCES2 certificate"));
    assert_eq!(after.rule.as_deref(), Some("partners"));
    assert!(!after.turns_plain);
    assert!(after.at_risk(true) && !after.at_risk(false));
}

#[tokio::test]
async fn oces3_ready_counterparties_do_not_change() {
    for address in ["post@vestkyst-revision.dk", "post@domstol.dk"] {
        let a = at(150, address).await;
        assert_eq!(a.today.outcome, Outcome::Encrypted(Generation::Oces3));
        assert!(!a.changes() && a.reason.is_none(), "{a:?}");
        assert_eq!(a.readiness, Readiness::Oces3);
        assert!(!a.at_risk(true));
    }
    // The court has both generations; only the OCES3 one is used.
    let court = at(150, "post@domstol.dk").await;
    assert_eq!(court.today.certificates.len(), 1);
    assert_eq!(court.rule.as_deref(), Some("courts"));
}

#[tokio::test]
async fn an_expiring_oces3_certificate_turns_mail_plain() {
    let (_, now) = demo();
    let soon = at(150, "post@sydhavn-kommune.dk").await;
    assert!(!soon.changes(), "{soon:?}");
    let later = at(300, "post@sydhavn-kommune.dk").await;
    assert_eq!(later.today.outcome, Outcome::Encrypted(Generation::Oces3));
    assert_eq!(later.at_date.outcome, Outcome::Plain);
    assert!(later.turns_plain);
    assert_eq!(later.readiness, Readiness::None);
    assert_eq!(
        later.reason,
        Some(format!(
            "OCES3 certificate expires {}",
            day(now + 200 * DAY)
        ))
    );
}

#[tokio::test]
async fn no_certificate_is_named_when_a_new_rule_bounces() {
    let a = at(150, "info@ukendt.dk").await;
    assert_eq!(a.today.outcome, Outcome::Plain);
    assert_eq!(a.at_date.outcome, Outcome::Bounce);
    assert_eq!(a.reason.as_deref(), Some("no certificate"));
    assert_eq!(a.readiness, Readiness::None);
    // Plain mail that stays plain is no risk, and does not change.
    let plain = at(150, "someone@example.net").await;
    assert_eq!(plain.today.outcome, Outcome::Plain);
    assert!(!plain.changes() && !plain.turns_plain);
    // Internal addresses are mailboxes, not counterparties.
    let internal = at(150, "bob@example-law.dk").await;
    assert_eq!(internal.today.outcome, Outcome::Mailbox);
}

#[test]
fn outcome_tokens_read_back() {
    for o in [
        Outcome::Encrypted(Generation::Oces3),
        Outcome::Encrypted(Generation::Oces2),
        Outcome::Encrypted(Generation::Other),
        Outcome::Plain,
        Outcome::Unchanged,
        Outcome::Bounce,
        Outcome::Hold,
        Outcome::Defer,
        Outcome::Mailbox,
    ] {
        assert_eq!(Outcome::from_token(o.token()), Some(o));
    }
    assert_eq!(Outcome::from_token("sent"), None);
    assert!(Outcome::Unchanged.breaks_encrypted_mail());
    assert!(!Outcome::Defer.breaks_encrypted_mail());
    assert!(!Outcome::Encrypted(Generation::Oces2).breaks_encrypted_mail());
}

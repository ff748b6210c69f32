//! Unit tests of who may have mail signed (policy::signing).

use super::*;
use crate::config::load::test_settings;

fn keyring() -> Keyring {
    let id =
        crate::pki::testkit::identity(1024, "Example Law ApS").unwrap_or_else(|e| panic!("{e}"));
    Keyring {
        identities: vec![id],
        anchors: Vec::new(),
        ..Keyring::default()
    }
}

fn rule(sign: &str) -> Settings {
    let mut s = test_settings(&format!(
        "[[rule]]\nname = \"r\"\nmatch = [\"*\"]\nencrypt = \"never\"\nsign = {sign}\n"
    ));
    // Mail from trusted networks may be signed (no submission path).
    s.server.sign_without_submission_path = true;
    s
}

fn origin(sender: &str, from: &str) -> Origin {
    Origin {
        envelope_sender: sender.into(),
        header_from: vec![from.into()],
        submission: false,
        shown_beside: Vec::new(),
    }
}

fn run(settings: &Settings, keys: &Keyring, o: &Origin) -> Decision {
    let revoked = HashSet::new();
    let signers = Signers {
        keys,
        revoked: &revoked,
    };
    decide(settings, signers, o, "post@domstol.dk", &[], None, 0)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[test]
fn the_organisation_signs_its_senders_own_mail() {
    let keys = keyring();
    let revoked = HashSet::new();
    let signers = Signers {
        keys: &keys,
        revoked: &revoked,
    };
    let o = origin("alice@example-law.dk", "alice@example-law.dk");
    let d = decide(
        &rule("true"),
        signers,
        &o,
        "post@domstol.dk",
        &[],
        None,
        now(),
    );
    assert!(
        matches!(
            d.outcome,
            Outcome::Send {
                sign_with: Some(0),
                ..
            }
        ),
        "{d:?}"
    );
    assert!(d.unsigned.is_none());
}

#[test]
fn a_foreign_from_goes_unsigned_or_bounces_when_required() {
    let keys = keyring();
    let o = origin("nobody@example-law.dk", "dommer@domstol.dk");
    let d = run(&rule("true"), &keys, &o);
    assert!(
        matches!(
            d.outcome,
            Outcome::Send {
                sign_with: None,
                ..
            }
        ),
        "{d:?}"
    );
    assert!(d
        .unsigned
        .as_deref()
        .is_some_and(|w| w.contains("not in the internal")));
    let d = run(&rule("\"required\""), &keys, &o);
    assert!(matches!(&d.outcome, Outcome::Bounce(w) if w.contains("requires a signature")));
    // A rule that does not sign has nothing to refuse.
    let d = run(&rule("false"), &keys, &o);
    assert!(d.unsigned.is_none());
}

#[test]
fn a_personal_identity_signs_only_addresses_in_its_certificate() {
    let mut keys = keyring();
    keys.identities[0].mailboxes = vec!["alice@example-law.dk".into()];
    let revoked = HashSet::new();
    let signers = Signers {
        keys: &keys,
        revoked: &revoked,
    };
    let o = origin("alice@example-law.dk", "alice@example-law.dk");
    // Configured for alice, but the certificate names no address.
    let d = decide(
        &rule("true"),
        signers,
        &o,
        "post@domstol.dk",
        &[],
        None,
        now(),
    );
    assert!(matches!(
        d.outcome,
        Outcome::Send {
            sign_with: None,
            ..
        }
    ));
    keys.identities[0].info.emails = vec!["alice@example-law.dk".into()];
    let signers = Signers {
        keys: &keys,
        revoked: &revoked,
    };
    let d = decide(
        &rule("true"),
        signers,
        &o,
        "post@domstol.dk",
        &[],
        None,
        now(),
    );
    assert!(
        matches!(
            d.outcome,
            Outcome::Send {
                sign_with: Some(0),
                ..
            }
        ),
        "{d:?}"
    );
    // Bob may not borrow Alice's key, even as himself.
    let o = origin("bob@example-law.dk", "bob@example-law.dk");
    let d = decide(
        &rule("true"),
        signers,
        &o,
        "post@domstol.dk",
        &[],
        None,
        now(),
    );
    assert!(matches!(
        d.outcome,
        Outcome::Send {
            sign_with: None,
            ..
        }
    ));
}

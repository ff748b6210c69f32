//! Unit tests of the outbound policy: rule, generation, cutoff, missing
//! certificates, signer choice and content encryption.

use super::*;
use crate::config::load::test_settings;
use crate::pki::directory::{fingerprint, Source};
use crate::pki::{testkit, Identity};

const NOW: i64 = 1_780_000_000; // 2026-05-28
const CUTOFF: &str = "2026-06-30T00:00:00Z";
const AFTER: i64 = 1_790_000_000; // 2026-09-21

fn identity(cn: &str, generation: Generation) -> Identity {
    let mut id = testkit::identity(1024, cn).expect("test identity");
    id.info.generation = generation;
    id.info.not_before = 0;
    id.info.not_after = i64::MAX / 2;
    id
}

fn candidate(generation: Generation, verdict: Verdict) -> Candidate {
    candidate_called("Recipient", generation, verdict)
}

/// A recipient certificate named `cn` (also for `policy::sealed`'s tests).
pub(super) fn candidate_called(cn: &str, generation: Generation, verdict: Verdict) -> Candidate {
    let id = identity(cn, generation);
    Candidate {
        entry: Entry {
            fingerprint: fingerprint(&id.cert),
            cert: id.cert,
            info: id.info,
            source: Source::Directory,
            capabilities: Vec::new(),
            signed_at: None,
        },
        verdict,
    }
}

fn usable(generation: Generation) -> Candidate {
    candidate(generation, Verdict::Usable("test".into()))
}

fn rule(generation: &str, missing: &str) -> Settings {
    let mut s = test_settings(&format!(
        "[policy]\noces2_cutoff = \"{CUTOFF}\"\n\
         [[rule]]\nname = \"courts\"\nmatch = [\"*@domstol.dk\"]\ngeneration = \"{generation}\"\n\
         encrypt = \"required\"\nsign = true\non_missing_certificate = \"{missing}\"\n"
    ));
    // Mail from trusted networks may be signed (no submission path).
    s.server.sign_without_submission_path = true;
    s
}

fn run(
    settings: &Settings,
    keys: &Keyring,
    revoked: &HashSet<String>,
    sender: &str,
    candidates: &[Candidate],
    at: i64,
) -> Decision {
    let signers = Signers { keys, revoked };
    // The sender as itself in the header From, on the submission path.
    let origin = Origin {
        envelope_sender: sender.into(),
        header_from: vec![sender.into()],
        submission: true,
        shown_beside: Vec::new(),
    };
    decide(
        settings,
        signers,
        &origin,
        "post@domstol.dk",
        candidates,
        None,
        at,
    )
}

#[test]
fn no_rule_leaves_the_message_unchanged() {
    let s = rule("oces3", "bounce");
    let d = decide(
        &s,
        Signers {
            keys: &Keyring::default(),
            revoked: &HashSet::new(),
        },
        &Origin::default(),
        "someone@example.org",
        &[],
        None,
        NOW,
    );
    assert!(matches!(d.outcome, Outcome::PassThrough(_)));
    assert_eq!(d.rule, None);
}

#[test]
fn an_oces3_rule_takes_only_oces3_certificates() {
    let s = rule("oces3", "bounce");
    let cands = [usable(Generation::Oces2), usable(Generation::Oces3)];
    let d = run(&s, &Keyring::default(), &HashSet::new(), "", &cands, NOW);
    let Outcome::Send { encrypt_to, .. } = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(encrypt_to.len(), 1);
    assert_eq!(
        fingerprint(&encrypt_to[0]),
        cands[1].entry.fingerprint,
        "the OCES3 certificate"
    );
    assert!(d.considered[0].contains("refused"), "{:?}", d.considered);
}

#[test]
fn any_generation_prefers_oces3_and_drops_oces2_after_the_cutoff() {
    let s = rule("any", "bounce");
    let both = [usable(Generation::Oces2), usable(Generation::Oces3)];
    let d = run(&s, &Keyring::default(), &HashSet::new(), "", &both, NOW);
    let Outcome::Send { encrypt_to, .. } = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(encrypt_to.len(), 1, "OCES2 set aside when OCES3 is usable");

    let only_oces2 = [usable(Generation::Oces2)];
    let before = run(
        &s,
        &Keyring::default(),
        &HashSet::new(),
        "",
        &only_oces2,
        NOW,
    );
    assert!(matches!(before.outcome, Outcome::Send { .. }), "{before:?}");
    let after = run(
        &s,
        &Keyring::default(),
        &HashSet::new(),
        "",
        &only_oces2,
        AFTER,
    );
    match &after.outcome {
        Outcome::Bounce(why) => assert!(why.contains("OCES3"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        after.considered[0].contains("cutoff"),
        "{:?}",
        after.considered
    );
}

#[test]
fn missing_certificates_bounce_hold_or_defer_as_told() {
    let none: [Candidate; 0] = [];
    let d = run(
        &rule("oces3", "bounce"),
        &Keyring::default(),
        &HashSet::new(),
        "",
        &none,
        NOW,
    );
    assert!(matches!(d.outcome, Outcome::Bounce(_)), "{d:?}");
    let d = run(
        &rule("oces3", "hold"),
        &Keyring::default(),
        &HashSet::new(),
        "",
        &none,
        NOW,
    );
    assert!(matches!(d.outcome, Outcome::Hold(_)), "{d:?}");
    // A revocation source that cannot answer defers, never bounces.
    let unknown = [candidate(
        Generation::Oces3,
        Verdict::Unknown("OCSP down".into()),
    )];
    let d = run(
        &rule("oces3", "bounce"),
        &Keyring::default(),
        &HashSet::new(),
        "",
        &unknown,
        NOW,
    );
    assert!(matches!(d.outcome, Outcome::Defer(_)), "{d:?}");
    // A refused certificate is no certificate.
    let refused = [candidate(
        Generation::Oces3,
        Verdict::Refused("expired".into()),
    )];
    let d = run(
        &rule("oces3", "bounce"),
        &Keyring::default(),
        &HashSet::new(),
        "",
        &refused,
        NOW,
    );
    assert!(matches!(d.outcome, Outcome::Bounce(_)), "{d:?}");
}

#[test]
fn only_internal_senders_are_signed_for_and_revoked_identities_never_sign() {
    let s = rule("oces3", "bounce");
    let keys = Keyring {
        identities: vec![identity("Example Law ApS", Generation::Oces3)],
        anchors: Vec::new(),
        ..Keyring::default()
    };
    let cands = [usable(Generation::Oces3)];
    let signed = |d: &Decision| {
        matches!(
            d.outcome,
            Outcome::Send {
                sign_with: Some(0),
                ..
            }
        )
    };

    let d = run(
        &s,
        &keys,
        &HashSet::new(),
        "alice@example-law.dk",
        &cands,
        NOW,
    );
    assert!(signed(&d), "{d:?}");
    let d = run(
        &s,
        &keys,
        &HashSet::new(),
        "someone@example.org",
        &cands,
        NOW,
    );
    assert!(!signed(&d), "{d:?}");
    assert!(
        d.signer.contains("not in the internal domains"),
        "{}",
        d.signer
    );

    let revoked: HashSet<String> = [keys.identities[0].fingerprint()].into();
    let d = run(&s, &keys, &revoked, "alice@example-law.dk", &cands, NOW);
    assert!(!signed(&d), "{d:?}");
}

#[test]
fn gcm_only_where_every_recipient_announced_it() {
    let s = rule("oces3", "bounce");
    let mut gcm = usable(Generation::Oces3);
    gcm.entry.capabilities = vec![
        crate::pki::directory::AES_256_GCM.into(),
        crate::pki::directory::RSAES_OAEP.into(),
    ];
    let enc = |d: &Decision| match &d.outcome {
        Outcome::Send { encryption, .. } => *encryption,
        other => panic!("{other:?}"),
    };
    let d = run(
        &s,
        &Keyring::default(),
        &HashSet::new(),
        "",
        std::slice::from_ref(&gcm),
        NOW,
    );
    assert_eq!(enc(&d), Encryption::Aes256GcmOaep);
    let d = run(
        &s,
        &Keyring::default(),
        &HashSet::new(),
        "",
        &[gcm, usable(Generation::Oces3)],
        NOW,
    );
    assert_eq!(enc(&d), Encryption::Aes256Cbc);
}

#[test]
fn a_rule_on_an_address_holds_for_its_extensions() {
    let s = test_settings(
        "[[rule]]\nname = \"post\"\nmatch = [\"post@domstol.dk\"]\nencrypt = \"required\"\non_missing_certificate = \"bounce\"\n\
         [[rule]]\nname = \"rest\"\nmatch = [\"*@domstol.dk\"]\nencrypt = \"never\"\n",
    );
    let name = |rcpt: &str| super::rule_for(&s, rcpt, 0).map(|r| r.name.as_str());
    assert_eq!(name("post@domstol.dk"), Some("post"));
    assert_eq!(name("post+sag-42@domstol.dk"), Some("post"));
    assert_eq!(name("poster@domstol.dk"), Some("rest"));
}

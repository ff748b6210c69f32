//! Outbound rules: for one recipient at one instant, which rule applies,
//! which of the recipient's certificates may be used (generation, cutoff,
//! validity, revocation), which identity signs, and what happens: send
//! encrypted or plain, bounce, hold, or defer. Pure: certificates with
//! their verdicts, the keys and the time come in; a decision with the
//! reasons for it goes out.

pub mod signing;

use std::collections::HashSet;

use openssl::x509::X509;

use crate::config::{
    EncryptMode, Encryption, GenerationChoice, Instant, OnMissing, RuleSettings, Settings, Sign,
};
use crate::pki::directory::Entry;
use crate::pki::oces::{CertInfo, Generation};
use crate::pki::resolve::{Candidate, Verdict};
use crate::pki::Keyring;
pub use signing::Origin;

/// What happens to mail for the recipient.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// No rule applies: the message goes unchanged.
    PassThrough(String),
    /// Send, encrypted to `encrypt_to` (plain when empty), signed by the
    /// identity at `sign_with` in the keyring when set.
    Send {
        encrypt_to: Vec<X509>,
        sign_with: Option<usize>,
        encryption: Encryption,
    },
    Bounce(String),
    Hold(String),
    /// A temporary failure (directory or revocation source down).
    Defer(String),
}

/// The decision and the reasons for it, for logs and `explain`.
#[derive(Debug, Clone)]
pub struct Decision {
    pub rule: Option<String>,
    pub outcome: Outcome,
    /// One line per certificate considered: taken, or why not.
    pub considered: Vec<String>,
    /// Who signs, or why nobody does.
    pub signer: String,
    /// The rule asks for a signature that this mail may not have (the
    /// reason): it leaves unsigned, or bounces with `sign = "required"`.
    pub unsigned: Option<String>,
}

impl Decision {
    /// One line for logs.
    pub fn summary(&self) -> String {
        let rule = self.rule.as_deref().unwrap_or("-");
        match &self.outcome {
            Outcome::PassThrough(why) => format!("rule {rule}: unchanged ({why})"),
            Outcome::Send {
                encrypt_to,
                sign_with,
                ..
            } => format!(
                "rule {rule}: {}, {}",
                if encrypt_to.is_empty() {
                    "plain".to_string()
                } else {
                    format!("encrypted to {} certificate(s)", encrypt_to.len())
                },
                if sign_with.is_some() {
                    "signed"
                } else {
                    "unsigned"
                }
            ),
            Outcome::Bounce(why) => format!("rule {rule}: bounce ({why})"),
            Outcome::Hold(why) => format!("rule {rule}: hold ({why})"),
            Outcome::Defer(why) => format!("rule {rule}: defer ({why})"),
        }
    }
}

/// The first rule matching `rcpt` whose window contains `at`.
pub fn rule_for<'a>(settings: &'a Settings, rcpt: &str, at: i64) -> Option<&'a RuleSettings> {
    settings
        .rules
        .iter()
        .find(|r| r.matches(rcpt) && r.applies_at(at))
}

fn after_cutoff(settings: &Settings, at: i64) -> bool {
    settings.policy.oces2_cutoff.is_some_and(|c| at > c.unix)
}

/// The certificate generations `rule` allows at `at`.
pub fn allows(settings: &Settings, rule: &RuleSettings, generation: Generation, at: i64) -> bool {
    match rule.generation {
        GenerationChoice::Oces2 => generation == Generation::Oces2,
        GenerationChoice::Oces3 => generation == Generation::Oces3,
        GenerationChoice::Any => !(after_cutoff(settings, at) && generation == Generation::Oces2),
    }
}

/// Whether a certificate with `info` would be wanted for `rule` (used to
/// decide whether an LDAP lookup is needed).
pub fn wanted(settings: &Settings, rule: &RuleSettings, info: &CertInfo, at: i64) -> bool {
    allows(settings, rule, info.generation, at) && info.can_encrypt()
}

fn day(i: Instant) -> String {
    chrono::DateTime::from_timestamp(i.unix, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| i.to_string())
}

fn label(e: &Entry) -> String {
    let i = &e.info;
    let until = chrono::DateTime::from_timestamp(i.not_after, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    format!(
        "\"{}\" ({}, {}, {}, not after {until})",
        i.subject_cn, i.generation, i.kind, e.source
    )
}

/// The organisation's keys as far as signing goes: the keyring and which
/// of its identities were found revoked (certificate fingerprints).
#[derive(Clone, Copy)]
pub struct Signers<'a> {
    pub keys: &'a Keyring,
    pub revoked: &'a HashSet<String>,
}

/// Decides for `rcpt` (mail from `origin`) at `at`, given its
/// certificates and whether looking them up failed for now.
pub fn decide(
    settings: &Settings,
    signers: Signers<'_>,
    origin: &Origin,
    rcpt: &str,
    candidates: &[Candidate],
    lookup_error: Option<&str>,
    at: i64,
) -> Decision {
    let Some(rule) = rule_for(settings, rcpt, at) else {
        return Decision {
            rule: None,
            outcome: Outcome::PassThrough("no rule matches".into()),
            considered: Vec::new(),
            signer: "nobody (no rule)".into(),
            unsigned: None,
        };
    };
    let cutoff_passed = after_cutoff(settings, at);
    let mut considered = Vec::new();
    let mut usable: Vec<&Candidate> = Vec::new();
    let mut temporary: Vec<String> = lookup_error
        .map(|e| vec![e.to_string()])
        .unwrap_or_default();
    for c in candidates {
        let gen_ok = allows(settings, rule, c.entry.info.generation, at);
        let line = match (&c.verdict, gen_ok) {
            (_, false) => {
                let why = match (rule.generation, cutoff_passed) {
                    (GenerationChoice::Any, true) => format!(
                        "generation OCES2 is not used after the cutoff {}",
                        settings.policy.oces2_cutoff.map(day).unwrap_or_default()
                    ),
                    (g, _) => format!("rule {:?} allows {:?} only", rule.name, g),
                };
                format!("refused: {why}")
            }
            (Verdict::Usable(note), true) => {
                usable.push(c);
                format!("usable: {note}")
            }
            (Verdict::Refused(why), true) => format!("refused: {why}"),
            (Verdict::Unknown(why), true) => {
                temporary.push(why.clone());
                format!("unknown for now: {why}")
            }
        };
        considered.push(format!("{} {line}", label(&c.entry)));
    }
    // "any" before the cutoff prefers OCES3 where the recipient has both.
    if rule.generation == GenerationChoice::Any
        && usable
            .iter()
            .any(|c| c.entry.info.generation == Generation::Oces3)
    {
        let before = usable.len();
        usable.retain(|c| c.entry.info.generation != Generation::Oces2);
        if usable.len() < before {
            considered
                .push("OCES2 certificates set aside: the recipient has a usable OCES3 one".into());
        }
    }

    let encrypting = rule.encrypt != EncryptMode::Never && !usable.is_empty();
    let prefer = if encrypting
        && usable
            .iter()
            .all(|c| c.entry.info.generation == Generation::Oces2)
    {
        Generation::Oces2
    } else {
        Generation::Oces3
    };
    let (sign_with, signer, unsigned) = if !rule.sign.wanted() {
        (
            None,
            format!("nobody (rule {:?} does not sign)", rule.name),
            None,
        )
    } else {
        match signing::signable_address(settings, origin) {
            Err(why) => (None, format!("nobody: {why}"), Some(why)),
            Ok(address) => {
                let (pick, who) = signing_identity(signers, &address, at, cutoff_passed, prefer);
                let unsigned = pick.is_none().then(|| who.clone());
                (pick, who, unsigned)
            }
        }
    };
    // AES-256-GCM with RSA-OAEP where the rule asks, or where every
    // recipient certificate's holder announced it reads them.
    let encryption = rule.encryption.unwrap_or(
        if !usable.is_empty() && usable.iter().all(|c| c.entry.announces_gcm_oaep()) {
            Encryption::Aes256GcmOaep
        } else {
            Encryption::Aes256Cbc
        },
    );

    let outcome = if let (Sign::Required, Some(why)) = (rule.sign, &unsigned) {
        Outcome::Bounce(format!(
            "rule \"{}\" requires a signature and this message may not be signed: {why}",
            rule.name
        ))
    } else if rule.encrypt == EncryptMode::Never {
        Outcome::Send {
            encrypt_to: Vec::new(),
            sign_with,
            encryption,
        }
    } else if encrypting {
        let mut to: Vec<X509> = usable.iter().map(|c| c.entry.cert.clone()).collect();
        if settings.policy.encrypt_to_self {
            if let Some(own) = own_oces3(signers.keys, at) {
                to.push(own.clone());
            }
        }
        Outcome::Send {
            encrypt_to: to,
            sign_with,
            encryption,
        }
    } else if !temporary.is_empty() {
        Outcome::Defer(temporary.join("; "))
    } else {
        let generation = match rule.generation {
            GenerationChoice::Oces2 => "OCES2 ",
            GenerationChoice::Oces3 => "OCES3 ",
            GenerationChoice::Any if cutoff_passed => "OCES3 ",
            GenerationChoice::Any => "",
        };
        let since = match (rule.from, cutoff_passed, settings.policy.oces2_cutoff) {
            (Some(f), _, _) => format!(" after {}", day(f)),
            (None, true, Some(c)) => format!(" after {}", day(c)),
            _ => String::new(),
        };
        let why = format!(
            "rule \"{}\": no valid {generation}certificate for {rcpt}{since}",
            rule.name
        );
        match rule.on_missing_certificate {
            OnMissing::Bounce => Outcome::Bounce(why),
            OnMissing::Hold => Outcome::Hold(why),
            OnMissing::SendPlain => Outcome::Send {
                encrypt_to: Vec::new(),
                sign_with,
                encryption,
            },
        }
    };
    if let Some(e) = lookup_error {
        considered.push(format!("lookup failed: {e}"));
    }
    Decision {
        rule: Some(rule.name.clone()),
        outcome,
        considered,
        signer,
        unsigned,
    }
}

/// The organisation's own current OCES3 certificate (encrypt_to_self).
fn own_oces3(keys: &Keyring, at: i64) -> Option<&X509> {
    keys.identities
        .iter()
        .filter(|i| i.is_organisation_wide())
        .filter(|i| {
            i.info.generation == Generation::Oces3 && i.info.valid_at(at) && i.info.can_encrypt()
        })
        .max_by_key(|i| i.info.not_after)
        .map(|i| &i.cert)
}

/// The identity that signs for `address` (an internal address the sender
/// may sign for): the organisation's (an organisation-wide identity)
/// first, then a personal one whose certificate names the address; valid
/// at `at` and not revoked; OCES3 after the cutoff, otherwise `prefer`
/// first.
fn signing_identity(
    signers: Signers<'_>,
    address: &str,
    at: i64,
    cutoff_passed: bool,
    prefer: Generation,
) -> (Option<usize>, String) {
    let keys = signers.keys;
    let ok = |i: usize, g: Option<Generation>| {
        let id = &keys.identities[i];
        id.info.valid_at(at)
            && id.info.can_sign()
            && !signers.revoked.contains(&id.fingerprint())
            && g.is_none_or(|g| id.info.generation == g)
            && !(cutoff_passed && id.info.generation != Generation::Oces3)
    };
    let wide = (0..keys.identities.len()).filter(|&i| keys.identities[i].is_organisation_wide());
    let own = (0..keys.identities.len()).filter(|&i| {
        !keys.identities[i].is_organisation_wide() && signing::covers(&keys.identities[i], address)
    });
    let order: Vec<usize> = wide.chain(own).collect();
    let pick = order
        .iter()
        .copied()
        .find(|&i| ok(i, Some(prefer)))
        .or_else(|| order.iter().copied().find(|&i| ok(i, None)));
    match pick {
        Some(i) => {
            let id = &keys.identities[i];
            (
                Some(i),
                format!("\"{}\" ({})", id.info.subject_cn, id.info.generation),
            )
        }
        None => (
            None,
            if cutoff_passed {
                format!("nobody: no valid OCES3 identity covers <{address}> (OCES2 is not used after the cutoff)")
            } else {
                format!("nobody: no valid identity covers <{address}>")
            },
        ),
    }
}

#[cfg(test)]
mod tests {
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
        let id = identity("Recipient", generation);
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
        test_settings(&format!(
            "[policy]\noces2_cutoff = \"{CUTOFF}\"\n\
             [[rule]]\nname = \"courts\"\nmatch = [\"*@domstol.dk\"]\ngeneration = \"{generation}\"\n\
             encrypt = \"required\"\nsign = true\non_missing_certificate = \"{missing}\"\n"
        ))
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
}

#[cfg(test)]
mod signing_tests {
    use super::*;
    use crate::config::load::test_settings;

    fn keyring() -> Keyring {
        let id = crate::pki::testkit::identity(1024, "Example Law ApS")
            .unwrap_or_else(|e| panic!("{e}"));
        Keyring {
            identities: vec![id],
            anchors: Vec::new(),
        }
    }

    fn rule(sign: &str) -> Settings {
        test_settings(&format!(
            "[[rule]]\nname = \"r\"\nmatch = [\"*\"]\nencrypt = \"never\"\nsign = {sign}\n"
        ))
    }

    fn origin(sender: &str, from: &str) -> Origin {
        Origin {
            envelope_sender: sender.into(),
            header_from: vec![from.into()],
            submission: false,
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
}

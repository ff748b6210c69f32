//! Mail its sender encrypted already, to an external recipient a rule
//! covers. The gateway can neither open it nor encrypt it again, but the
//! rule still says which of the recipient's certificates may be used: a
//! message sealed only to certificates the rule refuses (an OCES2
//! certificate after the cutoff, for a court that reads OCES3 only) is
//! bounced, as a message with no usable certificate is. The gateway does
//! not sign it either: a signature the sender made is inside. Pure: the
//! recipient's certificates with their verdicts, which of them the
//! message names, and the time come in; a decision with its reasons goes
//! out.

use super::{allows, generation_refused, label, rule_for, Decision, Outcome};
use crate::config::{EncryptMode, OnMissing, Settings};
use crate::pki::resolve::{Candidate, Verdict};

/// Why mail sealed by its sender leaves as it is, when nothing is known
/// against it.
pub const ALREADY: &str = "encrypted by the sender already";

/// Decides for `rcpt` at `at` given the recipient's `candidates` and,
/// for each, whether the message is encrypted to it (`named`, in the
/// same order). Only what the message names counts:
/// - it goes as it is when one of those certificates may be used;
/// - it waits when one may be used as soon as its revocation is known, or
///   when a lookup failed (LDAP may hold a named certificate that may be);
/// - when all it names are refused, it bounces under `bounce` and `hold`
///   alike (no certificate that appears later changes whom it is
///   encrypted to), and goes as it is under `send-plain`;
/// - naming none of the recipient's known certificates, it goes as it is:
///   nothing speaks against it.
pub fn decide_sealed(
    settings: &Settings,
    rcpt: &str,
    candidates: &[Candidate],
    named: &[bool],
    lookup_error: Option<&str>,
    at: i64,
) -> Decision {
    let decision = |rule: Option<&str>, outcome, considered| Decision {
        rule: rule.map(String::from),
        outcome,
        considered,
        signer: format!("nobody ({ALREADY})"),
        unsigned: None,
    };
    let rule = match rule_for(settings, rcpt, at) {
        // A rule that never encrypts takes no certificate to task.
        Some(rule) if rule.encrypt != EncryptMode::Never => rule,
        other => {
            let name = other.map(|r| r.name.as_str());
            return decision(name, Outcome::PassThrough(ALREADY.into()), Vec::new());
        }
    };
    let mut considered = Vec::new();
    let (mut taken, mut unknown, mut refused) = (None, Vec::new(), Vec::new());
    for (c, _) in candidates.iter().zip(named).filter(|(_, n)| **n) {
        let line = if !allows(settings, rule, c.entry.info.generation, at) {
            let why = generation_refused(settings, rule, at);
            refused.push(format!("{} ({why})", label(&c.entry)));
            format!("refused: {why}")
        } else {
            match &c.verdict {
                Verdict::Usable(note) => {
                    taken.get_or_insert_with(|| label(&c.entry));
                    format!("usable: {note}")
                }
                Verdict::Refused(why) => {
                    refused.push(format!("{} ({why})", label(&c.entry)));
                    format!("refused: {why}")
                }
                Verdict::Unknown(why) => {
                    unknown.push(why.clone());
                    format!("unknown for now: {why}")
                }
            }
        };
        considered.push(format!("{} named by the message: {line}", label(&c.entry)));
    }
    if let Some(e) = lookup_error {
        considered.push(format!("lookup failed: {e}"));
    }
    let outcome = if let Some(cert) = taken {
        Outcome::PassThrough(format!("{ALREADY}, to {cert}"))
    } else if !unknown.is_empty() || lookup_error.is_some() {
        Outcome::Defer(
            unknown
                .into_iter()
                .chain(lookup_error.map(String::from))
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else if refused.is_empty() {
        Outcome::PassThrough(format!(
            "{ALREADY}, to no certificate the gateway holds for {rcpt}"
        ))
    } else {
        let why = format!(
            "rule \"{}\": the sender encrypted the message to {}, which may not be used for {rcpt}; \
             send it unencrypted to have the gateway encrypt it to a certificate the rule allows",
            rule.name,
            refused.join(", ")
        );
        match rule.on_missing_certificate {
            OnMissing::Bounce | OnMissing::Hold => Outcome::Bounce(why),
            OnMissing::SendPlain => Outcome::PassThrough(format!("{ALREADY}; {why}")),
        }
    };
    decision(Some(&rule.name), outcome, considered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::test_settings;
    use crate::pki::oces::Generation;
    use crate::policy::tests::candidate_called as candidate;

    const CUTOFF: &str = "2026-06-30T00:00:00Z";
    const BEFORE: i64 = 1_780_000_000; // 2026-05-28
    const AFTER: i64 = 1_790_000_000; // 2026-09-21

    fn settings(generation: &str, missing: &str) -> Settings {
        let encrypt = match missing {
            "send-plain" => "if-possible",
            "-" => "never",
            _ => "required",
        };
        let missing = if missing == "-" {
            "send-plain"
        } else {
            missing
        };
        test_settings(&format!(
            "[policy]\noces2_cutoff = \"{CUTOFF}\"\n\
             [[rule]]\nname = \"courts\"\nmatch = [\"*@domstol.dk\"]\ngeneration = \"{generation}\"\n\
             encrypt = \"{encrypt}\"\nsign = true\non_missing_certificate = \"{missing}\"\n"
        ))
    }

    fn usable(cn: &str, generation: Generation) -> Candidate {
        candidate(cn, generation, Verdict::Usable("valid".into()))
    }

    fn court(generation: &str, missing: &str, c: &[Candidate], named: &[bool], at: i64) -> Outcome {
        decide_sealed(
            &settings(generation, missing),
            "post@domstol.dk",
            c,
            named,
            None,
            at,
        )
        .outcome
    }

    #[test]
    fn sealed_to_a_certificate_the_rule_allows_goes_as_it_is() {
        let c = [
            usable("Old", Generation::Oces2),
            usable("New", Generation::Oces3),
        ];
        for named in [[false, true], [true, true]] {
            match court("any", "bounce", &c, &named, AFTER) {
                Outcome::PassThrough(why) => assert!(why.contains("\"New\""), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        // Before the cutoff OCES2 may still be used.
        assert!(matches!(
            court("any", "bounce", &c, &[true, false], BEFORE),
            Outcome::PassThrough(_)
        ));
    }

    #[test]
    fn sealed_only_to_a_refused_generation_is_handled_as_a_missing_certificate() {
        let c = [
            usable("Old", Generation::Oces2),
            usable("New", Generation::Oces3),
        ];
        let named = [true, false];
        match court("any", "bounce", &c, &named, AFTER) {
            Outcome::Bounce(why) => {
                assert!(why.contains("rule \"courts\""), "{why}");
                assert!(why.contains("\"Old\" (OCES2"), "{why}");
                assert!(why.contains("after the cutoff 2026-06-30"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Holding would not help: no new certificate changes whom it is
        // encrypted to.
        assert!(matches!(
            court("oces3", "hold", &c, &named, BEFORE),
            Outcome::Bounce(_)
        ));
        match court("oces3", "send-plain", &c, &named, BEFORE) {
            Outcome::PassThrough(why) => assert!(why.contains("may not be used"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A rule that never encrypts does not look at the certificates.
        assert!(matches!(
            court("oces3", "-", &c, &named, BEFORE),
            Outcome::PassThrough(why) if why == ALREADY
        ));
    }

    #[test]
    fn sealed_to_a_revoked_certificate_bounces_and_an_unknown_revocation_waits() {
        let revoked = [candidate(
            "New",
            Generation::Oces3,
            Verdict::Refused("revoked".into()),
        )];
        assert!(matches!(
            court("oces3", "bounce", &revoked, &[true], AFTER),
            Outcome::Bounce(why) if why.contains("revoked")
        ));
        let unknown = [candidate(
            "New",
            Generation::Oces3,
            Verdict::Unknown("OCSP responder down".into()),
        )];
        assert!(matches!(
            court("oces3", "bounce", &unknown, &[true], AFTER),
            Outcome::Defer(why) if why.contains("OCSP")
        ));
    }

    #[test]
    fn a_failed_lookup_waits_unless_a_named_certificate_may_be_used() {
        let s = settings("oces3", "bounce");
        let c = [
            usable("Old", Generation::Oces2),
            usable("New", Generation::Oces3),
        ];
        let ask = |named: &[bool]| {
            decide_sealed(&s, "post@domstol.dk", &c, named, Some("LDAP down"), AFTER).outcome
        };
        // LDAP may hold a certificate the message names and the rule takes.
        assert!(matches!(ask(&[false, false]), Outcome::Defer(why) if why.contains("LDAP down")));
        assert!(matches!(ask(&[true, false]), Outcome::Defer(_)));
        assert!(matches!(ask(&[false, true]), Outcome::PassThrough(_)));
    }

    #[test]
    fn sealed_to_certificates_the_gateway_does_not_hold_goes_as_it_is() {
        let c = [usable("Old", Generation::Oces2)];
        for (candidates, named) in [(&c[..], &[false][..]), (&[][..], &[][..])] {
            match court("oces3", "bounce", candidates, named, AFTER) {
                Outcome::PassThrough(why) => {
                    assert!(why.contains("no certificate the gateway holds"), "{why}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn without_a_rule_sealed_mail_goes_as_it_is() {
        let s = settings("oces3", "bounce");
        let old = [usable("Old", Generation::Oces2)];
        let d = decide_sealed(&s, "someone@example.org", &old, &[true], None, AFTER);
        assert!(d.rule.is_none());
        assert!(matches!(d.outcome, Outcome::PassThrough(ref w) if w == ALREADY));
    }
}

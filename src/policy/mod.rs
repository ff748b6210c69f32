//! Outbound rules: for one recipient at one instant, which rule applies,
//! which of the recipient's certificates may be used (generation, cutoff,
//! validity, revocation), which identity signs, and what happens: send
//! encrypted or plain, bounce, hold, or defer. Pure: certificates with
//! their verdicts, the keys and the time come in; a decision with the
//! reasons for it goes out.

pub mod sealed;
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
    // A rule on an address holds for its extensions (`post+sag@` reaches
    // `post@` at a server that splits them).
    let base = settings.base_address(rcpt);
    settings.rules.iter().find(|r| {
        (r.matches(rcpt) || base.as_deref().is_some_and(|b| r.matches(b))) && r.applies_at(at)
    })
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

/// Why `rule` refuses a certificate of the wrong generation at `at`.
fn generation_refused(settings: &Settings, rule: &RuleSettings, at: i64) -> String {
    match (rule.generation, after_cutoff(settings, at)) {
        (GenerationChoice::Any, true) => format!(
            "generation OCES2 is not used after the cutoff {}",
            settings.policy.oces2_cutoff.map(day).unwrap_or_default()
        ),
        (g, _) => format!("rule {:?} allows {:?} only", rule.name, g),
    }
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
            (_, false) => format!("refused: {}", generation_refused(settings, rule, at)),
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
mod signing_tests;
#[cfg(test)]
mod tests;

//! Cutoff readiness of one counterparty: what happens to plain mail for
//! an address today and at a date D, both through the same
//! `pipeline::decide::decide` the daemon uses (certificate validity and
//! chain checked as of each time, revocation as of now: the resolver's
//! rule), why the two differ, and which certificates the counterparty can
//! receive with at D (`oces3`, `oces2-only`, `none`).
//!
//! `cutoff report`, the status page and the readiness metrics ask here;
//! the queue uses [`seen`] to name what it decided for the journal, so a
//! report and the record speak the same words.

use std::collections::HashSet;
use std::fmt;

use crate::pipeline::decide::{self, Treatment};
use crate::pki::oces::Generation;
use crate::pki::resolve::{Candidate, Verdict};
use crate::pki::validate::day;
use crate::pki::Keyring;
use crate::policy::{self, Decision};
use crate::snapshot::{Live, Snapshot};

/// What happens to mail for a recipient, in a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Encrypted to the recipient's certificate(s) of this generation.
    Encrypted(Generation),
    /// Sent unencrypted by a rule (`encrypt = "never"`, or
    /// `on_missing_certificate = "send-plain"`).
    Plain,
    /// No rule applies (or the sender encrypted it already): it leaves as
    /// it came.
    Unchanged,
    Bounce,
    Hold,
    /// Temporary: a directory or revocation source did not answer.
    Defer,
    /// An internal mailbox: not a counterparty.
    Mailbox,
}

impl Outcome {
    /// The word used in reports, the journal and metrics labels.
    pub fn token(self) -> &'static str {
        match self {
            Outcome::Encrypted(Generation::Oces3) => "encrypted-oces3",
            Outcome::Encrypted(Generation::Oces2) => "encrypted-oces2",
            Outcome::Encrypted(Generation::Other) => "encrypted-other",
            Outcome::Plain => "plain",
            Outcome::Unchanged => "unchanged",
            Outcome::Bounce => "bounce",
            Outcome::Hold => "hold",
            Outcome::Defer => "defer",
            Outcome::Mailbox => "mailbox",
        }
    }

    /// The outcome a token names (the journal's column).
    pub fn from_token(token: &str) -> Option<Self> {
        Some(match token {
            "encrypted-oces3" => Outcome::Encrypted(Generation::Oces3),
            "encrypted-oces2" => Outcome::Encrypted(Generation::Oces2),
            "encrypted-other" => Outcome::Encrypted(Generation::Other),
            "plain" => Outcome::Plain,
            "unchanged" => Outcome::Unchanged,
            "bounce" => Outcome::Bounce,
            "hold" => Outcome::Hold,
            "defer" => Outcome::Defer,
            "mailbox" => Outcome::Mailbox,
            _ => return None,
        })
    }

    pub fn is_encrypted(self) -> bool {
        matches!(self, Outcome::Encrypted(_))
    }

    /// Mail leaves without encryption.
    pub fn is_plain(self) -> bool {
        matches!(self, Outcome::Plain | Outcome::Unchanged)
    }

    /// Mail that was encrypted would be bounced, held or sent plain.
    pub fn breaks_encrypted_mail(self) -> bool {
        matches!(self, Outcome::Bounce | Outcome::Hold) || self.is_plain()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// Whether a counterparty can receive encrypted mail at a date, by the
/// certificates usable then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Readiness {
    /// A usable OCES3 certificate.
    Oces3,
    /// Usable OCES2 certificates only.
    Oces2Only,
    /// No usable certificate of either generation.
    None,
}

impl Readiness {
    pub fn token(self) -> &'static str {
        match self {
            Readiness::Oces3 => "oces3",
            Readiness::Oces2Only => "oces2-only",
            Readiness::None => "none",
        }
    }

    pub const ALL: [Readiness; 3] = [Readiness::Oces3, Readiness::Oces2Only, Readiness::None];
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// One decision, named: the outcome, the rule, the recipient's
/// certificates it encrypts to, and the decision's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub outcome: Outcome,
    pub rule: Option<String>,
    /// SHA-256 fingerprints of the recipient's certificates encrypted to
    /// (the organisation's own certificate left out).
    pub certificates: Vec<String>,
    /// The decision's summary or reason, for people.
    pub detail: String,
}

/// Names what `decide` chose for one recipient. `keys` tells the
/// organisation's own certificates (encrypt-to-self) from the
/// recipient's.
pub fn seen(treatment: &Treatment, keys: &Keyring) -> Seen {
    match treatment {
        Treatment::Mailbox { .. } => Seen {
            outcome: Outcome::Mailbox,
            rule: None,
            certificates: Vec::new(),
            detail: "internal mailbox".into(),
        },
        Treatment::Unchanged(why) => Seen {
            outcome: Outcome::Unchanged,
            rule: None,
            certificates: Vec::new(),
            detail: (*why).to_string(),
        },
        Treatment::Outbound(d) => seen_decision(d, keys),
    }
}

fn seen_decision(d: &Decision, keys: &Keyring) -> Seen {
    let own: HashSet<String> = keys.identities.iter().map(|i| i.fingerprint()).collect();
    let mut certificates = Vec::new();
    let outcome = match &d.outcome {
        policy::Outcome::PassThrough(_) => Outcome::Unchanged,
        policy::Outcome::Send { encrypt_to, .. } => {
            let mut generation = None;
            for cert in encrypt_to {
                let fp = crate::pki::facts::fingerprint(cert);
                if own.contains(&fp) {
                    continue;
                }
                let g = crate::pki::facts::generation(cert);
                // OCES3 wins where a copy goes to both generations.
                generation = Some(match generation {
                    Some(Generation::Oces3) => Generation::Oces3,
                    Some(_) if g == Generation::Oces3 => g,
                    Some(prev) => prev,
                    None => g,
                });
                certificates.push(fp);
            }
            match generation {
                Some(g) => Outcome::Encrypted(g),
                None => Outcome::Plain,
            }
        }
        policy::Outcome::Bounce(_) => Outcome::Bounce,
        policy::Outcome::Hold(_) => Outcome::Hold,
        policy::Outcome::Defer(_) => Outcome::Defer,
    };
    let detail = match &d.outcome {
        policy::Outcome::Bounce(why) | policy::Outcome::Hold(why) | policy::Outcome::Defer(why) => {
            why.clone()
        }
        _ => d.summary(),
    };
    Seen {
        outcome,
        rule: d.rule.clone(),
        certificates,
        detail,
    }
}

/// What the cutoff report says about one counterparty.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub address: String,
    /// Plain mail to it now.
    pub today: Seen,
    /// Plain mail to it at the date asked.
    pub at_date: Seen,
    /// Why the two differ (`None` when they do not).
    pub reason: Option<String>,
    /// Its certificates at the date.
    pub readiness: Readiness,
    /// Encrypted today, plain at the date: worse than a bounce.
    pub turns_plain: bool,
    /// The rule in force at the date.
    pub rule: Option<String>,
}

impl Assessment {
    /// Today's and the date's outcome differ (or the certificates used).
    pub fn changes(&self) -> bool {
        self.today.outcome != self.at_date.outcome
            || self.today.certificates != self.at_date.certificates
    }

    /// An address that gets encrypted mail would be bounced, held or sent
    /// plain at the date.
    pub fn at_risk(&self, received_encrypted: bool) -> bool {
        received_encrypted && self.at_date.outcome.breaks_encrypted_mail()
    }
}

/// Whom the report pretends the mail is from: an address of the first
/// internal domain, submitted as the organisation's own mail would be, so
/// a rule that requires a signature is judged by the certificates, not by
/// a sender that may not sign.
fn sender(snapshot: &Snapshot) -> String {
    let domain = snapshot
        .settings
        .server
        .internal_domains
        .first()
        .cloned()
        .unwrap_or_default();
    format!("postmaster@{domain}")
}

/// Assesses `address` now (`now`) and at `at` (Unix seconds) with the
/// configuration in `snapshot` (the live one, or a proposed one) and the
/// lookup caches of `live`.
pub async fn assess(
    snapshot: &Snapshot,
    live: &Live,
    address: &str,
    now: i64,
    at: i64,
) -> Assessment {
    let revoked = live.revoked.current();
    let origin = decide::as_submitted(&sender(snapshot));
    let today = decide::decide(snapshot, live, &revoked, &origin, address, None, now).await;
    let later = decide::decide(snapshot, live, &revoked, &origin, address, None, at).await;
    let today = seen(&today, &snapshot.keys);
    let at_date = seen(&later, &snapshot.keys);
    let settings = &snapshot.settings;
    let (candidates, _) = live
        .resolver
        .candidates(
            &snapshot.keys,
            &snapshot.certs,
            &snapshot.checked,
            settings,
            address,
            at,
            |e| e.info.generation == Generation::Oces3 && e.info.can_encrypt(),
        )
        .await;
    let readiness = readiness_of(&candidates);
    let differs = today.outcome != at_date.outcome || today.certificates != at_date.certificates;
    let reason = differs.then(|| reason(&candidates, &at_date, at));
    let turns_plain = today.outcome.is_encrypted() && at_date.outcome.is_plain();
    let rule = at_date.rule.clone();
    Assessment {
        address: address.to_string(),
        today,
        at_date,
        reason,
        readiness,
        turns_plain,
        rule,
    }
}

fn usable(c: &Candidate, generation: Generation) -> bool {
    c.entry.info.generation == generation && matches!(c.verdict, Verdict::Usable(_))
}

/// The readiness class of certificates checked at a date.
pub fn readiness_of(candidates: &[Candidate]) -> Readiness {
    if candidates.iter().any(|c| usable(c, Generation::Oces3)) {
        Readiness::Oces3
    } else if candidates.iter().any(|c| usable(c, Generation::Oces2)) {
        Readiness::Oces2Only
    } else {
        Readiness::None
    }
}

/// Why the outcome at `at` differs from today's, from the certificates
/// as they stand at `at`.
fn reason(candidates: &[Candidate], at_date: &Seen, at: i64) -> String {
    if candidates.is_empty() {
        return "no certificate".into();
    }
    if candidates.iter().any(|c| usable(c, Generation::Oces3)) {
        return at_date.detail.clone();
    }
    // The OCES3 certificate that lasts longest says why it will not do.
    let unusable = |g: Generation| {
        candidates
            .iter()
            .filter(|c| c.entry.info.generation == g)
            .max_by_key(|c| c.entry.info.not_after)
    };
    let why = |c: &Candidate, g: Generation| {
        if c.entry.info.not_after < at {
            format!("{g} certificate expires {}", day(c.entry.info.not_after))
        } else {
            match &c.verdict {
                Verdict::Refused(w) | Verdict::Unknown(w) => format!("{g} certificate: {w}"),
                Verdict::Usable(_) => format!("{g} certificate"),
            }
        }
    };
    if let Some(c) = unusable(Generation::Oces3) {
        return why(c, Generation::Oces3);
    }
    if candidates.iter().any(|c| usable(c, Generation::Oces2)) {
        return "only OCES2 certificate".into();
    }
    if let Some(c) = unusable(Generation::Oces2) {
        return why(c, Generation::Oces2);
    }
    at_date.detail.clone()
}

#[cfg(test)]
mod tests;

//! Who signed incoming mail, as far as the mailbox should be told: how a
//! signer's certificate relates to the header `From:` (the same address,
//! the same domain, an organisation certificate the operator tied to that
//! domain, or someone else), the certificates a signature may name
//! without carrying them, and whether a signer's certificate is revoked
//! (CRL and OCSP as for recipients, per `[trust] revocation`, cached).
//! A revocation source that does not answer gives "unknown"; it never
//! defers inbound mail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::x509::X509;

use super::crl_history::CrlHistory;
use super::directory::{fingerprint, Directory};
use super::oces::{self, CertInfo, Kind};
use super::revocation::{Checker, Status};
use super::Keyring;
use crate::config::{Revocation, Settings};

/// How the signer's certificate relates to the header From.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// An address in the certificate is the From address.
    Exact,
    /// An address in the certificate is in From's domain.
    SameDomain,
    /// An organisation certificate of the organisation the operator tied
    /// to From's domain (one certificate signing for many staff).
    Organisation,
    /// None of these: someone else signed.
    Differs,
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Relation::Exact => "exact",
            Relation::SameDomain => "same-domain",
            Relation::Organisation => "organisation",
            Relation::Differs => "differs",
        })
    }
}

/// Organisations tied to From domains: `[[trust.organisation]]`, and the
/// organisation's own identities (their CVR numbers) tied to the
/// internal domains.
#[derive(Debug, Clone, Default)]
pub struct Ties {
    /// (CVR number or none, domains in lower case).
    list: Vec<(Option<String>, Vec<String>)>,
}

impl Ties {
    pub fn new(settings: &Settings, keys: &Keyring) -> Self {
        let mut list: Vec<(Option<String>, Vec<String>)> = settings
            .trust
            .organisations
            .iter()
            .map(|t| {
                (
                    t.cvr.clone(),
                    t.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                )
            })
            .collect();
        let internal: Vec<String> = settings
            .server
            .internal_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        let mut own: Vec<String> = keys
            .identities
            .iter()
            .filter_map(|i| i.info.cvr.clone())
            .collect();
        own.sort();
        own.dedup();
        for cvr in own {
            list.push((Some(cvr), internal.clone()));
        }
        Self { list }
    }
}

fn domain(addr: &str) -> Option<&str> {
    addr.rsplit_once('@').map(|(_, d)| d)
}

/// How the certificate `cert` relates to the header From address `from`.
pub fn relation(cert: &X509, from: Option<&str>, ties: &Ties) -> Relation {
    match cert.to_der().map(|d| oces::classify(&d)) {
        Ok(Ok(info)) => relation_of(&info, from, ties),
        _ => Relation::Differs,
    }
}

/// How a certificate saying `info` relates to the From address `from`.
pub fn relation_of(info: &CertInfo, from: Option<&str>, ties: &Ties) -> Relation {
    let Some(from) = from else {
        return Relation::Differs;
    };
    let from = crate::mail::address::key(from);
    let Some(from_domain) = domain(&from) else {
        return Relation::Differs;
    };
    let emails: Vec<String> = info
        .emails
        .iter()
        .map(|e| crate::mail::address::key(e))
        .collect();
    if emails.contains(&from) {
        return Relation::Exact;
    }
    if emails.iter().any(|e| domain(e) == Some(from_domain)) {
        return Relation::SameDomain;
    }
    let organisational = matches!(
        info.kind,
        Kind::Company | Kind::Function | Kind::Organisation | Kind::System
    );
    if organisational {
        for (cvr, domains) in &ties.list {
            if !domains.iter().any(|d| d == from_domain) {
                continue;
            }
            let by_cvr = cvr.is_some() && *cvr == info.cvr;
            let by_domain = emails
                .iter()
                .filter_map(|e| domain(e))
                .any(|d| domains.iter().any(|x| x == d));
            if by_cvr || by_domain {
                return Relation::Organisation;
            }
        }
    }
    Relation::Differs
}

/// The certificates a signature may name without carrying them: the
/// organisation's identities and their chains, the trust anchors, the
/// directory and the harvested certificates.
pub fn known_certificates(keys: &Keyring, directory: &Directory) -> Vec<X509> {
    let mut out = Vec::new();
    for id in &keys.identities {
        out.push(id.cert.clone());
        out.extend(id.chain.iter().cloned());
    }
    out.extend(keys.anchors.iter().cloned());
    out.extend(directory.all().into_iter().map(|e| e.cert));
    out.extend(directory.authorities());
    out
}

/// What is known of a signer certificate's revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerRevocation {
    /// `[trust] revocation = "off"`.
    NotChecked,
    /// A source answered and did not list it.
    Good,
    /// The certificate names no CRL and no OCSP responder.
    NoSource,
    /// No source answered (why).
    Unknown(String),
    Revoked(String),
}

impl SignerRevocation {
    /// The token in the trace header.
    pub fn token(&self) -> &'static str {
        match self {
            SignerRevocation::NotChecked => "not-checked",
            SignerRevocation::Good => "good",
            SignerRevocation::NoSource => "no-source",
            SignerRevocation::Unknown(_) => "unknown",
            SignerRevocation::Revoked(_) => "revoked",
        }
    }
}

/// How long an answer is kept (seconds): a definite one for an hour, "no
/// source answered" for five minutes so a dead source is not asked for
/// every message.
const KEEP_ANSWER: i64 = 3600;
const KEEP_UNKNOWN: i64 = 300;

/// One kept answer: what, until when, and the revocation data's
/// generation it was formed with.
type KeptAnswer = (SignerRevocation, i64, u64);

/// Under what an answer is kept: the signer's fingerprint and those of the
/// verified chain above it (the same signer under another chain, by a
/// cross-certificate, is asked again).
pub fn answer_key(cert: &X509, issuers: &[X509]) -> String {
    let mut key = fingerprint(cert);
    for c in issuers {
        key.push('/');
        key.push_str(&fingerprint(c));
    }
    key
}

/// Whether a kept answer still holds at `now` with revocation data of
/// `generation`: not expired, and no CRL fetched since it was formed.
fn holds(kept: &KeptAnswer, now: i64, generation: u64) -> bool {
    kept.1 > now && kept.2 == generation
}

/// Revocation answers for signer certificates, by fingerprint and the
/// revocation data's generation, shared by every delivery: an answer
/// holds until it expires, a CRL is fetched anew (the signer is then
/// asked about again, from the fresh data) or the configuration is
/// reloaded.
#[derive(Debug, Default)]
pub struct SignerChecks {
    answers: Mutex<HashMap<String, KeptAnswer>>,
    checker: Arc<Checker>,
}

impl SignerChecks {
    /// Answers formed with CRLs checked against `history` (the newest
    /// seen from each point).
    pub fn with_history(history: Arc<CrlHistory>) -> Self {
        Self {
            checker: Arc::new(Checker::with_history(history)),
            ..Self::default()
        }
    }

    /// The answers still fresh at `now`.
    pub fn known(&self, now: i64) -> HashMap<String, SignerRevocation> {
        let generation = self.checker.generation();
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, kept)| holds(kept, now, generation))
            .map(|(k, (v, _, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// The revocation data the answers are formed with (signer chains
    /// kept elsewhere follow its generation).
    pub fn checker(&self) -> Arc<Checker> {
        Arc::clone(&self.checker)
    }

    /// Forgets every answer and every kept CRL (a reload: other anchors,
    /// other settings, or an operator who knows of a revocation the kept
    /// CRLs do not show yet).
    pub fn clear(&self) {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.checker.forget();
    }

    /// Asks the sources named in `cert` and the CA certificates above it
    /// (`issuers`, nearest first). Blocking (HTTP, each request bounded by
    /// `timeout`).
    pub fn check(
        &self,
        cert: &X509,
        issuers: &[X509],
        anchors: &[X509],
        mode: Revocation,
        timeout: Duration,
        now: i64,
    ) -> SignerRevocation {
        let answer = if mode == Revocation::Off {
            SignerRevocation::NotChecked
        } else {
            match self.checker.check(cert, issuers, anchors, now, timeout) {
                Status::Good(_) => SignerRevocation::Good,
                Status::Revoked(why) => SignerRevocation::Revoked(why),
                Status::Unknown(why) => SignerRevocation::Unknown(why),
                Status::NoSources => SignerRevocation::NoSource,
            }
        };
        let keep = match answer {
            SignerRevocation::Unknown(_) => KEEP_UNKNOWN,
            _ => KEEP_ANSWER,
        };
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            // The generation after asking: the answer was formed with the
            // CRLs this check fetched.
            .insert(
                answer_key(cert, issuers),
                (answer.clone(), now + keep, self.checker.generation()),
            );
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::test_settings;
    use crate::pki::oces::Generation;

    fn info(kind: Kind, cvr: &str, email: &str) -> CertInfo {
        CertInfo {
            subject: String::new(),
            subject_cn: "x".into(),
            issuer: String::new(),
            serial_hex: "01".into(),
            generation: Generation::Oces3,
            kind,
            cvr: Some(cvr.into()),
            emails: vec![email.into()],
            not_before: 0,
            not_after: i64::MAX,
            policies: Vec::new(),
            key_encipherment: None,
            digital_signature: None,
            email_protection: None,
        }
    }

    #[test]
    fn relations_to_from() {
        let s = test_settings(
            "[[trust.organisation]]\ncvr = \"87654321\"\ndomains = [\"domstol.dk\", \"courts.example\"]\n",
        );
        let ties = Ties::new(&s, &Keyring::default());
        let court = info(Kind::Organisation, "87654321", "post@domstol.dk");
        let alice = info(Kind::User, "87654321", "alice@example-law.dk");
        let r = |i: &CertInfo, from: &str| relation_of(i, Some(from), &ties);
        assert_eq!(r(&court, "Post@Domstol.dk"), Relation::Exact);
        assert_eq!(r(&court, "judge@domstol.dk"), Relation::SameDomain);
        assert_eq!(r(&court, "clerk@courts.example"), Relation::Organisation);
        assert_eq!(r(&court, "ceo@example-law.dk"), Relation::Differs);
        // A person's certificate is never an organisation's.
        assert_eq!(r(&alice, "x@courts.example"), Relation::Differs);
        assert_eq!(relation_of(&alice, None, &ties), Relation::Differs);
        // Tied by CVR alone (an OCES3 organisation certificate without an
        // address in that domain).
        let other = info(Kind::Organisation, "87654321", "it@court-it.example");
        assert_eq!(r(&other, "clerk@domstol.dk"), Relation::Organisation);
        let stranger = info(Kind::Organisation, "99999999", "it@court-it.example");
        assert_eq!(r(&stranger, "clerk@domstol.dk"), Relation::Differs);
    }

    #[test]
    fn a_kept_answer_holds_until_it_expires_or_the_revocation_data_moves() {
        let kept: KeptAnswer = (SignerRevocation::Good, 1000, 3);
        assert!(holds(&kept, 999, 3));
        assert!(!holds(&kept, 1000, 3), "expired");
        assert!(!holds(&kept, 999, 4), "a CRL fetched since");
        let checks = SignerChecks::default();
        checks
            .answers
            .lock()
            .unwrap()
            .insert("aa".into(), (SignerRevocation::Good, 1000, 0));
        assert_eq!(checks.known(999).len(), 1);
        checks.clear();
        assert!(checks.known(999).is_empty(), "a reload forgets");
    }

    #[test]
    fn organisation_ties_are_checked() {
        let base = "[server]\nhostname = \"gw\"\nlisten = [\"127.0.0.1:2525\"]\n\
                    [relay]\ninternal = \"127.0.0.1:25\"\nexternal = \"127.0.0.1:26\"\n\
                    [spool]\ndir = \"/nonexistent\"\n";
        let bad = format!(
            "{base}[[trust.organisation]]\ncvr = \"12AB\"\ndomains = []\n\
             [[trust.organisation]]\ndomains = [\"not a domain\"]\n"
        );
        let e = crate::config::load::from_toml(&bad)
            .unwrap_err()
            .to_string();
        for key in [
            "trust.organisation[0].cvr",
            "trust.organisation[0].domains",
            "trust.organisation[1].domains",
        ] {
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn an_answer_is_kept_for_the_signer_under_its_own_chain() {
        let a = crate::pki::testkit::identity(1024, "A").unwrap();
        let b = crate::pki::testkit::identity(1024, "B").unwrap();
        let c = crate::pki::testkit::identity(1024, "C").unwrap();
        let one = answer_key(&a.cert, std::slice::from_ref(&b.cert));
        assert_eq!(one, answer_key(&a.cert, std::slice::from_ref(&b.cert)));
        assert_ne!(one, answer_key(&a.cert, std::slice::from_ref(&c.cert)));
        assert_ne!(one, answer_key(&a.cert, &[]));
    }
}

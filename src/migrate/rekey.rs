//! One stored message through the inbound path: opened exactly as mail
//! for the mailbox is opened (`pipeline::unwrap`, signatures verified as
//! of the message's arrival, signers' revocation asked and signers nobody
//! holds looked up in LDAP as the queue does), decided by [`super::plan`], and when it is
//! to be re-keyed, re-encrypted by the inbound path's own
//! [`pipeline::unwrap::reencrypt`] to the mailbox's current certificate
//! with a trace header that names the original (its SHA-256, the marker
//! a re-run looks for) and the time. The new copy is opened again with
//! the new key and its content compared with the original's plaintext
//! before anyone may write it.

use std::collections::HashMap;

use openssl::cms::CmsContentInfo;
use openssl::x509::X509;

use super::plan::{self, Before, Chosen, Decision, KeyFacts, Leave, Trace};
use super::source::{trace_value, Entry};
use crate::config::{Deliver, Encryption};
use crate::mail::lines;
use crate::pipeline::{self, unwrap, Action};
use crate::pki::directory::fingerprint;
use crate::pki::Identity;
use crate::smime::mime::{self, Shape};
use crate::smime::{cms, scan, unwrap as smime_unwrap};
use crate::snapshot::{Live, Snapshot};
use crate::spool::Envelope;

pub use super::plan::MARKER_FIELD;

/// The marker of an original: the SHA-256 of its bytes with CRLF line
/// ends (the same whether it is stored with LF or CRLF).
pub fn marker(raw: &[u8]) -> String {
    format!(
        "{MARKER_FIELD}{}",
        crate::ossl::sha256_hex(&lines::crlf(raw))
    )
}

/// What was prepared for one message.
#[derive(Debug)]
pub struct Prepared {
    pub decision: Decision,
    /// `original-sha256=…` of the original.
    pub marker: String,
    pub subject: String,
    /// The key that opened it (the outermost decryption), when one did.
    pub used: Option<KeyFacts>,
    /// The new copy (CRLF), checked, when the message is re-keyed.
    pub copy: Option<Vec<u8>>,
    /// The plaintext entity the copy must open to (to check a copy an
    /// earlier run wrote).
    pub plaintext: Option<Vec<u8>>,
}

/// The mailbox a folder's mail is re-keyed for.
pub struct Mailbox<'a> {
    pub address: String,
    pub target: Option<&'a Identity>,
    pub encryption: Encryption,
}

/// Everything one run shares between its workers.
pub struct Rekeyer<'a> {
    pub snapshot: &'a Snapshot,
    pub live: &'a Live,
    pub known: Vec<X509>,
    pub chosen: Chosen,
    /// Unix seconds: the key re-encrypted to is the one current now.
    pub now: i64,
    /// `[migrate] extra_recipients`: each address with the certificate
    /// every new copy is also encrypted to (checked by the caller).
    pub extra: Vec<(String, X509)>,
    /// What LDAP said of signers' addresses in this run.
    pub ldap: LdapAsked,
}

/// LDAP answers for signers nobody holds, kept for the run: one question
/// per From address, and none at all to a directory once it has failed
/// [`LDAP_GIVE_UP`] questions in a row (a directory that is gone, as the
/// OCES2 one will be, would otherwise cost its timeout per message); the
/// other directories are still asked.
#[derive(Default)]
pub struct LdapAsked(std::sync::Mutex<LdapMemo>);

#[derive(Default)]
struct LdapMemo {
    /// Address → what every directory asked held for it.
    answers: HashMap<String, Vec<X509>>,
    /// Directory URL → failed questions in a row.
    failed_in_a_row: HashMap<String, usize>,
    /// Directories not asked again in this run.
    given_up: std::collections::HashSet<String>,
}

/// Failed LDAP questions in a row after which a run stops asking that
/// directory.
pub const LDAP_GIVE_UP: usize = 3;

/// An address worth asking a directory about: at most 254 octets, one
/// `@` with something on both sides (a stored message's From can be
/// anything its sender wrote).
fn askable(address: &str) -> bool {
    address.len() <= 254
        && matches!(address.split_once('@'), Some((l, d)) if !l.is_empty() && !d.is_empty() && !d.contains('@'))
}

/// Why a message could not be re-keyed even though it was chosen.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("re-encryption failed: {0}")]
    Encrypt(String),
    #[error("the new copy does not check: {0}")]
    Check(String),
}

impl<'a> Rekeyer<'a> {
    /// The mailbox settings for `address`.
    pub fn mailbox(&self, address: &str) -> Mailbox<'a> {
        let keys: &'a crate::pki::Keyring = &self.snapshot.keys;
        let settings = &self.snapshot.settings;
        // The same identity, borrowed for the run rather than the address.
        let target = keys
            .current_oces3(address, self.now)
            .and_then(|t| keys.identities.iter().find(|x| std::ptr::eq(*x, t)));
        Mailbox {
            address: address.to_string(),
            target,
            encryption: settings
                .mailbox(address)
                .map(|m| m.encryption)
                .unwrap_or_default(),
        }
    }

    /// The facts the report shows of an identity.
    pub fn facts(id: &Identity) -> KeyFacts {
        KeyFacts {
            subject_cn: id.info.subject_cn.clone(),
            generation: id.info.generation,
            not_after: id.info.not_after,
            fingerprint: fingerprint(&id.cert),
        }
    }

    /// Decides `raw` (as stored) for `mailbox` and, when it is re-keyed,
    /// makes and checks the new copy.
    pub fn prepare(
        &self,
        raw: &[u8],
        entry: &Entry,
        mailbox: &Mailbox<'_>,
    ) -> Result<Prepared, RekeyError> {
        let message = lines::crlf(raw).into_owned();
        let marker = marker(&message);
        let subject = crate::mail::headers::subject(&message);
        let mut prepared = Prepared {
            decision: Decision::Leave(Leave::Plain),
            marker,
            subject,
            used: None,
            copy: None,
            plaintext: None,
        };
        // One reading of the structure for the decision to open, the
        // opening and the questions about its outer encryption.
        let (seen, shape) = scan::scan_and_shape(&message);
        let before = Before {
            is_message: mime::looks_like_headers(&message),
            marked: trace_value(&message).is_some_and(|v| plan::marker_of(&v).is_some()),
            encrypted: seen.encrypted,
        };
        if let Some(d) = plan::before_opening(before) {
            prepared.decision = d;
            return Ok(prepared);
        }
        let shape = std::sync::Arc::new(shape);
        // Which of the mailbox's keys (and whether its current one) the
        // outer encryption names; the parsed CMS is let go before opening.
        let named: Vec<&Identity> = match outer_cms(&shape) {
            Some(c) => self
                .snapshot
                .keys
                .candidates(&mailbox.address)
                .chain(mailbox.target)
                .filter(|id| crate::ossl::is_recipient(&c, &id.cert))
                .collect(),
            None => Vec::new(),
        };
        let opened = match self.open(&message, shape, entry, mailbox) {
            Opened::Left(leave) => {
                prepared.decision = Decision::Leave(leave);
                return Ok(prepared);
            }
            Opened::Plain(p) => p,
        };
        let trace = trace_value(&opened)
            .map(|v| Trace::parse(&v))
            .unwrap_or_default();
        let used = self.used_key(&named, &trace, mailbox);
        let target = mailbox.target.map(Self::facts);
        prepared.decision =
            plan::after_opening(&trace, used.as_ref(), target.as_ref(), &self.chosen);
        prepared.used = used;
        // Encrypted to the current certificate as well as an old one.
        if let (Decision::Migrate { .. }, Some(t)) = (&prepared.decision, mailbox.target) {
            if named.iter().any(|id| std::ptr::eq(*id, t)) {
                prepared.decision = Decision::Leave(Leave::Current);
            }
        }
        let (Decision::Migrate { .. }, Some(target)) = (&prepared.decision, mailbox.target) else {
            return Ok(prepared);
        };
        let mut value = format!(
            "{}; {}; migrated-at={}",
            trace_value(&opened).unwrap_or_else(|| "decrypted".into()),
            prepared.marker,
            rfc3339(self.now)
        );
        if !self.extra.is_empty() {
            let who: Vec<&str> = self.extra.iter().map(|(a, _)| a.as_str()).collect();
            value.push_str(&format!("; also-encrypted-to={}", who.join(",")));
        }
        let extra: Vec<X509> = self.extra.iter().map(|(_, c)| c.clone()).collect();
        let copy = unwrap::reencrypt(&opened, &value, target, &extra, mailbox.encryption)
            .map_err(|e| RekeyError::Encrypt(e.to_string()))?;
        let plaintext = smime_unwrap::content_entity(&opened);
        self.check(&copy, &plaintext, target)?;
        prepared.copy = Some(copy);
        prepared.plaintext = Some(plaintext);
        Ok(prepared)
    }

    /// True when `copy` opens with `target` alone and its content is
    /// `plaintext`.
    pub fn check(
        &self,
        copy: &[u8],
        plaintext: &[u8],
        target: &Identity,
    ) -> Result<(), RekeyError> {
        let copy = lines::crlf(copy);
        match smime_unwrap::unwrap(&copy, &[target], &[], self.now) {
            smime_unwrap::Unwrapped::Opened { message, .. } => {
                if smime_unwrap::content_entity(&message) == plaintext {
                    Ok(())
                } else {
                    Err(RekeyError::Check(
                        "its content differs from the original's".into(),
                    ))
                }
            }
            smime_unwrap::Unwrapped::Failed { error, .. } => Err(RekeyError::Check(format!(
                "it does not open with {}: {error}",
                target.info.subject_cn
            ))),
            smime_unwrap::Unwrapped::Unchanged { .. } => {
                Err(RekeyError::Check("it is not encrypted".into()))
            }
        }
    }

    /// The message opened for the mailbox (delivered plain, as a `plain`
    /// mailbox would get it), signatures verified as of its arrival, a
    /// signer nobody holds looked up in LDAP as the daemon does.
    fn open(
        &self,
        message: &[u8],
        shape: std::sync::Arc<Shape>,
        entry: &Entry,
        mailbox: &Mailbox<'_>,
    ) -> Opened {
        let settings = &self.snapshot.settings;
        let envelope = Envelope {
            mail_from: String::new(),
            rcpts: vec![mailbox.address.clone()],
            received: entry.internal_date.max(0) as u64,
            client: "migrate".into(),
            helo: String::new(),
            eight_bit: true,
            smtputf8: false,
            released: false,
            submission: false,
        };
        let mut answers: HashMap<String, crate::pki::signer::SignerRevocation> =
            self.live.signers.known(self.now);
        // As the queue does: signers' revocation asked, signers nobody
        // holds looked up in LDAP, then the pipeline once more.
        let mut known = std::borrow::Cow::Borrowed(self.known.as_slice());
        let mut ldap_asked = false;
        for round in 0..3 {
            let ctx = pipeline::Context {
                settings,
                keys: &self.snapshot.keys,
                now: self.now,
                known: &known,
                signer_revocation: &answers,
                ldap_asked,
                spill: &crate::blob::InMemory,
                seen: None,
                quarantine_full: false,
            };
            let mut out = pipeline::Actions::default();
            let mb = unwrap::Mailbox {
                rcpt: mailbox.address.clone(),
                deliver: Deliver::Plain,
                encryption: mailbox.encryption,
            };
            unwrap::mailboxes_at(
                &envelope,
                vec![mb],
                message,
                std::sync::Arc::clone(&shape),
                &ctx,
                entry.internal_date,
                &mut out,
            );
            let actions = out.into_vec();
            let mut wanted: Vec<(X509, Vec<X509>)> = Vec::new();
            let mut addresses: Vec<String> = Vec::new();
            for a in &actions {
                match a {
                    Action::CheckSigner { cert, issuers } => {
                        wanted.push((cert.clone(), issuers.clone()))
                    }
                    Action::FindSigner { address } => addresses.push(address.clone()),
                    _ => {}
                }
            }
            if round < 2 && !(wanted.is_empty() && addresses.is_empty()) {
                for address in &addresses {
                    known.to_mut().extend(self.ldap_certificates(address));
                    ldap_asked = true;
                }
                let trust = &settings.trust;
                for (cert, issuers) in &wanted {
                    self.live.signers.check(
                        cert,
                        issuers,
                        &self.snapshot.keys.anchors,
                        trust.revocation,
                        trust.revocation_timeout,
                        self.now,
                    );
                }
                answers = self.live.signers.known(self.now);
                continue;
            }
            for a in actions {
                match a {
                    Action::Deliver(c) => return Opened::Plain(c.body.to_vec()),
                    Action::Quarantine { reason, .. } => {
                        return Opened::Left(Leave::Unopenable(reason))
                    }
                    _ => {}
                }
            }
            break;
        }
        Opened::Left(Leave::Unopenable(
            "the inbound path delivered nothing".into(),
        ))
    }

    /// The certificates the configured LDAP directories hold for
    /// `address` (asked once per run), for a signer nobody holds.
    fn ldap_certificates(&self, address: &str) -> Vec<X509> {
        if !askable(address) {
            return Vec::new();
        }
        let key = crate::mail::address::normalize(address);
        let settings = &self.snapshot.settings;
        let ask: Vec<&crate::config::LdapSettings> = {
            let memo = self.ldap.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(certs) = memo.answers.get(&key) {
                return certs.clone();
            }
            settings
                .certificates
                .ldap
                .iter()
                .filter(|c| !memo.given_up.contains(&c.url))
                .collect()
        };
        if ask.is_empty() {
            return Vec::new();
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!(event = "ldap-error", address, error = %e,
                               "no runtime for the LDAP lookup of a signer");
                return Vec::new();
            }
        };
        let answers: Vec<(&str, Result<Vec<X509>, String>)> = ask
            .iter()
            .map(|cfg| {
                let got = rt.block_on(self.live.resolver.ldap_certificates_at(cfg, address));
                (cfg.url.as_str(), got)
            })
            .collect();
        let mut memo = self.ldap.0.lock().unwrap_or_else(|p| p.into_inner());
        let (mut certs, mut all_answered) = (Vec::new(), true);
        for (url, got) in answers {
            match got {
                Ok(c) => {
                    certs.extend(c);
                    memo.failed_in_a_row.remove(url);
                }
                Err(_) => {
                    all_answered = false;
                    let n = memo.failed_in_a_row.entry(url.to_string()).or_default();
                    *n += 1;
                    if *n >= LDAP_GIVE_UP && memo.given_up.insert(url.to_string()) {
                        tracing::warn!(event = "ldap-given-up", url, failures = LDAP_GIVE_UP,
                                       "LDAP did not answer {LDAP_GIVE_UP} times in a row: signers nobody holds are not looked up there for the rest of this run");
                    }
                }
            }
        }
        if all_answered {
            memo.answers.insert(key, certs.clone());
        }
        certs
    }

    /// The key the trace names first, among the mailbox's candidates: the
    /// one the outer encryption names when several share the name.
    fn used_key(
        &self,
        recipients: &[&Identity],
        trace: &Trace,
        mailbox: &Mailbox<'_>,
    ) -> Option<KeyFacts> {
        let cn = trace.decrypted.first()?;
        let keys = &self.snapshot.keys;
        let named: Vec<&Identity> = keys
            .candidates(&mailbox.address)
            .filter(|id| &id.info.subject_cn == cn)
            .collect();
        let pick = named
            .iter()
            .find(|id| recipients.iter().any(|r| std::ptr::eq(**id, *r)))
            .or(named.first())?;
        Some(Self::facts(pick))
    }
}

enum Opened {
    Plain(Vec<u8>),
    Left(Leave),
}

/// The outermost EnvelopedData of a message of `shape`: its body, or the
/// content of a detached signature around it.
fn outer_cms(shape: &Shape) -> Option<CmsContentInfo> {
    match shape {
        Shape::Enveloped { cms } => cms::parse(cms).ok(),
        Shape::DetachedSigned { content, .. } => match mime::shape(content) {
            Shape::Enveloped { cms } => cms::parse(&cms).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// RFC 3339 in UTC.
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_addresses_are_asked_of_ldap() {
        assert!(askable("post@domstol.dk"));
        assert!(!askable("nobody"));
        assert!(!askable("@domstol.dk"));
        assert!(!askable("post@"));
        assert!(!askable("a@b@c.dk"));
        assert!(!askable(&format!("{}@domstol.dk", "a".repeat(250))));
    }

    #[test]
    fn the_marker_does_not_depend_on_line_ends() {
        let lf = b"Subject: x\n\nbody\n";
        let crlf = b"Subject: x\r\n\r\nbody\r\n";
        assert_eq!(marker(lf), marker(crlf));
        assert!(marker(lf).starts_with(MARKER_FIELD));
        assert_eq!(marker(lf).len(), MARKER_FIELD.len() + 64);
        assert_ne!(marker(lf), marker(b"Subject: y\n\nbody\n"));
    }
}

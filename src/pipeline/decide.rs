//! The one place where a recipient's treatment is chosen: an internal
//! mailbox is opened and delivered plain or re-encrypted; an external
//! recipient gets what the outbound rules decide, or the message unchanged.
//! The queue calls it for every pending recipient and `explain` calls it
//! for one, so the two cannot disagree.
//!
//! [`first_look`] is pure (settings, the address, whether the message
//! arrived encrypted, the time). Where a rule applies, the recipient's
//! certificates are looked up (the certificate store, LDAP, revocation:
//! I/O) and the pure [`policy::decide`] makes the decision; for mail its
//! sender encrypted already, [`policy::sealed::decide_sealed`] does, from
//! which of those certificates the message is encrypted to.

use std::collections::HashSet;

use crate::config::{Deliver, EncryptMode, Encryption, RuleSettings, Settings};
use crate::ossl::RecipientId;
use crate::policy::{self, Decision, Origin, Signers};
use crate::smime::mime::Shape;
use crate::snapshot::{Live, Snapshot};
use crate::spool::Envelope;

/// What happens to one recipient.
#[derive(Debug, Clone)]
pub enum Treatment {
    /// A mailbox in the internal domains: the message is opened and
    /// delivered plain, or re-encrypted to the mailbox's current key.
    Mailbox {
        deliver: Deliver,
        encryption: Encryption,
    },
    /// An external recipient a rule covers.
    Outbound(Decision),
    /// An external recipient that gets the message as it is, and why.
    Unchanged(&'static str),
}

/// What decides a recipient's treatment before any certificate is looked
/// at: done, or a rule that needs the recipient's certificates.
#[derive(Debug)]
pub enum FirstLook<'a> {
    Done(Treatment),
    Rule(&'a RuleSettings),
}

/// True for addresses in the internal domains.
pub fn is_internal(settings: &Settings, rcpt: &str) -> bool {
    settings.is_internal_address(rcpt)
}

/// Whom the message is encrypted to, when it arrived encrypted: the
/// message itself (`raw`) is the entity, labelled so, and holds CMS
/// EnvelopedData or AuthEnvelopedData that parses, and nothing else: no
/// multipart around it (its preamble and epilogue would travel in clear),
/// no text beside the base64, no bytes after the CMS, no field of the CMS
/// left unencrypted (originatorInfo, unprotected or authenticated
/// attributes). A label on anything
/// else (plaintext called `enveloped-data`) is no encryption: the rules
/// apply to it like to any other mail. Only the recipients' names are
/// kept, not the parsed structure (a copy of the whole ciphertext).
pub fn arrived_encrypted(shape: &Shape, raw: &[u8]) -> Option<Vec<RecipientId>> {
    use crate::smime::cms::{kind, parse, Kind};
    match shape {
        Shape::Enveloped { cms }
            if matches!(kind(cms), Some(Kind::Enveloped | Kind::AuthEnveloped))
                && crate::smime::limits::trailing(cms) == Some(0)
                && crate::smime::limits::has_clear_fields(cms) == Some(false)
                && crate::smime::parse::body_is_only(raw, cms) =>
        {
            parse(cms).ok().map(|c| crate::ossl::recipients(&c))
        }
        _ => None,
    }
}

/// Everything but the certificate lookup: pure.
pub fn first_look<'a>(
    settings: &'a Settings,
    rcpt: &str,
    encrypted: bool,
    at: i64,
) -> FirstLook<'a> {
    if is_internal(settings, rcpt) {
        let mailbox = settings.mailbox(rcpt);
        return FirstLook::Done(Treatment::Mailbox {
            deliver: mailbox.map(|m| m.deliver).unwrap_or_default(),
            encryption: mailbox.map(|m| m.encryption).unwrap_or_default(),
        });
    }
    match policy::rule_for(settings, rcpt, at) {
        // Mail sealed already is held against the rule's certificates
        // only; a rule that never encrypts has none to hold it against.
        Some(rule) if encrypted && rule.encrypt == EncryptMode::Never => {
            FirstLook::Done(Treatment::Unchanged(policy::sealed::ALREADY))
        }
        Some(rule) => FirstLook::Rule(rule),
        None if encrypted => FirstLook::Done(Treatment::Unchanged(policy::sealed::ALREADY)),
        None => FirstLook::Done(Treatment::Unchanged("no rule matches")),
    }
}

/// Who a message says it is from, for the signing decision: its envelope
/// sender, the addresses in its header From, and the listener that took it.
pub fn origin(envelope: &Envelope, body: &[u8]) -> Origin {
    Origin {
        envelope_sender: envelope.mail_from.clone(),
        header_from: crate::mail::headers::from_addresses(body),
        submission: envelope.submission,
        shown_beside: crate::mail::headers::shown_beside_from(
            body,
            &crate::smime::scan::opaque_content,
        ),
    }
}

/// Mail as `sender` would submit it on the submission path with itself in
/// the header From: the case in which it may be signed at all. What
/// `explain` and the cutoff report ask `decide` about.
pub fn as_submitted(sender: &str) -> Origin {
    Origin {
        envelope_sender: sender.to_string(),
        header_from: vec![sender.to_string()],
        submission: true,
        shown_beside: Vec::new(),
    }
}

/// The treatment of `rcpt` for mail from `origin` at `at`, with the
/// snapshot's settings and keys and the live certificate store; `sealed`
/// names whom the message is encrypted to when it arrived encrypted. The
/// reasons for each certificate taken or refused are in the decision.
pub async fn decide(
    snapshot: &Snapshot,
    live: &Live,
    revoked: &HashSet<String>,
    origin: &Origin,
    rcpt: &str,
    sealed: Option<&[RecipientId]>,
    at: i64,
) -> Treatment {
    let settings = &snapshot.settings;
    let rule = match first_look(settings, rcpt, sealed.is_some(), at) {
        FirstLook::Done(t) => return t,
        FirstLook::Rule(rule) => rule,
    };
    // Whether sealed mail is encrypted to `cert`.
    let named =
        |ids: &[RecipientId], cert: &openssl::x509::X509Ref| ids.iter().any(|id| id.names(cert));
    let (candidates, lookup_error) = live
        .resolver
        .candidates(
            &snapshot.keys,
            &snapshot.certs,
            &snapshot.checked,
            settings,
            rcpt,
            at,
            // Sealed mail is served only by a certificate it names: LDAP
            // is asked unless a local one is named and may be used.
            |e| {
                policy::wanted(settings, rule, &e.info, at)
                    && sealed.is_none_or(|ids| named(ids, &e.cert))
            },
        )
        .await;
    if let Some(ids) = sealed {
        let named: Vec<bool> = candidates
            .iter()
            .map(|c| named(ids, &c.entry.cert))
            .collect();
        return Treatment::Outbound(policy::sealed::decide_sealed(
            settings,
            rcpt,
            &candidates,
            &named,
            lookup_error.as_deref(),
            at,
        ));
    }
    let signers = Signers {
        keys: &snapshot.keys,
        revoked,
    };
    Treatment::Outbound(policy::decide(
        settings,
        signers,
        origin,
        rcpt,
        &candidates,
        lookup_error.as_deref(),
        at,
    ))
}

/// A message's plan: its shape, read once, and each pending recipient's
/// treatment.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Shared by the runs of the pipeline (it may hold a large CMS).
    pub shape: std::sync::Arc<Shape>,
    pub recipients: Vec<(String, Treatment)>,
}

impl Plan {
    /// When the plan has mailboxes and other recipients: the others'
    /// plan, taken out of this one (which keeps the mailboxes). The queue
    /// sends their copies before any mailbox's is opened, so when a copy
    /// leaves for outside says nothing of what opening found.
    pub fn split_off_outside(&mut self) -> Option<Plan> {
        let is_mailbox = |t: &Treatment| matches!(t, Treatment::Mailbox { .. });
        let mailboxes = self
            .recipients
            .iter()
            .filter(|(_, t)| is_mailbox(t))
            .count();
        if mailboxes == 0 || mailboxes == self.recipients.len() {
            return None;
        }
        let (inside, outside) = std::mem::take(&mut self.recipients)
            .into_iter()
            .partition(|(_, t)| is_mailbox(t));
        self.recipients = inside;
        Some(Plan {
            shape: std::sync::Arc::clone(&self.shape),
            recipients: outside,
        })
    }
}

/// Decides every pending recipient of a message whose shape (read by
/// `smime::mime::shape`) is `shape`.
pub async fn plan(
    snapshot: &Snapshot,
    live: &Live,
    envelope: &Envelope,
    body: &[u8],
    shape: Shape,
    pending: Vec<String>,
    at: i64,
) -> Plan {
    // Whether the sender encrypted it (a parse of its CMS) matters only to
    // external recipients: asked once, when there is one (mail to
    // mailboxes is not parsed here once more).
    let mut arrived = None;
    // Who the message is from and which identities are revoked matter only
    // to recipients a rule applies to: read once, when one does.
    let mut looked_up = None;
    let mut recipients = Vec::with_capacity(pending.len());
    for rcpt in pending {
        let sealed = match is_internal(&snapshot.settings, &rcpt) {
            true => None,
            false => arrived
                .get_or_insert_with(|| arrived_encrypted(&shape, body))
                .as_deref(),
        };
        let t = match first_look(&snapshot.settings, &rcpt, sealed.is_some(), at) {
            FirstLook::Done(t) => t,
            FirstLook::Rule(_) => {
                let (origin, revoked) = looked_up
                    .get_or_insert_with(|| (origin(envelope, body), live.revoked.current()));
                decide(snapshot, live, revoked, origin, &rcpt, sealed, at).await
            }
        };
        recipients.push((rcpt, t));
    }
    Plan {
        shape: std::sync::Arc::new(shape),
        recipients,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::load::test_settings as settings;

    const RULE: &str = "[[rule]]\nname = \"courts\"\nmatch = [\"*@domstol.dk\"]\n\
                        generation = \"oces3\"\nencrypt = \"required\"\non_missing_certificate = \"bounce\"\n";

    #[test]
    fn the_outside_recipients_are_split_off_only_beside_mailboxes() {
        let mailbox = || Treatment::Mailbox {
            deliver: Deliver::default(),
            encryption: Encryption::default(),
        };
        let plan = |r: Vec<(&str, Treatment)>| Plan {
            shape: std::sync::Arc::new(Shape::Plain),
            recipients: r.into_iter().map(|(a, t)| (a.to_string(), t)).collect(),
        };
        let mut mixed = plan(vec![
            ("a@x", mailbox()),
            ("out@y", Treatment::Unchanged("no rule matches")),
            ("b@x", mailbox()),
        ]);
        let outside = mixed.split_off_outside().expect("split");
        let names = |p: &Plan| {
            p.recipients
                .iter()
                .map(|(r, _)| r.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&outside), ["out@y"]);
        assert_eq!(names(&mixed), ["a@x", "b@x"]);
        // Only one kind: nothing to split.
        assert!(plan(vec![("a@x", mailbox())]).split_off_outside().is_none());
        let mut out = plan(vec![("o@y", Treatment::Unchanged("no rule matches"))]);
        assert!(out.split_off_outside().is_none());
        assert_eq!(out.recipients.len(), 1);
    }

    #[test]
    fn internal_recipients_are_mailboxes_whatever_the_rules() {
        let s = settings(&RULE.replace("*@domstol.dk", "*"));
        for encrypted in [false, true] {
            match first_look(&s, "bob@Example-Law.dk", encrypted, 0) {
                FirstLook::Done(Treatment::Mailbox { deliver, .. }) => {
                    assert_eq!(deliver, Deliver::default())
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn external_recipients_follow_rules_encrypted_or_not() {
        let s = settings(RULE);
        for encrypted in [false, true] {
            assert!(matches!(
                first_look(&s, "post@domstol.dk", encrypted, 0),
                FirstLook::Rule(r) if r.name == "courts"
            ));
        }
        assert!(matches!(
            first_look(&s, "someone@example.org", true, 0),
            FirstLook::Done(Treatment::Unchanged(policy::sealed::ALREADY))
        ));
        // A rule that never encrypts has no certificate to hold sealed
        // mail against; plain mail it still decides.
        let never = settings(
            &RULE
                .replace("\"required\"", "\"never\"")
                .replace("\"bounce\"", "\"send-plain\""),
        );
        assert!(matches!(
            first_look(&never, "post@domstol.dk", true, 0),
            FirstLook::Done(Treatment::Unchanged(policy::sealed::ALREADY))
        ));
        assert!(matches!(
            first_look(&never, "post@domstol.dk", false, 0),
            FirstLook::Rule(_)
        ));
        assert!(matches!(
            first_look(&s, "someone@example.org", false, 0),
            FirstLook::Done(Treatment::Unchanged("no rule matches"))
        ));
    }

    #[test]
    fn a_rule_window_is_honoured() {
        let s = settings(&format!("{RULE}from = \"2023-07-01T00:00:00Z\"\n"));
        let before = 1_688_083_200; // 2023-06-30
        let after = 1_688_256_000; // 2023-07-02
        assert!(matches!(
            first_look(&s, "post@domstol.dk", false, before),
            FirstLook::Done(Treatment::Unchanged(_))
        ));
        assert!(matches!(
            first_look(&s, "post@domstol.dk", false, after),
            FirstLook::Rule(_)
        ));
    }
}

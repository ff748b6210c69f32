//! unwrap → decide → wrap for one spooled message: turns the message and
//! the plan for its pending recipients into actions, one copy per group of
//! recipients that get the same bytes.
//!
//! - [`decide`]: the one place a recipient's treatment is chosen (mailbox,
//!   outbound rule, or unchanged); the queue and `explain` both call it.
//! - [`unwrap`]: internal mailboxes get the message opened, decrypted with
//!   the key its RecipientInfo names, signatures verified, delivered plain
//!   or re-encrypted, with an `X-SMIME-Gateway` header saying what was done.
//! - [`efail`]: decrypted HTML without integrity protection made inert.
//! - [`wrap`]: external recipients get the copies the rules decided: signed
//!   and/or encrypted, bounced or held.
//!
//! [`process`] is pure: the keys, the plan and the time come in, actions go
//! out; the queue carries them out.

pub mod decide;
pub mod efail;
pub mod unwrap;
pub mod wrap;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Deref;

use openssl::x509::X509;

pub use decide::{Plan, Treatment};

use crate::blob::{Blob, Spill};
use crate::config::Settings;
use crate::metrics::Event;
use crate::pki::signer::SignerRevocation;
use crate::pki::Keyring;
use crate::smime::unwrap::KeyUsed;
use crate::spool::Envelope;

/// What the pipeline needs besides the message and its plan: one snapshot
/// of settings and keys, and the time.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub keys: &'a Keyring,
    /// Unix seconds.
    pub now: i64,
    /// Certificates a signature may name without carrying them
    /// ([`crate::pki::signer::known_certificates`]).
    pub known: &'a [X509],
    /// Revocation answers for signer certificates, by fingerprint.
    pub signer_revocation: &'a HashMap<String, SignerRevocation>,
    /// LDAP was asked already for the certificates of this message's
    /// signers (their answers are in `known`).
    pub ldap_asked: bool,
    /// Where decrypted, rebuilt and encrypted copies are written: memory
    /// for small messages, the message's work folder for large ones (the
    /// queue decides by size).
    pub spill: &'a dyn Spill,
    /// What `smime::scan` found in the message, when the caller scanned
    /// it already (else the pipeline scans it when it needs to).
    pub seen: Option<crate::smime::scan::Seen>,
    /// The quarantine has no room (`smime.quarantine_keep_free`): what it
    /// would keep is delivered unchanged, with the reason.
    pub quarantine_full: bool,
}

/// The bytes of an outgoing copy: the spooled message itself, or a copy
/// made for it (in memory, or a mapped work file).
#[derive(Debug, Clone)]
pub enum Body<'a> {
    Borrowed(&'a [u8]),
    Made(Blob),
}

impl Deref for Body<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Body::Borrowed(b) => b,
            Body::Made(b) => b,
        }
    }
}

impl PartialEq for Body<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Body<'_> {}

impl<'a> From<Cow<'a, [u8]>> for Body<'a> {
    fn from(c: Cow<'a, [u8]>) -> Self {
        match c {
            Cow::Borrowed(b) => Body::Borrowed(b),
            Cow::Owned(v) => Body::Made(Blob::from(v)),
        }
    }
}

impl From<Blob> for Body<'_> {
    fn from(b: Blob) -> Self {
        Body::Made(b)
    }
}

impl Body<'_> {
    /// The same bytes, owning them (to leave a blocking task).
    pub fn into_owned(self) -> Body<'static> {
        match self {
            Body::Borrowed(b) => Body::Made(Blob::from(b.to_vec())),
            Body::Made(b) => Body::Made(b),
        }
    }
}

/// One outgoing copy and the recipients it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy<'a> {
    pub rcpts: Vec<String>,
    pub body: Body<'a>,
    /// What was done, for the log (`None`: passed through).
    pub note: Option<String>,
}

/// A signer certificate from a valid signature on an incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarvestOffer {
    pub cert: X509,
    /// The SMIMECapabilities the signer announced.
    pub capabilities: Vec<String>,
    /// The signing time the signature claims (Unix seconds).
    pub signed_at: Option<i64>,
    /// The address the certificate is bound to (header From and envelope
    /// sender both equal it, and the certificate names it), or why the
    /// message does not bind it to anyone.
    pub bound: Result<String, String>,
}

/// What to do with a group of recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    Deliver(Copy<'a>),
    /// Keep the message in the quarantine for these recipients.
    Quarantine {
        rcpts: Vec<String>,
        reason: String,
    },
    /// Bounce these recipients with the reason.
    Fail {
        rcpts: Vec<String>,
        reason: String,
    },
    /// Try these recipients again later (held by a rule, or a lookup
    /// failed for now).
    Defer {
        rcpts: Vec<String>,
        reason: String,
    },
    /// A signer certificate from a valid signature, offered to the
    /// certificate store (kept only when bound to its sender).
    Harvest(HarvestOffer),
    /// The revocation of this signer certificate (issued by `issuer`) is
    /// not known: the queue asks its sources and runs the pipeline again.
    CheckSigner {
        cert: X509,
        /// The certificates above it, nearest first.
        issuers: Vec<X509>,
    },
    /// A signature names a certificate neither it nor the gateway holds:
    /// the queue asks LDAP for the certificates of this (From) address and
    /// runs the pipeline again.
    FindSigner {
        address: String,
    },
    /// Something worth counting (metrics).
    Observed(Event),
    /// The message was encrypted to this key of the organisation's (the
    /// journal records who still uses which key).
    Opened(KeyUsed),
}

impl Action<'_> {
    /// The same action owning its bytes (to leave a blocking task).
    pub fn into_owned(self) -> Action<'static> {
        match self {
            Action::Deliver(c) => Action::Deliver(Copy {
                rcpts: c.rcpts,
                body: c.body.into_owned(),
                note: c.note,
            }),
            Action::Quarantine { rcpts, reason } => Action::Quarantine { rcpts, reason },
            Action::Fail { rcpts, reason } => Action::Fail { rcpts, reason },
            Action::Defer { rcpts, reason } => Action::Defer { rcpts, reason },
            Action::Harvest(offer) => Action::Harvest(offer),
            Action::CheckSigner { cert, issuers } => Action::CheckSigner { cert, issuers },
            Action::FindSigner { address } => Action::FindSigner { address },
            Action::Observed(e) => Action::Observed(e),
            Action::Opened(k) => Action::Opened(k),
        }
    }
}

/// The actions being gathered for one message: recipients that get the
/// same bytes share a copy; recipients refused for the same reason share
/// one action.
#[derive(Debug, Default)]
pub struct Actions<'a> {
    list: Vec<Action<'a>>,
}

impl<'a> Actions<'a> {
    /// `rcpt` gets `bytes` (joining a copy with the same bytes).
    pub fn deliver(&mut self, rcpt: String, bytes: impl Into<Body<'a>>, note: Option<String>) {
        let bytes = bytes.into();
        for a in self.list.iter_mut() {
            if let Action::Deliver(c) = a {
                if c.body == bytes {
                    c.rcpts.push(rcpt);
                    return;
                }
            }
        }
        self.list.push(Action::Deliver(Copy {
            rcpts: vec![rcpt],
            body: bytes,
            note,
        }));
    }

    /// `rcpt`'s copy goes to the quarantine.
    pub fn quarantine(&mut self, rcpt: String, reason: &str) {
        for a in self.list.iter_mut() {
            if let Action::Quarantine { rcpts, .. } = a {
                rcpts.push(rcpt);
                return;
            }
        }
        self.list.push(Action::Quarantine {
            rcpts: vec![rcpt],
            reason: reason.to_string(),
        });
    }

    /// `rcpt` bounces with `reason`.
    pub fn fail(&mut self, rcpt: String, reason: &str) {
        self.refuse(rcpt, reason, true);
    }

    /// `rcpt` is tried again later.
    pub fn defer(&mut self, rcpt: String, reason: &str) {
        self.refuse(rcpt, reason, false);
    }

    /// Joins `rcpt` to the bounce (`fail`) or deferral with the same reason.
    fn refuse(&mut self, rcpt: String, reason: &str, fail: bool) {
        for a in self.list.iter_mut() {
            let (rcpts, r) = match a {
                Action::Fail { rcpts, reason } if fail => (rcpts, reason),
                Action::Defer { rcpts, reason } if !fail => (rcpts, reason),
                _ => continue,
            };
            if r == reason {
                rcpts.push(rcpt);
                return;
            }
        }
        let (rcpts, reason) = (vec![rcpt], reason.to_string());
        self.list.push(if fail {
            Action::Fail { rcpts, reason }
        } else {
            Action::Defer { rcpts, reason }
        });
    }

    pub fn push(&mut self, action: Action<'a>) {
        self.list.push(action);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Action<'a>> {
        self.list.iter()
    }

    pub fn into_vec(self) -> Vec<Action<'a>> {
        self.list
    }
}

/// The actions for a message whose pending recipients `plan` decided
/// (taken, so that the CMS its shape may hold is let go once used).
pub fn process<'a>(
    envelope: &Envelope,
    body: &'a [u8],
    plan: Plan,
    ctx: &Context<'_>,
) -> Vec<Action<'a>> {
    let mut out = Actions::default();
    let mut mailboxes = Vec::new();
    let mut outbound = Vec::new();
    for (rcpt, treatment) in plan.recipients.iter() {
        match treatment {
            Treatment::Mailbox {
                deliver,
                encryption,
            } => mailboxes.push(unwrap::Mailbox {
                rcpt: rcpt.clone(),
                deliver: *deliver,
                encryption: *encryption,
            }),
            Treatment::Outbound(decision) => outbound.push((rcpt.clone(), decision)),
            Treatment::Unchanged(_) => out.deliver(rcpt.clone(), Cow::Borrowed(body), None),
        }
    }
    wrap::outbound(outbound, body, ctx, &mut out);
    unwrap::mailboxes(envelope, mailboxes, body, plan.shape, ctx, &mut out);
    out.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_with_the_same_bytes_or_reason_share_one_action() {
        let mut a = Actions::default();
        a.deliver("a@x".into(), Cow::Borrowed(&b"same"[..]), None);
        a.deliver("b@x".into(), Cow::Owned(b"same".to_vec()), None);
        a.deliver("c@x".into(), Cow::Borrowed(&b"other"[..]), None);
        a.fail("d@x".into(), "no certificate");
        a.fail("e@x".into(), "no certificate");
        a.defer("f@x".into(), "no certificate");
        a.defer("g@x".into(), "held");
        a.quarantine("h@x".into(), "no key");
        a.quarantine("i@x".into(), "no key");
        let list = a.into_vec();
        let rcpts: Vec<Vec<String>> = list
            .iter()
            .map(|x| match x {
                Action::Deliver(c) => c.rcpts.clone(),
                Action::Fail { rcpts, .. }
                | Action::Defer { rcpts, .. }
                | Action::Quarantine { rcpts, .. } => rcpts.clone(),
                _ => Vec::new(),
            })
            .collect();
        let want: Vec<Vec<String>> = [
            &["a@x", "b@x"][..],
            &["c@x"],
            &["d@x", "e@x"],
            &["f@x"],
            &["g@x"],
            &["h@x", "i@x"],
        ]
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect();
        assert_eq!(rcpts, want);
        assert!(matches!(list[2], Action::Fail { .. }));
        assert!(matches!(list[3], Action::Defer { .. }));
    }
}

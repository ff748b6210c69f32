//! unwrap → decide → wrap for one spooled message: turns the message and
//! its pending recipients into actions, one copy per group of recipients
//! that get the same bytes.
//!
//! Recipients in the internal domains get the message opened: decrypted
//! with the key its RecipientInfo names (the recipient's own identities
//! first, then the organisation-wide ones), signatures verified, and
//! delivered plain or re-encrypted to the mailbox's current OCES3 key, with
//! an `X-SMIME-Gateway` header saying what was done. Mail that cannot be
//! opened is delivered unchanged with the reason, or quarantined; signer
//! certificates of valid signatures are offered for harvesting.
//!
//! Other recipients get what the outbound rules decided (the policy's
//! decisions come in with the context): signed and/or encrypted copies,
//! bounced or held recipients, or the message unchanged when no rule
//! applies or it arrived encrypted already. Pure: the caller supplies the
//! keys, the decisions and the time.

use std::borrow::Cow;
use std::collections::HashMap;

use openssl::x509::X509;

use crate::config::{Deliver, OnUndecryptable, Settings};
use crate::mail::address::domain_of;
use crate::metrics::Event;
use crate::pki::directory::fingerprint;
use crate::pki::oces::{self, Generation};
use crate::pki::Keyring;
use crate::policy::{Decision, Outcome};
use crate::smime::cms::SigStatus;
use crate::smime::mime::{self, Shape};
use crate::smime::sign;
use crate::smime::unwrap::{self, Report, Unwrapped};
use crate::smime::{cms, header};
use crate::spool::Envelope;

/// What the pipeline needs besides the message.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub keys: &'a Keyring,
    /// Unix seconds.
    pub now: i64,
    /// The outbound decision for each external recipient a rule covers.
    pub decisions: &'a HashMap<String, Decision>,
}

/// One outgoing copy and the recipients it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy<'a> {
    pub rcpts: Vec<String>,
    pub body: Cow<'a, [u8]>,
    /// What was done, for the log (`None`: passed through).
    pub note: Option<String>,
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
    /// A signer certificate from a valid signature, for the directory,
    /// with the SMIMECapabilities the signer announced.
    Harvest(X509, Vec<String>),
    /// Something worth counting (metrics).
    Observed(Event),
}

impl Action<'_> {
    /// The same action owning its bytes (to leave a blocking task).
    pub fn into_owned(self) -> Action<'static> {
        match self {
            Action::Deliver(c) => Action::Deliver(Copy {
                rcpts: c.rcpts,
                body: Cow::Owned(c.body.into_owned()),
                note: c.note,
            }),
            Action::Quarantine { rcpts, reason } => Action::Quarantine { rcpts, reason },
            Action::Fail { rcpts, reason } => Action::Fail { rcpts, reason },
            Action::Defer { rcpts, reason } => Action::Defer { rcpts, reason },
            Action::Harvest(cert, caps) => Action::Harvest(cert, caps),
            Action::Observed(e) => Action::Observed(e),
        }
    }
}

/// The actions for the `pending` recipients of a message.
pub fn process<'a>(
    envelope: &Envelope,
    body: &'a [u8],
    pending: Vec<String>,
    ctx: &Context<'_>,
) -> Vec<Action<'a>> {
    let mut out: Vec<Action<'a>> = Vec::new();
    let deliver =
        |rcpt: String, bytes: Cow<'a, [u8]>, note: Option<String>, out: &mut Vec<Action<'a>>| {
            for a in out.iter_mut() {
                if let Action::Deliver(c) = a {
                    if c.body == bytes {
                        c.rcpts.push(rcpt);
                        return;
                    }
                }
            }
            out.push(Action::Deliver(Copy {
                rcpts: vec![rcpt],
                body: bytes,
                note,
            }));
        };

    let (internal, external): (Vec<String>, Vec<String>) = pending
        .into_iter()
        .partition(|r| domain_of(r).is_some_and(|d| ctx.settings.server.is_internal_domain(&d)));
    let shape = mime::shape(body);
    outbound(external, body, &shape, ctx, &mut out, deliver);
    if internal.is_empty() {
        return out;
    }

    let mut opened: HashMap<Vec<usize>, Unwrapped> = HashMap::new();
    for rcpt in internal {
        let mailbox = ctx.settings.mailbox(&rcpt);
        let mode = mailbox.map(|m| m.deliver).unwrap_or_default();
        let encryption = mailbox.map(|m| m.encryption).unwrap_or_default();
        let target = ctx.keys.current_oces3(&rcpt, ctx.now);

        if mode == Deliver::Reencrypt {
            if let (Some(t), Shape::Enveloped { cms: der }) = (target, &shape) {
                let already = cms::parse(der)
                    .map(|c| crate::ossl::is_recipient(&c, &t.cert))
                    .unwrap_or(false);
                if already {
                    let value = format!(
                        "passed; reason=\"already encrypted to the mailbox key\"; key={}",
                        header::quote(&t.info.subject_cn)
                    );
                    let note =
                        Some("already encrypted to the mailbox key: passed unchanged".into());
                    deliver(rcpt, Cow::Owned(header::set(body, &value)), note, &mut out);
                    continue;
                }
            }
        }

        let indices = ctx.keys.candidate_indices(&rcpt);
        let first = !opened.contains_key(&indices);
        let result = opened.entry(indices.clone()).or_insert_with(|| {
            let keys: Vec<_> = indices.iter().map(|&i| &ctx.keys.identities[i]).collect();
            unwrap::unwrap(body, &keys, &ctx.keys.anchors, ctx.now)
        });
        if ctx.settings.certificates.harvest {
            harvest(result, &mut out);
        }
        if first {
            observe(result, &mut out);
        }
        match result {
            Unwrapped::Opened { message, report } => {
                let value = report.header_value().unwrap_or_else(|| "decrypted".into());
                let note = Some(note_for(report));
                match (mode, target) {
                    (Deliver::Plain, _) => {
                        deliver(
                            rcpt,
                            Cow::Owned(header::set(message, &value)),
                            note,
                            &mut out,
                        );
                    }
                    (Deliver::Reencrypt, Some(t)) => {
                        let inner = unwrap::content_entity(message);
                        match cms::encrypt(&inner, std::slice::from_ref(&t.cert), encryption) {
                            Ok(der) => {
                                let value = format!(
                                    "{value}; reencrypted-to={}",
                                    header::quote(&t.info.subject_cn)
                                );
                                let wrapped = unwrap::enveloped_message(message, &der);
                                let note = note
                                    .map(|n| format!("{n}; re-encrypted to {}", t.info.subject_cn));
                                deliver(
                                    rcpt,
                                    Cow::Owned(header::set(&wrapped, &value)),
                                    note,
                                    &mut out,
                                );
                            }
                            Err(e) => {
                                let value = format!(
                                    "not-reencrypted; reason={}",
                                    header::quote(&e.to_string())
                                );
                                let note = Some(format!(
                                    "re-encryption failed ({e}): delivered unchanged"
                                ));
                                deliver(
                                    rcpt,
                                    Cow::Owned(header::set(body, &value)),
                                    note,
                                    &mut out,
                                );
                            }
                        }
                    }
                    (Deliver::Reencrypt, None) => {
                        let value =
                            "not-reencrypted; reason=\"no valid OCES3 key for this mailbox\"";
                        let note =
                            Some("no valid OCES3 key to re-encrypt to: delivered unchanged".into());
                        deliver(rcpt, Cow::Owned(header::set(body, value)), note, &mut out);
                    }
                }
            }
            Unwrapped::Unchanged { report } => match report.header_value() {
                Some(v) => deliver(
                    rcpt,
                    Cow::Owned(header::set(body, &v)),
                    Some(note_for(report)),
                    &mut out,
                ),
                None if header::present(body) => {
                    deliver(rcpt, Cow::Owned(header::strip(body)), None, &mut out)
                }
                None => deliver(rcpt, Cow::Borrowed(body), None, &mut out),
            },
            Unwrapped::Failed { reason } => {
                if ctx.settings.smime.on_undecryptable == OnUndecryptable::Quarantine
                    && !envelope.released
                {
                    match out
                        .iter_mut()
                        .find(|a| matches!(a, Action::Quarantine { .. }))
                    {
                        Some(Action::Quarantine { rcpts, .. }) => rcpts.push(rcpt),
                        _ => out.push(Action::Quarantine {
                            rcpts: vec![rcpt],
                            reason: reason.clone(),
                        }),
                    }
                } else {
                    let value = format!("undecryptable; reason={}", header::quote(reason));
                    let note = Some(format!("undecryptable: {reason}"));
                    deliver(rcpt, Cow::Owned(header::set(body, &value)), note, &mut out);
                }
            }
        }
    }
    out
}

fn note_for(report: &Report) -> String {
    let mut parts = Vec::new();
    if let Some(k) = &report.key {
        parts.push(format!(
            "decrypted with {} key {:?}",
            k.generation, k.subject_cn
        ));
    }
    if let Some(s) = &report.signature {
        parts.push(format!(
            "signature {} ({})",
            s.status,
            s.signer.as_deref().unwrap_or("unknown signer")
        ));
    }
    parts.join("; ")
}

/// Counts a decryption or a failure to decrypt, once per message and key set.
fn observe(result: &Unwrapped, out: &mut Vec<Action<'_>>) {
    let event = match result {
        Unwrapped::Opened { report, .. } => match &report.key {
            Some(k) => Event::Decrypted(k.generation.to_string()),
            None => return,
        },
        Unwrapped::Failed { reason } => Event::Undecryptable(if reason.starts_with("no key") {
            "no-key"
        } else if reason.starts_with("corrupt") {
            "corrupt"
        } else {
            "failed"
        }),
        Unwrapped::Unchanged { .. } => return,
    };
    out.push(Action::Observed(event));
}

/// Offers the signer certificate of a valid signature, once per message.
fn harvest(result: &Unwrapped, out: &mut Vec<Action<'_>>) {
    let report = match result {
        Unwrapped::Opened { report, .. } | Unwrapped::Unchanged { report } => report,
        Unwrapped::Failed { .. } => return,
    };
    let Some(sig) = &report.signature else { return };
    let (SigStatus::Valid, Some(cert)) = (sig.status, &sig.cert) else {
        return;
    };
    let fp = fingerprint(cert);
    if !out
        .iter()
        .any(|a| matches!(a, Action::Harvest(c, _) if fingerprint(c) == fp))
    {
        out.push(Action::Harvest(cert.clone(), sig.capabilities.clone()));
    }
}

/// External recipients: what the rules decided, grouped so that
/// recipients with the same outcome share one copy.
fn outbound<'a>(
    rcpts: Vec<String>,
    body: &'a [u8],
    shape: &Shape,
    ctx: &Context<'_>,
    out: &mut Vec<Action<'a>>,
    deliver: impl Fn(String, Cow<'a, [u8]>, Option<String>, &mut Vec<Action<'a>>),
) {
    // Groups of recipients protected the same way: (key, recipients, decision).
    let mut groups: Vec<(String, Vec<String>, &Decision)> = Vec::new();
    for rcpt in rcpts {
        let decision = match (shape, ctx.decisions.get(&rcpt)) {
            // Encrypted by the sender already: passed through unchanged.
            (Shape::Enveloped { .. }, _) | (_, None) => None,
            (_, Some(d)) => Some(d),
        };
        let Some(decision) = decision else {
            deliver(rcpt, Cow::Borrowed(body), None, out);
            continue;
        };
        match &decision.outcome {
            Outcome::PassThrough(_) => deliver(rcpt, Cow::Borrowed(body), None, out),
            Outcome::Send {
                encrypt_to,
                sign_with: None,
                ..
            } if encrypt_to.is_empty() => {
                deliver(rcpt, Cow::Borrowed(body), Some(decision.summary()), out)
            }
            Outcome::Send {
                encrypt_to,
                sign_with,
                encryption,
            } => {
                let mut fps: Vec<String> = encrypt_to.iter().map(fingerprint).collect();
                fps.sort();
                let key = format!("{}|{sign_with:?}|{encryption:?}", fps.join(","));
                match groups.iter_mut().find(|(k, _, _)| *k == key) {
                    Some((_, list, _)) => list.push(rcpt),
                    None => groups.push((key, vec![rcpt], decision)),
                }
            }
            Outcome::Bounce(reason) => push_group(out, rcpt, reason, true),
            Outcome::Hold(reason) | Outcome::Defer(reason) => push_group(out, rcpt, reason, false),
        }
    }
    for (_, rcpts, decision) in groups {
        let Outcome::Send {
            encrypt_to,
            sign_with,
            encryption,
        } = &decision.outcome
        else {
            continue;
        };
        let signer = sign_with.map(|i| (&ctx.keys.identities[i], ctx.settings.policy.signature));
        match sign::protect(body, signer, encrypt_to, *encryption) {
            Ok(bytes) => {
                if let Some((id, _)) = signer {
                    out.push(Action::Observed(Event::Signed(
                        id.info.generation.to_string(),
                    )));
                }
                for cert in encrypt_to {
                    let generation = cert
                        .to_der()
                        .ok()
                        .and_then(|d| oces::classify(&d).ok())
                        .map(|i| i.generation)
                        .unwrap_or(Generation::Other);
                    out.push(Action::Observed(Event::Encrypted(generation.to_string())));
                }
                out.push(Action::Deliver(Copy {
                    rcpts,
                    body: Cow::Owned(bytes),
                    note: Some(decision.summary()),
                }))
            }
            Err(e) => {
                for rcpt in rcpts {
                    push_group(
                        out,
                        rcpt,
                        &format!("cannot protect the message: {e}"),
                        false,
                    );
                }
            }
        }
    }
}

fn push_group(out: &mut Vec<Action<'_>>, rcpt: String, reason: &str, fail: bool) {
    for a in out.iter_mut() {
        match a {
            Action::Fail { rcpts, reason: r } if fail && r == reason => {
                rcpts.push(rcpt);
                return;
            }
            Action::Defer { rcpts, reason: r } if !fail && r == reason => {
                rcpts.push(rcpt);
                return;
            }
            _ => {}
        }
    }
    let (rcpts, reason) = (vec![rcpt], reason.to_string());
    out.push(if fail {
        Action::Fail { rcpts, reason }
    } else {
        Action::Defer { rcpts, reason }
    });
}

//! unwrap → decide → wrap for one spooled message: turns the message and
//! its pending recipients into actions, one copy per group of recipients
//! that get the same bytes.
//!
//! Recipients in the internal domains get the message opened: decrypted
//! with the key its RecipientInfo names (the recipient's own identities
//! first, then the organisation-wide ones), signatures verified, and
//! delivered plain or re-encrypted to the mailbox's current OCES3 key, with
//! an `X-SMIME-Gateway` header saying what was done. Mail that cannot be
//! opened is delivered unchanged with the reason, or quarantined. Other
//! recipients get the message unchanged. Pure: the caller supplies the
//! keys and the time.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::{Deliver, OnUndecryptable, Settings};
use crate::pki::Keyring;
use crate::smime::mime::{self, Shape};
use crate::smime::unwrap::{self, Report, Unwrapped};
use crate::smime::{cms, header};
use crate::smtp::address::domain_of;
use crate::spool::Envelope;

/// What the pipeline needs besides the message.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub keys: &'a Keyring,
    /// Unix seconds.
    pub now: i64,
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
    for rcpt in external {
        deliver(rcpt, Cow::Borrowed(body), None, &mut out);
    }
    if internal.is_empty() {
        return out;
    }

    let shape = mime::shape(body);
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
        let result = opened.entry(indices.clone()).or_insert_with(|| {
            let keys: Vec<_> = indices.iter().map(|&i| &ctx.keys.identities[i]).collect();
            unwrap::unwrap(body, &keys, &ctx.keys.anchors, ctx.now)
        });
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

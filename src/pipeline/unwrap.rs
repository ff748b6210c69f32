//! Internal mailboxes: the message opened with the organisation's keys
//! (the mailbox's own identities first, then the organisation-wide ones;
//! expired and revoked keys too), its signatures verified, and delivered
//! plain or re-encrypted to the mailbox's current OCES3 key with an
//! `X-SMIME-Gateway` header saying what was done, layer by layer. Each
//! signature's verdict is formed here from what `smime` verified, how the
//! signer relates to the header From, and the signer certificate's
//! revocation as the queue found it: a signer whose revocation is not
//! known yet is asked for ([`Action::CheckSigner`]) and the queue runs the
//! pipeline again with the answer; a signature naming a certificate
//! nobody holds makes it ask LDAP for From's certificates the same way. Mail that cannot be opened is delivered
//! unchanged with the reason, or quarantined; signer certificates of valid
//! signatures are offered for harvesting.
//!
//! Why long: the mailbox actions, the verdicts and the harvest binding
//! share the report they read; their tests are in `unwrap/tests.rs`.

use std::borrow::Cow;
use std::sync::Arc;

use openssl::x509::X509;

use super::{efail, Action, Actions, Context, HarvestOffer};
use crate::blob::{Blob, InMemory, Spill};
use crate::config::Revocation;
use crate::config::{Deliver, Encryption, OnUndecryptable};
use crate::mail::address::{self, normalize};
use crate::mail::headers;
use crate::metrics::Event;
use crate::pki::directory::fingerprint;
use crate::pki::oces;
use crate::pki::signer::{self, answer_key, Relation, SignerRevocation, Ties};
use crate::pki::Identity;
use crate::smime::cms::Chain;
use crate::smime::mime::{self, Shape};
use crate::smime::scan::{self, Seen};
use crate::smime::unwrap::{self, Report, Unwrapped, Verdict, Verifier};
use crate::smime::{cms, header, SmimeError};
use crate::spool::Envelope;

/// An internal recipient and how its mailbox takes mail.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub rcpt: String,
    pub deliver: Deliver,
    pub encryption: Encryption,
}

/// The actions for internal mailboxes. The message is opened once per set
/// of candidate keys, not once per recipient; the recipients are taken key
/// set by key set, so one decrypted copy exists at a time however many
/// key sets the message fans out to. The message's `shape` (which may hold
/// its whole CMS) is let go once the first key set has opened it.
pub fn mailboxes<'a>(
    envelope: &Envelope,
    mailboxes: Vec<Mailbox>,
    body: &'a [u8],
    shape: Arc<Shape>,
    ctx: &Context<'_>,
    out: &mut Actions<'a>,
) {
    mailboxes_at(envelope, mailboxes, body, shape, ctx, ctx.now, out);
}

/// [`mailboxes`] with signatures verified as of `verify_at` (Unix
/// seconds) instead of `ctx.now`: archive migration verifies stored mail
/// as of its arrival, while the key it re-encrypts to is the one current
/// at `ctx.now`.
pub fn mailboxes_at<'a>(
    envelope: &Envelope,
    mailboxes: Vec<Mailbox>,
    body: &'a [u8],
    shape: Arc<Shape>,
    ctx: &Context<'_>,
    verify_at: i64,
    out: &mut Actions<'a>,
) {
    if mailboxes.is_empty() {
        return;
    }
    // The enveloped data parsed once: for the question which re-encrypting
    // mailboxes it is encrypted to already, and for the first opening.
    let mut parsed = match &*shape {
        Shape::Enveloped { cms: der } => cms::parse(der).ok(),
        _ => None,
    };
    let already: Vec<bool> = {
        mailboxes
            .iter()
            .map(|m| {
                let owner = owner_of(ctx, &m.rcpt);
                let target = ctx.keys.current_oces3(&owner, ctx.now);
                match (&parsed, target, m.deliver) {
                    (Some(c), Some(t), Deliver::Reencrypt) => crate::ossl::is_recipient(c, &t.cert),
                    _ => false,
                }
            })
            .collect()
    };
    let encrypted = matches!(&*shape, Shape::Enveloped { .. });
    let mut shape = Some(shape);
    let mut mailboxes: Vec<(Vec<usize>, bool, Mailbox)> = mailboxes
        .into_iter()
        .zip(already)
        .map(|(m, already)| (ctx.keys.candidate_indices(&m.rcpt), already, m))
        .collect();
    mailboxes.sort_by(|a, b| a.0.cmp(&b.0));
    // The message opened with the current key set.
    let mut opened: Option<(Vec<usize>, Unwrapped)> = None;
    let mut seen: Option<Seen> = ctx.seen;
    for (
        indices,
        already,
        Mailbox {
            rcpt,
            deliver: mode,
            encryption,
        },
    ) in mailboxes
    {
        let owner = owner_of(ctx, &rcpt);
        let target = ctx.keys.current_oces3(&owner, ctx.now);

        if let (true, Some(t)) = (already, target) {
            let value = format!(
                "passed; reason=\"already encrypted to the mailbox key\"; key={}",
                header::quote(&t.info.subject_cn)
            );
            let note = Some("already encrypted to the mailbox key: passed unchanged".into());
            deliver_traced(out, rcpt, ctx, body, &value, note, true);
            continue;
        }

        let first = opened.as_ref().is_none_or(|(k, _)| *k != indices);
        if first {
            // The previous key set's copy is dropped before this one is made.
            drop(opened.take());
            let keys: Vec<_> = indices.iter().map(|&i| &ctx.keys.identities[i]).collect();
            let verifier = Verifier {
                anchors: &ctx.keys.anchors,
                known: ctx.known,
                kept: Some(cms::KeptChains {
                    chains: &ctx.keys.signer_chains,
                    clock: ctx.now,
                }),
            };
            // The shape read for the plan serves the first opening; later
            // key sets read the message again (rare: keys per mailbox).
            let known = shape.take();
            let first_parse = parsed.take();
            let mut result = unwrap::unwrap_into(
                body,
                known.as_deref(),
                first_parse,
                &keys,
                verifier,
                verify_at,
                ctx.spill,
            );
            drop(known);
            judge(&mut result, body, ctx);
            opened = Some((indices, result));
        }
        let Some((_, result)) = opened.as_ref() else {
            continue;
        };
        if first {
            ask_revocation(result, ctx, out);
            ask_ldap(result, body, ctx, out);
        }
        if ctx.settings.certificates.harvest {
            harvest(result, envelope, body, ctx.settings, out);
        }
        if first {
            observe(result, out);
        }
        match result {
            Unwrapped::Opened { message, report } => {
                let mut seen = *seen.get_or_insert_with(|| scan::scan(body));
                // A layer without integrity below one with it (AES-GCM
                // around captured CBC) shows only once opened.
                seen.without_integrity |= report.without_integrity;
                let protected =
                    match efail::protect(message, seen, report.decrypted_content_signed()) {
                        Ok(p) => p,
                        // It cannot be made inert: the plaintext stays here.
                        Err(e) => {
                            let reason = SmimeError::from(e).to_string();
                            undecryptable(out, rcpt, envelope, ctx, body, report, &reason);
                            continue;
                        }
                    };
                let message: &[u8] = &protected.message;
                let mut value = report.header_value().unwrap_or_else(|| "decrypted".into());
                let mut note = Some(note_for(report));
                if protected.integrity_none {
                    value.push_str("; integrity=none");
                    if protected.neutralised {
                        value.push_str("; html=neutralised");
                        note = note.map(|n| {
                            format!("{n}; no integrity: remote references in HTML removed")
                        });
                    }
                }
                let sealed = encrypted || report.key().is_some();
                match (mode, target) {
                    (Deliver::Plain, _) => {
                        deliver_traced(out, rcpt, ctx, message, &value, note, sealed)
                    }
                    (Deliver::Reencrypt, Some(t)) => {
                        match reencrypt_into(message, &value, t, &[], encryption, ctx.spill, sealed)
                        {
                            Ok(wrapped) => {
                                let note = note
                                    .map(|n| format!("{n}; re-encrypted to {}", t.info.subject_cn));
                                out.deliver(rcpt, wrapped, note);
                            }
                            Err(e @ SmimeError::Scratch(_)) => out.defer(rcpt, &e.to_string()),
                            Err(e) => {
                                let value = format!(
                                    "not-reencrypted; reason={}",
                                    header::quote(&e.to_string())
                                );
                                let note = Some(format!(
                                    "re-encryption failed ({e}): delivered unchanged"
                                ));
                                deliver_traced(out, rcpt, ctx, body, &value, note, sealed);
                            }
                        }
                    }
                    (Deliver::Reencrypt, None) => {
                        let value =
                            "not-reencrypted; reason=\"no valid OCES3 key for this mailbox\"";
                        let note =
                            Some("no valid OCES3 key to re-encrypt to: delivered unchanged".into());
                        deliver_traced(out, rcpt, ctx, body, value, note, sealed);
                    }
                }
            }
            Unwrapped::Unchanged { report } => match report.header_value() {
                Some(v) => {
                    // Encrypted parts it holds were not opened.
                    let sealed =
                        encrypted || report.nested.as_ref().is_some_and(|n| n.encrypted > 0);
                    deliver_traced(out, rcpt, ctx, body, &v, Some(note_for(report)), sealed)
                }
                None if header::present(body) => {
                    out.deliver(rcpt, Cow::Owned(header::strip(body)), None)
                }
                None => out.deliver(rcpt, Cow::Borrowed(body), None),
            },
            Unwrapped::Failed {
                error: error @ SmimeError::Scratch(_),
                ..
            } => out.defer(rcpt, &error.to_string()),
            Unwrapped::Failed { error, report } => {
                let not_allowed = (encrypted && matches!(error, SmimeError::NoKey(_)))
                    .then(|| held_but_not_allowed(&mime::shape(body), ctx, &rcpt))
                    .flatten();
                if let Some(cn) = not_allowed {
                    // The organisation holds the key, but it is not one
                    // that opens this recipient's mail: passed unchanged.
                    let reason = format!(
                        "the key that opens it ({cn}) may not decrypt mail for {rcpt} (decrypt_for)"
                    );
                    let value = report.failure_value(&reason);
                    let note = Some(format!("not decrypted: {reason}"));
                    deliver_traced(out, rcpt, ctx, body, &value, note, true);
                    continue;
                }
                undecryptable(out, rcpt, envelope, ctx, body, report, &error.to_string());
            }
        }
    }
}

/// Whose mailbox `rcpt` is, for the key mail to it is re-encrypted to:
/// itself when an identity names it, else the address without its
/// extension (`alice+x@` is delivered to alice, and re-encrypted to her).
fn owner_of(ctx: &Context<'_>, rcpt: &str) -> String {
    if ctx.keys.identities.iter().any(|i| i.serves(rcpt)) {
        return rcpt.to_string();
    }
    ctx.settings
        .base_address(rcpt)
        .unwrap_or_else(|| rcpt.to_string())
}

/// `rcpt` gets mail the gateway could not open as it came (`body`), with
/// the trace header saying why, or it goes to the quarantine when so
/// configured (and an operator has not released it).
fn undecryptable<'a>(
    out: &mut Actions<'a>,
    rcpt: String,
    envelope: &Envelope,
    ctx: &Context<'_>,
    body: &'a [u8],
    report: &Report,
    reason: &str,
) {
    let quarantine =
        ctx.settings.smime.on_undecryptable == OnUndecryptable::Quarantine && !envelope.released;
    if quarantine && !ctx.quarantine_full {
        out.quarantine(rcpt, reason);
    } else {
        let value = report.failure_value(reason);
        let note = Some(match quarantine {
            true => format!(
                "undecryptable: {reason}; the quarantine is full \
                 (smime.quarantine_keep_free): delivered unchanged"
            ),
            false => format!("undecryptable: {reason}"),
        });
        deliver_traced(out, rcpt, ctx, body, &value, note, true);
    }
}

/// `rcpt` gets `message` with the trace header `value`, written to the
/// spill; when the spill fails (a full disk), it is tried again later.
fn deliver_traced<'a>(
    out: &mut Actions<'a>,
    rcpt: String,
    ctx: &Context<'_>,
    message: &[u8],
    value: &str,
    note: Option<String>,
    sealed: bool,
) {
    let (message, value) = unasked(message, value, sealed);
    match ctx
        .spill
        .spill_sized(message.len() + value.len() + 64, &mut |w| {
            header::write_set(&message, &value, w)
        }) {
        Ok(traced) => out.deliver(rcpt, traced, note),
        Err(e) => out.defer(rcpt, &SmimeError::Scratch(e.to_string()).to_string()),
    }
}

/// `message` and its trace header `value` as a mailbox gets them: mail
/// that arrived encrypted (`sealed`) without its read-receipt request
/// (`header::without_receipt_requests`), the header saying so.
fn unasked<'m, 'v>(
    message: &'m [u8],
    value: &'v str,
    sealed: bool,
) -> (Cow<'m, [u8]>, Cow<'v, str>) {
    match sealed
        .then(|| header::without_receipt_requests(message))
        .flatten()
    {
        Some(m) => (
            Cow::Owned(m),
            Cow::Owned(format!("{value}; receipt-request=removed")),
        ),
        None => (Cow::Borrowed(message), Cow::Borrowed(value)),
    }
}

/// The clean (decrypted) `message` re-encrypted to `target` (and to the
/// `extra` certificates), with the trace header `value;
/// reencrypted-to="…"`, written to `spill`: what a `reencrypt` mailbox
/// gets (without extras).
fn reencrypt_into(
    message: &[u8],
    value: &str,
    target: &Identity,
    extra: &[X509],
    encryption: Encryption,
    spill: &dyn Spill,
    sealed: bool,
) -> Result<Blob, SmimeError> {
    let (message, value) = unasked(message, value, sealed);
    let message: &[u8] = &message;
    let traced = format!(
        "{value}; reencrypted-to={}",
        header::quote(&target.info.subject_cn)
    );
    let mut certs = Vec::with_capacity(1 + extra.len());
    certs.push(target.cert.clone());
    certs.extend(extra.iter().cloned());
    unwrap::spill_enveloped(message, Some(&traced), &certs, encryption, spill)
}

/// [`reencrypt_into`] in memory: what archive migration writes, the same
/// bytes a `reencrypt` mailbox gets, plus the `extra` recipients
/// migration is configured with.
pub fn reencrypt(
    message: &[u8],
    value: &str,
    target: &Identity,
    extra: &[X509],
    encryption: Encryption,
) -> Result<Vec<u8>, SmimeError> {
    // An archived copy keeps every field it was delivered with.
    reencrypt_into(message, value, target, extra, encryption, &InMemory, false).map(|b| b.to_vec())
}

/// Adds to every signature of `result` how its signer relates to the
/// header From of `body` and its revocation as far as known.
fn judge(result: &mut Unwrapped, body: &[u8], ctx: &Context<'_>) {
    let report = match result {
        Unwrapped::Opened { report, .. }
        | Unwrapped::Unchanged { report }
        | Unwrapped::Failed { report, .. } => report,
    };
    if report.signatures().next().is_none() {
        return;
    }
    let from = headers::from_address(body);
    let ties = Ties::new(ctx.settings, ctx.keys);
    let off = ctx.settings.trust.revocation == Revocation::Off;
    for sig in report.signatures_mut() {
        let Some(first) = sig.verified.signer.clone() else {
            continue;
        };
        // Of parallel signers, the one nearest to From is named.
        let rank = |r: Relation| match r {
            Relation::Exact => 0,
            Relation::SameDomain => 1,
            Relation::Organisation => 2,
            Relation::Differs => 3,
        };
        let mut best = signer::relation(&first, from.as_deref(), &ties);
        let mut best_at = None;
        for (i, (c, _)) in sig.verified.co_signers.iter().enumerate() {
            let r = signer::relation(c, from.as_deref(), &ties);
            if rank(r) < rank(best) {
                (best, best_at) = (r, Some(i));
            }
        }
        if let Some(i) = best_at {
            sig.name_co_signer(i);
        }
        let Some(cert) = sig.verified.signer.clone() else {
            continue;
        };
        sig.relation = Some(best);
        if sig.verified.chain != Chain::Trusted {
            continue;
        }
        sig.revocation = Some(if off {
            SignerRevocation::NotChecked
        } else {
            ctx.signer_revocation
                .get(&answer_key(&cert, &sig.verified.issuers))
                .cloned()
                .unwrap_or_else(|| SignerRevocation::Unknown("not asked yet".into()))
        });
    }
}

/// When the message's (outer) enveloped data names a key the
/// organisation holds that `decrypt_for` does not allow for `rcpt`: that
/// key's name.
fn held_but_not_allowed(shape: &Shape, ctx: &Context<'_>, rcpt: &str) -> Option<String> {
    let Shape::Enveloped { cms: der } = shape else {
        return None;
    };
    let parsed = cms::parse(der).ok()?;
    ctx.keys
        .identities
        .iter()
        .find(|id| !id.may_open(rcpt) && crate::ossl::is_recipient(&parsed, &id.cert))
        .map(|id| id.info.subject_cn.clone())
}

/// Asks for the revocation of trusted signers not known yet (once per
/// message and key set).
fn ask_revocation(result: &Unwrapped, ctx: &Context<'_>, out: &mut Actions<'_>) {
    if ctx.settings.trust.revocation == Revocation::Off {
        return;
    }
    let report = match result {
        Unwrapped::Opened { report, .. }
        | Unwrapped::Unchanged { report }
        | Unwrapped::Failed { report, .. } => report,
    };
    for sig in report.signatures() {
        let (Some(cert), Chain::Trusted) = (&sig.verified.signer, &sig.verified.chain) else {
            continue;
        };
        let issuers = &sig.verified.issuers;
        if issuers.is_empty() {
            continue;
        }
        let key = answer_key(cert, issuers);
        let asked = out.iter().any(
            |a| matches!(a, Action::CheckSigner { cert: c, issuers: i } if answer_key(c, i) == key),
        );
        if !ctx.signer_revocation.contains_key(&key) && !asked {
            out.push(Action::CheckSigner {
                cert: cert.clone(),
                issuers: issuers.clone(),
            });
        }
    }
}

/// Asks LDAP for the certificates of From when a signature names one
/// nobody holds (once per message).
fn ask_ldap(result: &Unwrapped, body: &[u8], ctx: &Context<'_>, out: &mut Actions<'_>) {
    if ctx.ldap_asked || ctx.settings.certificates.ldap.is_empty() {
        return;
    }
    let report = match result {
        Unwrapped::Opened { report, .. }
        | Unwrapped::Unchanged { report }
        | Unwrapped::Failed { report, .. } => report,
    };
    let unknown = report
        .signatures()
        .any(|s| s.verified.math == crate::smime::cms::Math::UnknownSigner);
    let asked = out.iter().any(|a| matches!(a, Action::FindSigner { .. }));
    if let (true, false, Some(address)) = (unknown, asked, headers::from_address(body)) {
        out.push(Action::FindSigner { address });
    }
}

fn note_for(report: &Report) -> String {
    report.header_value().unwrap_or_default()
}

/// Counts a decryption or a failure to decrypt, and each signature's
/// verdict, once per message and key set.
fn observe(result: &Unwrapped, out: &mut Actions<'_>) {
    let report = match result {
        Unwrapped::Opened { report, .. }
        | Unwrapped::Unchanged { report }
        | Unwrapped::Failed { report, .. } => report,
    };
    for sig in report.signatures() {
        out.push(Action::Observed(Event::Verified(sig.verdict().token())));
    }
    let event = match result {
        Unwrapped::Opened { report, .. } => match report.key() {
            Some(k) => {
                out.push(Action::Opened(k.clone()));
                Event::Decrypted(k.generation.to_string())
            }
            None => return,
        },
        Unwrapped::Failed { error, .. } => Event::Undecryptable(error.label()),
        Unwrapped::Unchanged { .. } => return,
    };
    out.push(Action::Observed(event));
}

/// Offers the signer certificates of valid signatures whose signer is the
/// From address itself (`exact`: a certificate is kept for an address
/// only from mail that address signed), once per message, each with the
/// address it is bound to (or why the message binds it to nobody). An
/// address of the organisation's own is bound by nothing a message says:
/// anyone outside can write it as envelope sender and From, and a CA may
/// issue anyone a certificate naming it.
fn harvest(
    result: &Unwrapped,
    envelope: &Envelope,
    body: &[u8],
    settings: &crate::config::Settings,
    out: &mut Actions<'_>,
) {
    let report = match result {
        Unwrapped::Opened { report, .. } | Unwrapped::Unchanged { report } => report,
        Unwrapped::Failed { .. } => return,
    };
    if report.signatures().next().is_none() {
        return;
    }
    let from = headers::from_addresses(body);
    for sig in report.signatures() {
        let (Verdict::Valid, Some(Relation::Exact), Some(cert)) =
            (sig.verdict(), sig.relation, sig.cert())
        else {
            continue;
        };
        let fp = fingerprint(cert);
        if out
            .iter()
            .any(|a| matches!(a, Action::Harvest(o) if fingerprint(&o.cert) == fp))
        {
            continue;
        }
        let names: Vec<String> = cert
            .to_der()
            .ok()
            .and_then(|d| oces::classify(&d).ok())
            .map(|i| i.emails)
            .unwrap_or_default();
        out.push(Action::Harvest(HarvestOffer {
            cert: cert.clone(),
            capabilities: sig.verified.capabilities.clone(),
            signed_at: sig.verified.claimed_time,
            bound: binding(&envelope.mail_from, &from, &names).and_then(|a| {
                if settings.is_own_address(&a) {
                    Err(format!(
                        "<{a}> is the organisation's own address: its certificates come from the operator, never from mail"
                    ))
                } else {
                    Ok(a)
                }
            }),
        }));
    }
}

/// The address a signer certificate is bound to by a message: its header
/// From (one address) and its envelope sender are that address, and the
/// certificate names it. Anything else proves nothing about who holds the
/// certificate: a certificate naming `post@domstol.dk` sent by
/// `random@evil.example` must not become the court's.
pub fn binding(
    envelope_sender: &str,
    header_from: &[String],
    cert_emails: &[String],
) -> Result<String, String> {
    let from = match header_from {
        [one] => normalize(one),
        [] => return Err("the message has no readable header From".into()),
        _ => return Err("the header From names more than one address".into()),
    };
    let sender = normalize(envelope_sender);
    if !address::same(&sender, &from) {
        return Err(format!(
            "the envelope sender <{sender}> is not the header From <{from}>"
        ));
    }
    if !cert_emails.iter().any(|e| address::same(e, &from)) {
        return Err(format!("the certificate does not name <{from}>"));
    }
    Ok(address::key(&from))
}

#[cfg(test)]
mod tests;

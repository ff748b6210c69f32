//! Internal mailboxes: the message opened with the organisation's keys
//! (the mailbox's own identities first, then the organisation-wide ones;
//! expired and revoked keys too), its signatures verified, and delivered
//! plain or re-encrypted to the mailbox's current OCES3 key with an
//! `X-SMIME-Gateway` header saying what was done. Mail that cannot be
//! opened is delivered unchanged with the reason, or quarantined; signer
//! certificates of valid signatures are offered for harvesting.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{Action, Actions, Context, HarvestOffer};
use crate::config::{Deliver, Encryption, OnUndecryptable};
use crate::mail::address::normalize;
use crate::metrics::Event;
use crate::pki::directory::fingerprint;
use crate::pki::oces;
use crate::smime::cms::SigStatus;
use crate::smime::mime::Shape;
use crate::smime::unwrap::{self, Report, Unwrapped};
use crate::smime::{cms, header};
use crate::spool::Envelope;

/// An internal recipient and how its mailbox takes mail.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub rcpt: String,
    pub deliver: Deliver,
    pub encryption: Encryption,
}

/// The actions for internal mailboxes. The message is opened once per set
/// of candidate keys, not once per recipient.
pub fn mailboxes<'a>(
    envelope: &Envelope,
    mailboxes: Vec<Mailbox>,
    body: &'a [u8],
    shape: &Shape,
    ctx: &Context<'_>,
    out: &mut Actions<'a>,
) {
    let mut opened: HashMap<Vec<usize>, Unwrapped> = HashMap::new();
    for Mailbox {
        rcpt,
        deliver: mode,
        encryption,
    } in mailboxes
    {
        let target = ctx.keys.current_oces3(&rcpt, ctx.now);

        if mode == Deliver::Reencrypt {
            if let (Some(t), Shape::Enveloped { cms: der }) = (target, shape) {
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
                    out.deliver(rcpt, Cow::Owned(header::set(body, &value)), note);
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
            harvest(result, envelope, body, out);
        }
        if first {
            observe(result, out);
        }
        match result {
            Unwrapped::Opened { message, report } => {
                let value = report.header_value().unwrap_or_else(|| "decrypted".into());
                let note = Some(note_for(report));
                match (mode, target) {
                    (Deliver::Plain, _) => {
                        out.deliver(rcpt, Cow::Owned(header::set(message, &value)), note);
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
                                out.deliver(rcpt, Cow::Owned(header::set(&wrapped, &value)), note);
                            }
                            Err(e) => {
                                let value = format!(
                                    "not-reencrypted; reason={}",
                                    header::quote(&e.to_string())
                                );
                                let note = Some(format!(
                                    "re-encryption failed ({e}): delivered unchanged"
                                ));
                                out.deliver(rcpt, Cow::Owned(header::set(body, &value)), note);
                            }
                        }
                    }
                    (Deliver::Reencrypt, None) => {
                        let value =
                            "not-reencrypted; reason=\"no valid OCES3 key for this mailbox\"";
                        let note =
                            Some("no valid OCES3 key to re-encrypt to: delivered unchanged".into());
                        out.deliver(rcpt, Cow::Owned(header::set(body, value)), note);
                    }
                }
            }
            Unwrapped::Unchanged { report } => match report.header_value() {
                Some(v) => out.deliver(
                    rcpt,
                    Cow::Owned(header::set(body, &v)),
                    Some(note_for(report)),
                ),
                None if header::present(body) => {
                    out.deliver(rcpt, Cow::Owned(header::strip(body)), None)
                }
                None => out.deliver(rcpt, Cow::Borrowed(body), None),
            },
            Unwrapped::Failed { error } => {
                let reason = error.to_string();
                if ctx.settings.smime.on_undecryptable == OnUndecryptable::Quarantine
                    && !envelope.released
                {
                    out.quarantine(rcpt, &reason);
                } else {
                    let value = format!("undecryptable; reason={}", header::quote(&reason));
                    let note = Some(format!("undecryptable: {reason}"));
                    out.deliver(rcpt, Cow::Owned(header::set(body, &value)), note);
                }
            }
        }
    }
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
fn observe(result: &Unwrapped, out: &mut Actions<'_>) {
    let event = match result {
        Unwrapped::Opened { report, .. } => match &report.key {
            Some(k) => Event::Decrypted(k.generation.to_string()),
            None => return,
        },
        Unwrapped::Failed { error } => Event::Undecryptable(error.label()),
        Unwrapped::Unchanged { .. } => return,
    };
    out.push(Action::Observed(event));
}

/// Offers the signer certificate of a valid signature, once per message,
/// with the address it is bound to (or why it is bound to none).
fn harvest(result: &Unwrapped, envelope: &Envelope, body: &[u8], out: &mut Actions<'_>) {
    let report = match result {
        Unwrapped::Opened { report, .. } | Unwrapped::Unchanged { report } => report,
        Unwrapped::Failed { .. } => return,
    };
    let Some(sig) = &report.signature else { return };
    let (SigStatus::Valid, Some(cert)) = (sig.status, &sig.cert) else {
        return;
    };
    let fp = fingerprint(cert);
    if out
        .iter()
        .any(|a| matches!(a, Action::Harvest(o) if fingerprint(&o.cert) == fp))
    {
        return;
    }
    let names: Vec<String> = cert
        .to_der()
        .ok()
        .and_then(|d| oces::classify(&d).ok())
        .map(|i| i.emails)
        .unwrap_or_default();
    let from = crate::mail::headers::from_addresses(body);
    out.push(Action::Harvest(HarvestOffer {
        cert: cert.clone(),
        capabilities: sig.capabilities.clone(),
        signed_at: sig.signing_time,
        bound: binding(&envelope.mail_from, &from, &names),
    }));
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
    if !sender.eq_ignore_ascii_case(&from) {
        return Err(format!(
            "the envelope sender <{sender}> is not the header From <{from}>"
        ));
    }
    if !cert_emails.iter().any(|e| e.eq_ignore_ascii_case(&from)) {
        return Err(format!("the certificate does not name <{from}>"));
    }
    Ok(from.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::binding;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_certificate_is_bound_only_to_its_own_sender() {
        let court = v(&["post@domstol.dk"]);
        assert_eq!(
            binding("post@Domstol.dk", &v(&["Post@domstol.dk"]), &court).as_deref(),
            Ok("post@domstol.dk")
        );
        // The poisoning mail, every way round.
        for (sender, from) in [
            ("random@evil.example", "random@evil.example"),
            ("random@evil.example", "post@domstol.dk"),
            ("post@domstol.dk", "random@evil.example"),
        ] {
            assert!(
                binding(sender, &v(&[from]), &court).is_err(),
                "{sender} {from}"
            );
        }
        assert!(binding(
            "post@domstol.dk",
            &v(&["post@domstol.dk", "post@domstol.dk"]),
            &court
        )
        .is_err());
        assert!(binding("post@domstol.dk", &[], &court).is_err());
    }
}

//! `smime-gateway explain`: what the outbound rules would do with mail to
//! one recipient at a given time, and why: the rule, every certificate
//! considered with the reason it was taken or refused (and the plain
//! `ldap://` directories not asked for one), the signing
//! identity and the outcome; for a given message its sender encrypted,
//! whom it is encrypted to and what that means under the rule. `certs
//! show` uses the same report. It asks the same `decide` the queue does,
//! so it cannot disagree with it.

use std::fmt::Write as _;

use crate::config::{Deliver, Instant};
use crate::ossl::RecipientId;
use crate::pipeline::decide::{self, Treatment};
use crate::policy::{self, Outcome};
use crate::snapshot::Live;

/// The message the report is for.
pub enum Message {
    /// Any plain message (none was given).
    NotGiven,
    /// A given message its sender did not encrypt.
    Plain,
    /// A given message its sender encrypted to these certificates.
    Sealed(Vec<RecipientId>),
}

/// The report, and whether mail would leave (true) or bounce / be held.
/// The treatment comes from the same `decide` the queue uses.
pub async fn explain(
    live: &Live,
    sender: &str,
    rcpt: &str,
    at: i64,
    message: &Message,
) -> (String, bool) {
    // The addresses as the SMTP session keeps them (domains as A-labels),
    // so that the answer is the queue's.
    let (sender, rcpt) = (
        crate::mail::address::normalize(sender),
        crate::mail::address::normalize(rcpt),
    );
    let (sender, rcpt) = (sender.as_str(), rcpt.as_str());
    let snapshot = live.current();
    let settings = &snapshot.settings;
    let mut out = String::new();
    let _ = writeln!(out, "recipient:   {rcpt}");
    let _ = writeln!(
        out,
        "sender:      {} (envelope and header From; as if submitted on the submission path)",
        if sender.is_empty() { "<>" } else { sender }
    );
    let _ = writeln!(out, "at:          {}", Instant { unix: at });
    match settings.policy.oces2_cutoff {
        Some(c) if at > c.unix => {
            let _ = writeln!(
                out,
                "OCES2 cutoff: {c} (passed: OCES2 is not used unless a rule asks for it)"
            );
        }
        Some(c) => {
            let _ = writeln!(out, "OCES2 cutoff: {c} (not yet passed)");
        }
        None => {}
    }
    let sealed = match message {
        Message::NotGiven => None,
        Message::Plain => {
            let _ = writeln!(out, "message:     not encrypted by its sender");
            None
        }
        Message::Sealed(ids) => {
            let names: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            let _ = writeln!(
                out,
                "message:     encrypted by its sender to {}",
                names.join("; ")
            );
            Some(ids.as_slice())
        }
    };
    let revoked = live.revoked.current();
    // As if `sender` sent it with itself in the header From, on the
    // submission path: the case in which it may be signed at all.
    let origin = decide::as_submitted(sender);
    let treatment = decide::decide(&snapshot, live, &revoked, &origin, rcpt, sealed, at).await;
    let d = match treatment {
        Treatment::Mailbox { deliver, .. } => {
            let how = match (deliver, snapshot.keys.current_oces3(rcpt, at)) {
                (Deliver::Plain, _) => "delivered decrypted".to_string(),
                (Deliver::Reencrypt, Some(t)) => {
                    format!("re-encrypted to \"{}\"", t.info.subject_cn)
                }
                (Deliver::Reencrypt, None) => {
                    "delivered unchanged (no valid OCES3 key to re-encrypt to)".to_string()
                }
            };
            let _ = writeln!(
                out,
                "mailbox:     internal; encrypted mail is opened and {how}"
            );
            return (out, true);
        }
        Treatment::Unchanged(why) => {
            let _ = writeln!(
                out,
                "rule:        none applies ({why}); the message leaves unchanged"
            );
            return (out, true);
        }
        Treatment::Outbound(d) => d,
    };
    if let Some(rule) = policy::rule_for(settings, rcpt, at) {
        let _ = writeln!(
            out,
            "rule:        {:?} (match {:?}; generation {:?}; encrypt {:?}; sign {}; missing certificate: {:?})",
            rule.name, rule.patterns, rule.generation, rule.encrypt, rule.sign, rule.on_missing_certificate
        );
    }
    let _ = writeln!(out, "certificates considered:");
    if d.considered.is_empty() {
        let _ = writeln!(out, "  none found");
    }
    for line in &d.considered {
        let _ = writeln!(out, "  {line}");
    }
    for l in settings
        .certificates
        .ldap
        .iter()
        .filter(|l| !l.authenticated())
    {
        let _ = writeln!(
            out,
            "  not asked: LDAP {} is plain ldap:// (unauthenticated): its answers serve to find \
             signers' certificates, never a certificate to encrypt to (use ldaps://, starttls, \
             or import a checked certificate with `certs import`)",
            l.url
        );
    }
    let _ = writeln!(out, "signing:     {}", d.signer);
    let leaves = match &d.outcome {
        Outcome::PassThrough(why) => {
            let _ = writeln!(out, "outcome:     unchanged ({why})");
            true
        }
        Outcome::Send {
            encrypt_to,
            sign_with,
            encryption,
        } => {
            if encrypt_to.is_empty() {
                let _ = writeln!(
                    out,
                    "outcome:     send plain{}",
                    if sign_with.is_some() { ", signed" } else { "" }
                );
            } else {
                let names: Vec<String> = encrypt_to
                    .iter()
                    .map(|c| crate::smime::cms::subject(c))
                    .collect();
                let _ = writeln!(
                    out,
                    "outcome:     send encrypted ({encryption:?}) to {}{}",
                    names.join("; "),
                    if sign_with.is_some() { ", signed" } else { "" }
                );
            }
            true
        }
        Outcome::Bounce(why) => {
            let _ = writeln!(out, "outcome:     bounce: {why}");
            false
        }
        Outcome::Hold(why) => {
            let _ = writeln!(out, "outcome:     hold in the queue: {why}");
            false
        }
        Outcome::Defer(why) => {
            let _ = writeln!(out, "outcome:     defer (temporary): {why}");
            false
        }
    };
    (out, leaves)
}

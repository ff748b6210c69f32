//! `smime-gateway explain`: what the outbound rules would do with mail to
//! one recipient at a given time, and why: the rule, every certificate
//! considered with the reason it was taken or refused, the signing
//! identity and the outcome. `certs show` uses the same report.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{Instant, Settings};
use crate::pki::resolve::Resolver;
use crate::pki::Keyring;
use crate::policy::{self, Outcome};

/// The report, and whether mail would leave (true) or bounce / be held.
pub async fn explain(
    settings: &Settings,
    keys: &Arc<Keyring>,
    resolver: &Resolver,
    sender: &str,
    rcpt: &str,
    at: i64,
) -> (String, bool) {
    let mut out = String::new();
    let _ = writeln!(out, "recipient:   {rcpt}");
    let _ = writeln!(
        out,
        "sender:      {}",
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
    let Some(rule) = policy::rule_for(settings, rcpt, at) else {
        let _ = writeln!(
            out,
            "rule:        none matches; the message leaves unchanged"
        );
        return (out, true);
    };
    let _ = writeln!(
        out,
        "rule:        {:?} (match {:?}; generation {:?}; encrypt {:?}; sign {}; missing certificate: {:?})",
        rule.name, rule.patterns, rule.generation, rule.encrypt, rule.sign, rule.on_missing_certificate
    );
    let (candidates, lookup_error) = resolver
        .candidates(keys, settings, rcpt, at, |info| {
            policy::wanted(settings, rule, info, at)
        })
        .await;
    let d = policy::decide(
        settings,
        keys,
        sender,
        rcpt,
        &candidates,
        lookup_error.as_deref(),
        at,
    );
    let _ = writeln!(out, "certificates considered:");
    if d.considered.is_empty() {
        let _ = writeln!(out, "  none found");
    }
    for line in &d.considered {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(e) = &lookup_error {
        let _ = writeln!(out, "  lookup failed: {e}");
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

//! External recipients: the copies the outbound rules decided, signed
//! and/or encrypted, grouped so that recipients protected the same way
//! share one copy; bounced and held recipients as actions.

use std::borrow::Cow;

use super::{Action, Actions, Context, Copy};
use crate::metrics::Event;
use crate::pki::facts::fingerprint;
use crate::policy::{Decision, Outcome};
use crate::smime::{sign, SmimeError};

/// External recipients: what the rules decided, grouped so that
/// recipients with the same outcome share one copy.
pub fn outbound<'a>(
    rcpts: Vec<(String, &Decision)>,
    body: &'a [u8],
    ctx: &Context<'_>,
    out: &mut Actions<'a>,
) {
    // Groups of recipients protected the same way: (key, recipients, decision).
    let mut groups: Vec<(String, Vec<String>, &Decision)> = Vec::new();
    for (rcpt, decision) in rcpts {
        match &decision.outcome {
            Outcome::PassThrough(_) => out.deliver(rcpt, Cow::Borrowed(body), None),
            Outcome::Send {
                encrypt_to,
                sign_with: None,
                ..
            } if encrypt_to.is_empty() => {
                out.deliver(rcpt, Cow::Borrowed(body), Some(decision.summary()))
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
            Outcome::Bounce(reason) => out.fail(rcpt, reason),
            Outcome::Hold(reason) | Outcome::Defer(reason) => out.defer(rcpt, reason),
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
        match sign::protect_into(body, signer, encrypt_to, *encryption, ctx.spill) {
            Ok(bytes) => {
                if let Some((id, _)) = signer {
                    out.push(Action::Observed(Event::Signed(
                        id.info.generation.to_string(),
                    )));
                }
                for cert in encrypt_to {
                    let generation = crate::pki::facts::generation(cert);
                    out.push(Action::Observed(Event::Encrypted(generation.to_string())));
                }
                out.push(Action::Deliver(Copy {
                    rcpts,
                    body: bytes.into(),
                    note: Some(decision.summary()),
                }))
            }
            // Too deeply nested to be read: trying again will not help.
            Err(e @ SmimeError::Unreadable(_)) => {
                let reason = format!("cannot protect the message: {e}");
                for rcpt in rcpts {
                    out.fail(rcpt, &reason);
                }
            }
            Err(e) => {
                let reason = format!("cannot protect the message: {e}");
                for rcpt in rcpts {
                    out.defer(rcpt, &reason);
                }
            }
        }
    }
}

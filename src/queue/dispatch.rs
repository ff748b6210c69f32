//! Carrying out the pipeline's actions for one attempt: each copy handed
//! to the next hop of each of its recipients (S/MIME mail for internal
//! recipients under the gateway's own return path), bounced and held
//! recipients noted, signer certificates offered to the directory,
//! undecryptable mail put in the quarantine. What happened to each
//! recipient is collected for `record`.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::blocking;
use super::record::{Attempted, POLICY, QUARANTINE};
use crate::delivery::{self, route, Outbound, RcptOutcome};
use crate::metrics;
use crate::pipeline::{decide, Action, Copy};
use crate::snapshot::Snapshot;
use crate::spool::{Spooled, Store};

/// The message being sent and what holds for all its copies.
pub(super) struct Sending<'a> {
    pub msg: &'a Spooled,
    pub snapshot: &'a Snapshot,
    pub message_id: &'a str,
    /// It holds encrypted content at any depth.
    pub smime: bool,
    /// Connections kept to the next hops.
    pub pool: &'a delivery::Pool,
}

/// Carries out one action, adding what happened to each recipient.
pub(super) async fn carry_out(
    action: &Action<'static>,
    sending: &Sending<'_>,
    store: &Arc<Store>,
    attempted: &mut Vec<Attempted>,
) {
    let (msg, message_id) = (sending.msg, sending.message_id);
    let id = msg.id.as_str();
    let refused = |rcpts: &[String], outcome: RcptOutcome, attempted: &mut Vec<Attempted>| {
        for rcpt in rcpts {
            attempted.push(Attempted {
                rcpt: rcpt.clone(),
                hop: POLICY.into(),
                outcome: outcome.clone(),
            });
        }
    };
    match action {
        Action::Deliver(copy) => deliver(copy, sending, attempted).await,
        Action::Observed(event) => metrics::pipeline(event),
        // Recorded in the journal by the attempt.
        Action::Opened(_) => {}
        // Asked for and answered before the final run of the pipeline.
        Action::CheckSigner { .. } | Action::FindSigner { .. } => {}
        Action::Fail { rcpts, reason } => refused(
            rcpts,
            RcptOutcome::Failed(format!("550 5.7.1 {reason}")),
            attempted,
        ),
        Action::Defer { rcpts, reason } => {
            refused(rcpts, RcptOutcome::Deferred(reason.clone()), attempted)
        }
        Action::Harvest(offer) => {
            let subject = crate::smime::cms::subject(&offer.cert);
            let address = match &offer.bound {
                Ok(a) => a.clone(),
                Err(why) => {
                    info!(event = "not-harvested", queue_id = %id, subject = %subject,
                          reason = %why, "signer certificate not kept: not bound to its sender");
                    return;
                }
            };
            let directory = Arc::clone(&sending.snapshot.certs);
            let (c, caps, at, a) = (
                offer.cert.clone(),
                offer.capabilities.clone(),
                offer.signed_at,
                address.clone(),
            );
            match tokio::task::spawn_blocking(move || directory.harvest(&c, &a, &caps, at)).await {
                Ok(Ok(true)) => info!(event = "harvested", queue_id = %id, subject = %subject,
                    address = %address, "signer certificate kept as a fallback for its sender"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    warn!(queue_id = %id, error = %e, "cannot keep a harvested certificate")
                }
                Err(e) => warn!(queue_id = %id, error = %e, "harvest failed"),
            }
        }
        Action::Quarantine { rcpts, reason } => {
            let mut env = msg.envelope.clone();
            env.rcpts = rcpts.clone();
            let (s, b, r) = (Arc::clone(store), msg.body.clone(), reason.clone());
            match blocking(move || s.quarantine(&env, &b, &r)).await {
                Ok(qid) => {
                    for rcpt in rcpts {
                        warn!(event = "quarantined", queue_id = %id, quarantine_id = %qid,
                              message_id = %message_id, sender = %msg.envelope.mail_from,
                              recipient = %rcpt, reason = %reason, "undecryptable message quarantined");
                        attempted.push(Attempted {
                            rcpt: rcpt.clone(),
                            hop: QUARANTINE.into(),
                            outcome: RcptOutcome::Quarantined,
                        });
                    }
                }
                Err(e) => error!(queue_id = %id, error = %e, "cannot quarantine; will retry"),
            }
        }
    }
}

/// Hands one copy to the next hop of each of its recipients. S/MIME mail
/// (`smime`) for internal recipients goes under the gateway's own return
/// path, so that whatever the mailbox server sends back comes to the
/// gateway and never to the outside sender.
async fn deliver(copy: &Copy<'static>, sending: &Sending<'_>, attempted: &mut Vec<Attempted>) {
    let (msg, message_id, smime) = (sending.msg, sending.message_id, sending.smime);
    let settings = &sending.snapshot.settings;
    if let Some(note) = &copy.note {
        info!(event = "smime", queue_id = %msg.id, message_id = %message_id,
              recipients = %copy.rcpts.join(","), "{note}");
    }
    let eight_bit = msg.envelope.eight_bit || !copy.body.is_ascii();
    let own = settings.return_path(&msg.id);
    let mut by_hop: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for rcpt in &copy.rcpts {
        let hop = route::next_hop(settings, rcpt);
        let sender = if smime && decide::is_internal(settings, rcpt) {
            own.as_str()
        } else {
            msg.envelope.mail_from.as_str()
        };
        match by_hop
            .iter_mut()
            .find(|(h, s, _)| *h == hop && *s == sender)
        {
            Some((_, _, list)) => list.push(rcpt.clone()),
            None => by_hop.push((hop, sender, vec![rcpt.clone()])),
        }
    }
    for (hop, sender, rcpts) in by_hop {
        let out = Outbound {
            hop,
            mail_from: sender,
            rcpts: &rcpts,
            eight_bit,
            smtputf8: msg.envelope.smtputf8,
            body: &copy.body,
        };
        let started = std::time::Instant::now();
        let outcomes = delivery::send(sending.pool, settings, &out).await;
        metrics::delivery_time(hop, started.elapsed().as_secs_f64());
        for (rcpt, outcome) in rcpts.into_iter().zip(outcomes) {
            attempted.push(Attempted {
                rcpt,
                hop: hop.to_string(),
                outcome,
            });
        }
    }
}

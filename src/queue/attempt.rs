//! One delivery attempt of one queued message: read it, decide every
//! pending recipient, run the pipeline, hand the copies to their next
//! hops, record the outcomes durably, queue the bounces, and only then log
//! what happened. A crash at any point leaves the message in the spool
//! with every recipient a next hop accepted marked delivered, or sends a
//! copy twice; it never loses one.

use std::collections::HashMap;
use std::sync::Arc;

use openssl::x509::X509;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::budget::Budget;
use super::dispatch::{carry_out, Sending};
use super::record::{self, Logged};
use super::{blocking, bounce, now_secs, returned, QueueError};
use crate::delivery::Pool;
use crate::mail::headers;
use crate::metrics;
use crate::pipeline::{self, decide, Action, Plan, Treatment};
use crate::pki::signer::{self, SignerRevocation};
use crate::smime::scan;
use crate::snapshot::{Live, Snapshot};
use crate::spool::dsn::Failure;
use crate::spool::{SpoolError, Spooled, Store};

/// What an attempt left behind.
#[derive(Debug)]
pub enum JobEnd {
    /// Nothing left to do for this id.
    Gone,
    /// Try again at this time (Unix seconds).
    Retry(u64),
}

/// One delivery attempt of message `id`.
pub async fn attempt(
    id: &str,
    live: &Arc<Live>,
    store: &Arc<Store>,
    notify: &mpsc::UnboundedSender<String>,
    budget: &Budget,
    pool: &Pool,
) -> JobEnd {
    let mut msg = match load(id, store).await {
        Ok(m) => m,
        Err(end) => return end,
    };
    let size = msg.body.len() as u64;
    if budget.would_wait(size) {
        info!(event = "budget-wait", queue_id = %id, size,
              "waiting for the memory budget (queue.memory_budget)");
    }
    // Held until the attempt ends: the message's copies are in memory until then.
    let _budget = budget.take(size).await;
    // One snapshot for the whole attempt: keys and settings that belong together.
    let snapshot = live.current();
    let settings = &snapshot.settings;
    let message_id = headers::message_id(&msg.body);
    let now = now_secs();

    // Mail to the gateway's own return path is taken here, never delivered.
    let (returns, pending): (Vec<String>, Vec<String>) = msg
        .state
        .pending()
        .map(|r| r.addr.clone())
        .partition(|r| settings.return_path_tag(r).is_some());
    let mut attempted = if returns.is_empty() {
        Vec::new()
    } else {
        returned::take(settings, store, notify, &msg, &returns).await
    };
    let plan = decide::plan(
        &snapshot,
        live,
        &msg.envelope,
        &msg.body,
        pending,
        now as i64,
    )
    .await;
    log_decisions(id, &plan);
    // Recipients a rule wanted signed mail for that may not be signed:
    // their internal sender is told once the copy is delivered.
    let unsigned: Vec<(String, String)> = plan
        .recipients
        .iter()
        .filter_map(|(rcpt, t)| match t {
            Treatment::Outbound(d) => d.unsigned.clone().map(|why| (rcpt.clone(), why)),
            _ => None,
        })
        .collect();
    // S/MIME mail (encrypted anywhere inside, opened or not): what becomes
    // of it inside must not be observable outside.
    let body = Arc::clone(&msg.body);
    let (seen, actions) = tokio::join!(
        tokio::task::spawn_blocking(move || scan::scan(&body)),
        inbound_pipeline(&msg, &snapshot, live, plan)
    );
    let (seen, actions) = match (seen, actions) {
        (Ok(seen), Ok(actions)) => (seen, actions),
        (Err(e), _) | (_, Err(e)) => {
            error!(queue_id = %id, error = %e, "message processing failed; will retry");
            return JobEnd::Retry(now_secs() + 60);
        }
    };
    let smime = seen.encrypted;

    for action in &actions {
        let sending = Sending {
            msg: &msg,
            snapshot: &snapshot,
            message_id: &message_id,
            smime,
            pool,
        };
        carry_out(action, &sending, store, &mut attempted).await;
    }

    let now = now_secs();
    let recorded = record::apply(
        &mut msg.state,
        attempted,
        msg.envelope.received,
        now,
        settings.queue.max_lifetime,
    );
    let bounced = !recorded.failures.is_empty()
        && bounce::send(settings, store, notify, &msg, smime, &recorded.failures).await;
    if bounced {
        record::bounced(&mut msg.state, &recorded.failures);
    }

    let (end, on_disk) = match record::next_attempt(
        &mut msg.state,
        now,
        &settings.queue.retry_intervals,
    ) {
        None => match store.remove_grouped(id).await {
            Ok(()) => (JobEnd::Gone, true),
            Err(e) => {
                error!(queue_id = %id, error = %e, "delivered message could not be removed from the queue");
                (JobEnd::Retry(now + 60), false)
            }
        },
        Some(next) => match store.save_state_grouped(id, &msg.state).await {
            Ok(()) => (JobEnd::Retry(next), true),
            Err(e) => {
                error!(queue_id = %id, error = %e, "cannot record delivery state; recipients may be sent twice");
                (JobEnd::Retry(next), false)
            }
        },
    };
    // Only now, with the outcome on disk, does the log say what happened;
    // an outcome that could not be recorded is logged as such.
    if on_disk {
        log_outcomes(&msg, &message_id, &recorded.logged);
    } else {
        for l in &recorded.logged {
            error!(event = "unrecorded", queue_id = %msg.id, outcome = ?l,
                   "outcome not recorded: it will be tried again");
        }
    }
    // The bounce itself is queued (durable) either way.
    if bounced {
        log_bounced(&msg, &message_id, &recorded.failures);
    }
    let sent_unsigned: Vec<(String, String)> = unsigned
        .into_iter()
        .filter(|(r, _)| {
            recorded
                .logged
                .iter()
                .any(|l| matches!(l, Logged::Delivered { rcpt, .. } if rcpt == r))
        })
        .collect();
    if !sent_unsigned.is_empty() {
        bounce::tell_unsigned(settings, store, notify, &msg, &sent_unsigned).await;
    }
    end
}

/// Reads the message; a file that cannot be read is set aside, a task
/// that failed is retried.
async fn load(id: &str, store: &Arc<Store>) -> Result<Spooled, JobEnd> {
    let (s, i) = (Arc::clone(store), id.to_string());
    match blocking(move || s.load(&i)).await {
        Ok(m) => Ok(m),
        Err(QueueError::Spool(SpoolError::NotFound(_))) => Err(JobEnd::Gone),
        Err(QueueError::Spool(SpoolError::Corrupt { path, reason })) => {
            let (s, i) = (Arc::clone(store), id.to_string());
            match blocking(move || s.set_aside(&i)).await {
                Ok(to) => error!(event = "set-aside", queue_id = %id, file = %path.display(),
                                 reason = %reason, moved_to = %to.display(),
                                 "unreadable spool file moved aside, not delivered"),
                Err(e) => error!(event = "set-aside", queue_id = %id, error = %e,
                                 "unreadable spool file could not be moved aside"),
            }
            Err(JobEnd::Gone)
        }
        Err(e) => {
            error!(queue_id = %id, error = %e, "cannot read queued message; will retry");
            Err(JobEnd::Retry(now_secs() + 60))
        }
    }
}

/// One log line per outbound decision.
fn log_decisions(id: &str, plan: &Plan) {
    for (rcpt, t) in &plan.recipients {
        if let Treatment::Outbound(d) = t {
            info!(event = "policy", queue_id = %id, recipient = %rcpt, signer = %d.signer, "{}", d.summary());
            if let Some(why) = &d.unsigned {
                // The sender is not told by DSN yet: the log is the record.
                warn!(event = "unsigned", queue_id = %id, recipient = %rcpt, reason = %why,
                      "the rule asks for a signature this message may not have");
            }
            if let Some(rule) = &d.rule {
                metrics::rule_hit(rule);
            }
        }
    }
}

/// The pipeline, run again (at most twice) when it asked for what needs
/// the world: the revocation of signer certificates not known yet (the
/// answers are cached, so a known signer costs one run), or LDAP's
/// certificates for a signer no certificate held names. A source that
/// does not answer within its timeout leaves the status unknown: it never
/// defers the message.
async fn inbound_pipeline(
    msg: &Spooled,
    snapshot: &Arc<Snapshot>,
    live: &Arc<Live>,
    plan: Plan,
) -> Result<Vec<Action<'static>>, tokio::task::JoinError> {
    let has_mailboxes = plan
        .recipients
        .iter()
        .any(|(_, t)| matches!(t, Treatment::Mailbox { .. }));
    let mut known = if has_mailboxes {
        signer::known_certificates(&snapshot.keys, &snapshot.certs)
    } else {
        Vec::new()
    };
    let mut ldap_asked = false;
    let answers = live.signers.known(now_secs() as i64);
    let mut actions = run_pipeline(
        msg,
        snapshot,
        plan.clone(),
        &Arc::new(known.clone()),
        answers,
        ldap_asked,
    )
    .await?;
    for _ in 0..2 {
        let mut wanted: Vec<(X509, X509)> = Vec::new();
        let mut addresses: Vec<String> = Vec::new();
        for a in &actions {
            match a {
                Action::CheckSigner { cert, issuer } => wanted.push((cert.clone(), issuer.clone())),
                Action::FindSigner { address } => addresses.push(address.clone()),
                _ => {}
            }
        }
        if wanted.is_empty() && addresses.is_empty() {
            break;
        }
        for address in &addresses {
            known.extend(
                live.resolver
                    .ldap_certificates(&snapshot.settings, address)
                    .await,
            );
            ldap_asked = true;
        }
        if !wanted.is_empty() {
            let (l, s) = (Arc::clone(live), Arc::clone(snapshot));
            tokio::task::spawn_blocking(move || {
                let trust = &s.settings.trust;
                for (cert, issuer) in &wanted {
                    l.signers.check(
                        cert,
                        issuer,
                        &s.keys.anchors,
                        trust.revocation,
                        trust.revocation_timeout,
                        now_secs() as i64,
                    );
                }
            })
            .await?;
        }
        let answers = live.signers.known(now_secs() as i64);
        actions = run_pipeline(
            msg,
            snapshot,
            plan.clone(),
            &Arc::new(known.clone()),
            answers,
            ldap_asked,
        )
        .await?;
    }
    Ok(actions)
}

/// Decryption, signing and encryption are CPU work: off the async threads.
async fn run_pipeline(
    msg: &Spooled,
    snapshot: &Arc<Snapshot>,
    plan: Plan,
    known: &Arc<Vec<X509>>,
    answers: HashMap<String, SignerRevocation>,
    ldap_asked: bool,
) -> Result<Vec<Action<'static>>, tokio::task::JoinError> {
    let (envelope, body, snapshot, known) = (
        msg.envelope.clone(),
        Arc::clone(&msg.body),
        Arc::clone(snapshot),
        Arc::clone(known),
    );
    tokio::task::spawn_blocking(move || {
        let ctx = pipeline::Context {
            settings: &snapshot.settings,
            keys: &snapshot.keys,
            now: now_secs() as i64,
            known: &known,
            signer_revocation: &answers,
            ldap_asked,
        };
        pipeline::process(&envelope, &body, &plan, &ctx)
            .into_iter()
            .map(Action::into_owned)
            .collect()
    })
    .await
}

fn log_outcomes(msg: &Spooled, message_id: &str, logged: &[Logged]) {
    let (id, sender) = (&msg.id, &msg.envelope.mail_from);
    for l in logged {
        match l {
            Logged::Delivered { rcpt, hop, reply } => {
                info!(event = "delivered", queue_id = %id, message_id = %message_id,
                      sender = %sender, recipient = %rcpt, hop = %hop, reply = %reply, "delivered");
                metrics::delivered();
            }
            Logged::Deferred { rcpt, hop, reply } => {
                info!(event = "deferred", queue_id = %id, message_id = %message_id,
                      sender = %sender, recipient = %rcpt, hop = %hop, reply = %reply, "deferred");
                metrics::deferred();
            }
            Logged::Quarantined { .. } => metrics::quarantined(),
        }
    }
}

fn log_bounced(msg: &Spooled, message_id: &str, failures: &[Failure]) {
    for f in failures {
        info!(event = "bounced", queue_id = %msg.id, message_id = %message_id,
              sender = %msg.envelope.mail_from, recipient = %f.rcpt,
              hop = %f.remote_mta.as_deref().unwrap_or("-"), reply = %f.reply,
              expired = f.expired, "bounced");
        metrics::bounced();
    }
}

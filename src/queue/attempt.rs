//! One delivery attempt of one queued message: read it, decide every
//! pending recipient, run the pipeline, hand the copies to their next
//! hops, record the outcomes durably, queue the bounces, and only then log
//! what happened. A crash at any point leaves the message in the spool
//! with every recipient a next hop accepted marked delivered, or sends a
//! copy twice; it never loses one.
//!
//! Why long: the attempt's steps in order (work folder, scan, plan, the
//! pipeline with its re-runs, dispatch, record, log) read best in one file.

use std::collections::HashMap;
use std::sync::Arc;

use openssl::x509::X509;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::budget::Budget;
use super::dispatch::{carry_out, Sending};
use super::record::{self, Logged};
use super::{blocking, bounce, now_secs, returned, QueueError};
use crate::blob::{InMemory, Spill};
use crate::delivery::Pool;
use crate::journal::{self, Journal, Record};
use crate::mail::headers;
use crate::metrics;
use crate::pipeline::{self, decide, Action, Plan, Treatment};
use crate::pki::signer::{self, SignerRevocation};
use crate::readiness;
use crate::smime::mime;
use crate::smime::scan::{self, Seen};
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

/// What every attempt works with: the settings in force, the spool, the
/// queue's wake-up channel, the memory budget, the journal and the kept
/// next-hop connections.
#[derive(Clone, Copy)]
pub struct Services<'a> {
    pub live: &'a Arc<Live>,
    pub store: &'a Arc<Store>,
    pub notify: &'a mpsc::UnboundedSender<String>,
    pub budget: &'a Budget,
    pub journal: &'a Journal,
    pub pool: &'a Pool,
}

/// One delivery attempt of message `id`.
pub async fn attempt(id: &str, services: &Services<'_>) -> JobEnd {
    let Services { store, budget, .. } = *services;
    let (mut msg, scanned) = match load(id, store).await {
        Ok(m) => m,
        Err(end) => return end,
    };
    let size = msg.body.len() as u64;
    let outcome = attempt_loaded(id, &mut msg, scanned, services).await;
    drop(msg);
    // A large message's heap is given back once nothing else runs.
    if size >= RELEASE_AFTER && budget.idle() {
        let _ = tokio::task::spawn_blocking(crate::ossl::release_free_memory).await;
    }
    outcome
}

/// Messages from this size on give their freed heap back to the system
/// when the queue falls idle after them.
const RELEASE_AFTER: u64 = 1024 * 1024;

/// Messages below this size are scanned in the same trip to a blocking
/// thread that reads them; larger ones after they got their share of the
/// memory budget (the scan's shape may copy their CMS).
const SCAN_WITH_LOAD: usize = 1024 * 1024;

async fn attempt_loaded(
    id: &str,
    msg: &mut Spooled,
    scanned: Scanned,
    services: &Services<'_>,
) -> JobEnd {
    let Services {
        live,
        store,
        notify,
        budget,
        journal,
        pool,
    } = *services;
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
    // A large message is transformed through its work folder (removed
    // when the attempt ends), a small one in memory.
    let large = size >= settings.queue.stream_threshold;
    let work = if large {
        let (s, i) = (Arc::clone(store), id.to_string());
        match blocking(move || s.work(&i)).await {
            Ok(w) => {
                info!(event = "streamed", queue_id = %id, size,
                      "large message: transformed through its work folder");
                Some(Arc::new(w))
            }
            Err(e) => {
                error!(queue_id = %id, error = %e, "cannot make the work folder; will retry");
                return JobEnd::Retry(now_secs() + 60);
            }
        }
    } else {
        None
    };
    let spill: Arc<dyn Spill> = match &work {
        Some(w) => Arc::clone(w) as Arc<dyn Spill>,
        None => Arc::new(InMemory),
    };

    // Mail to the gateway's own return path is taken here, never delivered.
    let (returns, pending): (Vec<String>, Vec<String>) = msg
        .state
        .pending()
        .map(|r| r.addr.clone())
        .partition(|r| settings.return_path_tag(r).is_some());
    let mut attempted = if returns.is_empty() {
        Vec::new()
    } else {
        returned::take(settings, store, notify, msg, &returns).await
    };
    // S/MIME mail (encrypted anywhere inside, opened or not): what becomes
    // of it inside must not be observable outside. The scan and the
    // message's shape come from one parse, before anything else: the
    // pipeline's EFAIL defence uses the same answer.
    let (seen, shape) = match scanned {
        Some(found) => found,
        None => {
            let body = msg.body.clone();
            match tokio::task::spawn_blocking(move || scan::scan_and_shape(&body)).await {
                Ok(found) => found,
                Err(e) => {
                    error!(queue_id = %id, error = %e, "message processing failed; will retry");
                    return JobEnd::Retry(now_secs() + 60);
                }
            }
        }
    };
    let plan = decide::plan(
        &snapshot,
        live,
        &msg.envelope,
        &msg.body,
        shape,
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
    // The quarantine leaves part of the disk free for the queue.
    let quarantine_full = seen.encrypted
        && settings.smime.on_undecryptable == crate::config::OnUndecryptable::Quarantine
        && !store.quarantine_has_room(settings.smime.quarantine_keep_free);
    if quarantine_full {
        warn!(event = "quarantine-full", queue_id = %id,
              keep_free = settings.smime.quarantine_keep_free,
              "the spool's file system is nearly full: undecryptable mail is delivered unchanged, not quarantined");
    }
    let given = Given {
        spill,
        seen,
        quarantine_full,
    };
    let smime = seen.encrypted;
    // Encrypted mail for mailboxes and others: the others get a message
    // of their own, queued before anything is opened, so nothing they see
    // (when their copy leaves, a bounce, a retry, an expiry) waits on what
    // opening found (a recipient outside beside the mailbox would
    // otherwise time the decryption, its signer lookups, its failure).
    // When it cannot be queued, their copies leave first in this attempt.
    let mut plan = plan;
    let mut early = record::Recorded::default();
    let runs = match smime.then(|| plan.split_off_outside()).flatten() {
        Some(outside) => match hand_off(id, msg, &outside, services).await {
            Some(handed) => {
                early = handed;
                vec![plan]
            }
            None => vec![outside, plan],
        },
        None => vec![plan],
    };
    // Recipients handed on are journalled by their own message, once.
    for plan in &runs {
        journal_decisions(journal, id, plan, &snapshot, now as i64);
    }
    for (run, plan) in runs.into_iter().enumerate() {
        if run == 1 {
            // The others' failures are bounced before the mailbox copy is
            // opened, for the same reason their copies leave first.
            let bounced = bounce_early(id, msg, &snapshot, services, smime, &mut attempted).await;
            early.logged.extend(bounced.logged);
            early.failures = bounced.failures;
        }
        let actions = match inbound_pipeline(msg, &snapshot, live, plan, &given).await {
            Ok(actions) => actions,
            // Its recipients stay pending; copies already sent are recorded.
            Err(e) => {
                error!(queue_id = %id, error = %e, "message processing failed; will retry");
                break;
            }
        };
        journal_keys(journal, msg, &actions, now_secs() as i64);

        // Each copy is let go once handed on.
        for action in actions {
            let sending = Sending {
                msg,
                snapshot: &snapshot,
                message_id: &message_id,
                smime,
                pool,
            };
            carry_out(&action, &sending, store, &mut attempted).await;
        }
    }
    drop(work);

    let now = now_secs();
    let mut recorded = record::apply(
        &mut msg.state,
        attempted,
        msg.envelope.received,
        now,
        settings.queue.max_lifetime,
    );
    recorded
        .logged
        .splice(0..0, std::mem::take(&mut early.logged));
    let bounced = !recorded.failures.is_empty()
        && bounce::send(settings, store, notify, msg, smime, &recorded.failures).await;
    if bounced {
        record::bounced(&mut msg.state, &recorded.failures);
    }

    let (end, on_disk) = match record::next_attempt(
        &mut msg.state,
        now,
        &settings.queue.retry_intervals,
    ) {
        None => match store.remove_soon(id) {
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
        log_outcomes(msg, &message_id, &recorded.logged);
    } else {
        for l in &recorded.logged {
            error!(event = "unrecorded", queue_id = %msg.id, outcome = ?l,
                   "outcome not recorded: it will be tried again");
        }
    }
    // The bounce itself is queued (durable) either way.
    if !early.failures.is_empty() {
        log_bounced(msg, &message_id, &early.failures);
    }
    if bounced {
        log_bounced(msg, &message_id, &recorded.failures);
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
        bounce::tell_unsigned(settings, store, notify, msg, &sent_unsigned).await;
    }
    end
}

/// Queues a message of their own (the same envelope and body) for the
/// recipients of `outside`, and records them here as handed on, saved
/// before anything is opened. Their attempts, retries, bounces and expiry
/// then owe nothing to how long opening the mailboxes' copy takes. `None`
/// when it cannot be queued. A crash before the state is saved hands them
/// on again: a copy twice, never none.
async fn hand_off(
    id: &str,
    msg: &mut Spooled,
    outside: &Plan,
    services: &Services<'_>,
) -> Option<record::Recorded> {
    let Services { store, notify, .. } = *services;
    let rcpts: Vec<String> = outside.recipients.iter().map(|(r, _)| r.clone()).collect();
    let mut envelope = msg.envelope.clone();
    envelope.rcpts = rcpts.clone();
    let (s, body) = (Arc::clone(store), msg.body.clone());
    let new_id = match blocking(move || s.enqueue(&envelope, &body)).await {
        Ok(new_id) => new_id,
        Err(e) => {
            warn!(queue_id = %id, error = %e,
                  "cannot queue the outside recipients apart; their copies leave first in this attempt");
            return None;
        }
    };
    let handed = rcpts
        .iter()
        .map(|r| record::Attempted {
            rcpt: r.clone(),
            hop: record::HANDED_OFF.into(),
            outcome: crate::delivery::RcptOutcome::Delivered(format!(
                "handed on to queue id {new_id}"
            )),
        })
        .collect();
    let recorded = record::settle(&mut msg.state, handed);
    if let Err(e) = store.save_state_grouped(id, &msg.state).await {
        warn!(queue_id = %id, error = %e,
              "cannot record the hand-off; the outside recipients may get a copy twice");
    }
    info!(event = "handed-off", queue_id = %id, to_queue_id = %new_id,
          recipients = %rcpts.join(","),
          "recipients beside the mailboxes handed on to a message of their own");
    let _ = notify.send(new_id);
    Some(recorded)
}

/// Records the outcomes so far of a split attempt and bounces its
/// permanent failures now; the state is saved, so that a crash in the rest
/// of the attempt does not bounce them twice. Returns what was recorded,
/// with only the failures actually bounced (the others stay pending and
/// are tried again).
async fn bounce_early(
    id: &str,
    msg: &mut Spooled,
    snapshot: &Snapshot,
    services: &Services<'_>,
    smime: bool,
    attempted: &mut Vec<record::Attempted>,
) -> record::Recorded {
    let Services { store, notify, .. } = *services;
    let mut early = record::settle(&mut msg.state, std::mem::take(attempted));
    if early.failures.is_empty() {
        return early;
    }
    if bounce::send(
        &snapshot.settings,
        store,
        notify,
        msg,
        smime,
        &early.failures,
    )
    .await
    {
        record::bounced(&mut msg.state, &early.failures);
        if let Err(e) = store.save_state_grouped(id, &msg.state).await {
            warn!(queue_id = %id, error = %e,
                  "cannot record the early bounce; it may be sent twice");
        }
    } else {
        early.failures.clear();
    }
    early
}

/// What the scan found in a message and its shape, when it was read with it.
type Scanned = Option<(Seen, mime::Shape)>;

/// Reads the message (and scans a small one in the same trip); a file
/// that cannot be read is set aside, a task that failed is retried.
async fn load(id: &str, store: &Arc<Store>) -> Result<(Spooled, Scanned), JobEnd> {
    // Just accepted and small: in memory, scanned here (tens of
    // microseconds), no trip to a blocking thread.
    if let Some(msg) = store.load_fresh(id) {
        let scanned = Some(scan::scan_and_shape(&msg.body));
        return Ok((msg, scanned));
    }
    let (s, i) = (Arc::clone(store), id.to_string());
    let read = blocking(move || {
        let msg = s.load(&i)?;
        let scanned = (msg.body.len() < SCAN_WITH_LOAD).then(|| scan::scan_and_shape(&msg.body));
        Ok((msg, scanned))
    });
    match read.await {
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

/// Hands each outside recipient's decision to the journal (off the
/// delivery path; a retry of the same message replaces, not adds).
fn journal_decisions(journal: &Journal, id: &str, plan: &Plan, snapshot: &Snapshot, at: i64) {
    for (rcpt, t) in &plan.recipients {
        if matches!(t, Treatment::Mailbox { .. }) {
            continue;
        }
        let seen = readiness::seen(t, &snapshot.keys);
        let generation = match seen.outcome {
            readiness::Outcome::Encrypted(g) => g.to_string(),
            _ => String::new(),
        };
        journal.record(Record::Outbound(journal::Outbound {
            message: id.to_string(),
            recipient: crate::mail::address::key(rcpt),
            rule: seen.rule.unwrap_or_default(),
            outcome: seen.outcome.token().to_string(),
            generation,
            certificates: seen.certificates.join(","),
            at,
        }));
    }
}

/// Hands the organisation's keys this message was encrypted to, and its
/// sender (header From, else the envelope sender), to the journal.
fn journal_keys(journal: &Journal, msg: &Spooled, actions: &[Action<'static>], at: i64) {
    let mut sender = None;
    for a in actions {
        let Action::Opened(key) = a else { continue };
        // At most an address's length (RFC 5321): the header is the
        // sender's to write.
        let who = sender.get_or_insert_with(|| {
            headers::from_address(&msg.body)
                .unwrap_or_else(|| msg.envelope.mail_from.clone())
                .to_ascii_lowercase()
                .chars()
                .take(254)
                .collect::<String>()
        });
        journal.record(Record::Inbound(journal::Inbound {
            message: msg.id.clone(),
            sender: who.clone(),
            identity: key.fingerprint.clone(),
            subject: key.subject_cn.clone(),
            generation: key.generation.to_string(),
            at,
        }));
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
    given: &Given,
) -> Result<Vec<Action<'static>>, tokio::task::JoinError> {
    if plan
        .recipients
        .iter()
        .all(|(_, t)| matches!(t, Treatment::Unchanged(_)))
    {
        // Passed on as it came: nothing to open, sign or encrypt, so no
        // trip to a blocking thread and no copy of the message.
        let ctx = pipeline::Context {
            settings: &snapshot.settings,
            keys: &snapshot.keys,
            now: now_secs() as i64,
            known: &[],
            signer_revocation: &HashMap::new(),
            ldap_asked: false,
            spill: &*given.spill,
            seen: Some(given.seen),
            quarantine_full: given.quarantine_full,
        };
        let actions = pipeline::process(&msg.envelope, &msg.body, plan, &ctx);
        return Ok(owned(actions, &msg.body));
    }
    let has_mailboxes = plan
        .recipients
        .iter()
        .any(|(_, t)| matches!(t, Treatment::Mailbox { .. }));
    // Signers' certificates and revocation answers matter to mailboxes only.
    let mut known = Arc::new(if has_mailboxes {
        signer::known_certificates(&snapshot.keys, &snapshot.certs)
    } else {
        Vec::new()
    });
    let mut ldap_asked = false;
    let answers = if has_mailboxes {
        live.signers.known(now_secs() as i64)
    } else {
        HashMap::new()
    };
    // The first run takes the plan (its shape may hold the whole CMS, let
    // go once opened); a second run reads the shape again.
    let recipients = plan.recipients.clone();
    let mut actions = run_pipeline(msg, snapshot, plan, &known, answers, ldap_asked, given).await?;
    for _ in 0..2 {
        let mut wanted: Vec<(X509, Vec<X509>)> = Vec::new();
        let mut addresses: Vec<String> = Vec::new();
        for a in &actions {
            match a {
                Action::CheckSigner { cert, issuers } => {
                    wanted.push((cert.clone(), issuers.clone()))
                }
                Action::FindSigner { address } => addresses.push(address.clone()),
                _ => {}
            }
        }
        if wanted.is_empty() && addresses.is_empty() {
            break;
        }
        for address in &addresses {
            Arc::make_mut(&mut known).extend(
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
                for (cert, issuers) in &wanted {
                    l.signers.check(
                        cert,
                        issuers,
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
        let body = msg.body.clone();
        // The same shape the first run had (its bytes asked too).
        let shape = tokio::task::spawn_blocking(move || scan::scan_and_shape(&body).1).await?;
        let plan = Plan {
            shape: Arc::new(shape),
            recipients: recipients.clone(),
        };
        actions = run_pipeline(msg, snapshot, plan, &known, answers, ldap_asked, given).await?;
    }
    Ok(actions)
}

/// What every run of the pipeline for one attempt is given: where its
/// products go, and what the scan found.
struct Given {
    spill: Arc<dyn Spill>,
    seen: Seen,
    /// What the quarantine would keep is delivered instead.
    quarantine_full: bool,
}

/// Decryption, signing and encryption are CPU work: off the async threads.
async fn run_pipeline(
    msg: &Spooled,
    snapshot: &Arc<Snapshot>,
    plan: Plan,
    known: &Arc<Vec<X509>>,
    answers: HashMap<String, SignerRevocation>,
    ldap_asked: bool,
    given: &Given,
) -> Result<Vec<Action<'static>>, tokio::task::JoinError> {
    let (envelope, body, snapshot, known, spill, seen, quarantine_full) = (
        msg.envelope.clone(),
        msg.body.clone(),
        Arc::clone(snapshot),
        Arc::clone(known),
        Arc::clone(&given.spill),
        given.seen,
        given.quarantine_full,
    );
    tokio::task::spawn_blocking(move || {
        let ctx = pipeline::Context {
            settings: &snapshot.settings,
            keys: &snapshot.keys,
            now: now_secs() as i64,
            known: &known,
            signer_revocation: &answers,
            ldap_asked,
            spill: &*spill,
            seen: Some(seen),
            quarantine_full,
        };
        owned(pipeline::process(&envelope, &body, plan, &ctx), &body)
    })
    .await
}

/// The actions owning their bytes (to outlive the borrow of the message):
/// a copy that is the spooled message itself shares its bytes, anything
/// else is copied.
fn owned(actions: Vec<Action<'_>>, body: &crate::blob::Blob) -> Vec<Action<'static>> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Deliver(pipeline::Copy {
                rcpts,
                body: pipeline::Body::Borrowed(b),
                note,
            }) if std::ptr::eq(b, &body[..]) => Action::Deliver(pipeline::Copy {
                rcpts,
                body: pipeline::Body::Made(body.clone()),
                note,
            }),
            other => other.into_owned(),
        })
        .collect()
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

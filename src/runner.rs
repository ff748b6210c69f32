//! The queue runner: takes messages from the spool when they are due, runs
//! them through the pipeline, hands the copies to delivery, and records the
//! outcome per recipient (delivered, deferred with the next attempt time,
//! or failed with a bounce to the sender) durably before forgetting it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::delivery::{self, route, Outbound, RcptOutcome};
use crate::mail::address::domain_of;
use crate::mail::headers;
use crate::metrics;
use crate::pipeline;
use crate::pipeline::{Action, Copy};
use crate::pki::resolve::Resolver;
use crate::pki::Keyring;
use crate::policy::{self, Decision};
use crate::smime::mime;
use crate::spool::dsn::{self, Failure};
use crate::spool::{retry, RcptStatus, SpoolError, Spooled, Store};

/// What a delivery attempt left behind.
enum JobEnd {
    /// Nothing left to do for this id.
    Gone,
    /// Try again at this time (Unix seconds).
    Retry(u64),
}

pub struct Runner {
    settings: Arc<ArcSwap<Settings>>,
    keys: Arc<ArcSwap<Keyring>>,
    resolver: Arc<Resolver>,
    store: Arc<Store>,
    rx: mpsc::UnboundedReceiver<String>,
    tx: mpsc::UnboundedSender<String>,
    shutdown: watch::Receiver<bool>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Runner {
    pub fn new(
        settings: Arc<ArcSwap<Settings>>,
        keys: Arc<ArcSwap<Keyring>>,
        resolver: Arc<Resolver>,
        store: Arc<Store>,
        rx: mpsc::UnboundedReceiver<String>,
        tx: mpsc::UnboundedSender<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            settings,
            keys,
            resolver,
            store,
            rx,
            tx,
            shutdown,
        }
    }

    /// Runs until shutdown; then waits up to `server.shutdown_timeout` for
    /// deliveries in flight (the spool keeps whatever they did not finish).
    pub async fn run(mut self) {
        let mut due = Schedule::default();
        let mut busy: HashSet<String> = HashSet::new();
        let mut tasks: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut last_revocation_check: Option<(std::time::Instant, usize)> = None;
        let mut jobs: JoinSet<(String, JobEnd)> = JoinSet::new();
        let scan_every = self.settings.load().queue.scan_interval;
        let mut scan = tokio::time::interval(scan_every);
        let mut shutdown = self.shutdown.clone();

        loop {
            let now = now_secs();
            let max = self.settings.load().queue.max_deliveries;
            while jobs.len() < max {
                let Some(id) = due.pop_due(now) else { break };
                if !busy.insert(id.clone()) {
                    continue;
                }
                let settings = self.settings.load_full();
                let keys = self.keys.load_full();
                let resolver = Arc::clone(&self.resolver);
                let store = Arc::clone(&self.store);
                let tx = self.tx.clone();
                let queue_id = id.clone();
                let handle = jobs.spawn(async move {
                    let end = attempt(&id, &settings, &keys, &resolver, &store, &tx).await;
                    (id, end)
                });
                tasks.insert(handle.id(), queue_id);
            }
            let next_due = due.next_time();
            let sleep = match next_due {
                Some(at) if jobs.len() < max => {
                    Duration::from_secs(at.saturating_sub(now)).max(Duration::from_millis(200))
                }
                _ => Duration::from_secs(3600),
            };
            tokio::select! {
                Some(id) = self.rx.recv() => {
                    if !busy.contains(&id) {
                        due.set(id, 0);
                    }
                }
                Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                    match done {
                        Ok((task, (id, end))) => {
                            tasks.remove(&task);
                            busy.remove(&id);
                            if let JobEnd::Retry(at) = end {
                                due.set(id, at);
                            }
                        }
                        // A delivery job that panicked: the spool still has
                        // the message; try it again later.
                        Err(e) => {
                            if let Some(id) = tasks.remove(&e.id()) {
                                error!(queue_id = %id, error = %e, "delivery job failed; will retry");
                                busy.remove(&id);
                                due.set(id, now_secs() + 60);
                            }
                        }
                    }
                }
                _ = scan.tick() => {
                    self.check_own_revocation(&mut last_revocation_check);
                    let store = Arc::clone(&self.store);
                    match tokio::task::spawn_blocking(move || scan_queue(&store)).await {
                        Ok(Ok(found)) => {
                            observe_queue(&found);
                            observe_identities(&self.keys.load());
                            for (id, at) in found {
                                if !busy.contains(&id) {
                                    due.set(id, at);
                                }
                            }
                        }
                        Ok(Err(e)) => error!(error = %e, "cannot scan the queue"),
                        Err(e) => error!(error = %e, "queue scan failed"),
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => break,
            }
        }

        let bound = self.settings.load().server.shutdown_timeout;
        let finished =
            tokio::time::timeout(bound, async { while jobs.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            warn!(
                jobs = jobs.len(),
                "deliveries still running at shutdown; they will be retried"
            );
            jobs.abort_all();
        }
    }
}

/// Message ids by the time (Unix seconds) they are next due.
#[derive(Default)]
struct Schedule {
    order: BTreeSet<(u64, String)>,
    at: HashMap<String, u64>,
}

impl Schedule {
    /// Sets (or moves) the due time of `id`.
    fn set(&mut self, id: String, when: u64) {
        if let Some(old) = self.at.insert(id.clone(), when) {
            self.order.remove(&(old, id.clone()));
        }
        self.order.insert((when, id));
    }

    /// Takes the earliest id due at `now`, if any.
    fn pop_due(&mut self, now: u64) -> Option<String> {
        let (when, _) = self.order.first()?;
        if *when > now {
            return None;
        }
        let (_, id) = self.order.pop_first()?;
        self.at.remove(&id);
        Some(id)
    }

    fn next_time(&self) -> Option<u64> {
        self.order.first().map(|(when, _)| *when)
    }
}

impl Runner {
    /// Every hour, and whenever the keys were reloaded, asks the CAs whether
    /// the organisation's own identities are revoked (revoked ones no longer
    /// sign).
    fn check_own_revocation(&self, last: &mut Option<(std::time::Instant, usize)>) {
        let keys = self.keys.load_full();
        let ptr = Arc::as_ptr(&keys) as usize;
        let due = last.is_none_or(|(at, p)| p != ptr || at.elapsed() >= Duration::from_secs(3600));
        if !due || keys.identities.is_empty() {
            return;
        }
        *last = Some((std::time::Instant::now(), ptr));
        let settings = self.settings.load_full();
        // In the background: CRL and OCSP sources may be slow to answer.
        tokio::spawn(async move {
            let k = Arc::clone(&keys);
            let found = tokio::task::spawn_blocking(move || {
                crate::pki::revocation::revoked_identities(&k, &settings, now_secs() as i64)
            })
            .await
            .unwrap_or_default();
            let revoked: HashSet<usize> = found
                .iter()
                .enumerate()
                .filter(|(_, r)| **r)
                .map(|(i, _)| i)
                .collect();
            for &i in &revoked {
                warn!(event = "identity-revoked", subject = %keys.identities[i].info.subject_cn,
                      "an identity of the organisation is revoked: it decrypts but no longer signs");
            }
            match keys.revoked.write() {
                Ok(mut r) => *r = revoked,
                Err(e) => error!(error = %e, "cannot record revoked identities"),
            };
        });
    }
}

/// Queue size and the age of its oldest message (ids are arrival times).
fn observe_queue(found: &[(String, u64)]) {
    let oldest = found
        .iter()
        .filter_map(|(id, _)| crate::spool::id::parse(id))
        .min()
        .map(|micros| now_secs().saturating_sub(micros / 1_000_000))
        .unwrap_or(0);
    metrics::queue(found.len(), oldest);
}

/// Days until the earliest expiry among the identities valid now.
fn observe_identities(keys: &Keyring) {
    let now = now_secs() as i64;
    let days = keys
        .identities
        .iter()
        .filter(|i| i.info.valid_at(now))
        .map(|i| (i.info.not_after - now) as f64 / 86_400.0)
        .min_by(|a, b| a.total_cmp(b));
    metrics::identity_expiry(days);
}

/// Every queued message with the time of its next attempt.
fn scan_queue(store: &Store) -> Result<Vec<(String, u64)>, SpoolError> {
    let mut out = Vec::new();
    for id in store.list()? {
        match store.next_attempt(&id) {
            Ok(at) => out.push((id, at)),
            // Unreadable: the attempt itself sets it aside and logs it.
            Err(_) => out.push((id, 0)),
        }
    }
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(SpoolError::Corrupt {
            path: Default::default(),
            reason: format!("spool task failed: {e}"),
        })
    })
}

/// One delivery attempt of message `id`.
/// The "next hop" recorded for recipients the policy bounced or held.
const POLICY: &str = "policy";

/// Outbound decisions for the external recipients a rule covers (none when
/// there are no rules or the message is encrypted already).
async fn decide(
    msg: &Spooled,
    pending: &[String],
    settings: &Settings,
    keys: &Arc<Keyring>,
    resolver: &Resolver,
    id: &str,
) -> HashMap<String, Decision> {
    let mut out = HashMap::new();
    if settings.rules.is_empty() {
        return out;
    }
    let external: Vec<&String> = pending
        .iter()
        .filter(|r| !domain_of(r).is_some_and(|d| settings.server.is_internal_domain(&d)))
        .collect();
    if external.is_empty() || matches!(mime::shape(&msg.body), mime::Shape::Enveloped { .. }) {
        return out;
    }
    let now = now_secs() as i64;
    for rcpt in external {
        let Some(rule) = policy::rule_for(settings, rcpt, now) else {
            continue;
        };
        let (candidates, lookup_error) = resolver
            .candidates(keys, settings, rcpt, now, |info| {
                policy::wanted(settings, rule, info, now)
            })
            .await;
        let d = policy::decide(
            settings,
            keys,
            &msg.envelope.mail_from,
            rcpt,
            &candidates,
            lookup_error.as_deref(),
            now,
        );
        info!(event = "policy", queue_id = %id, recipient = %rcpt, signer = %d.signer, "{}", d.summary());
        if let Some(rule) = &d.rule {
            metrics::rule_hit(rule);
        }
        out.insert(rcpt.clone(), d);
    }
    out
}

async fn attempt(
    id: &str,
    settings: &Arc<Settings>,
    keys: &Arc<Keyring>,
    resolver: &Resolver,
    store: &Arc<Store>,
    notify: &mpsc::UnboundedSender<String>,
) -> JobEnd {
    let loaded = {
        let (store, id) = (Arc::clone(store), id.to_string());
        blocking(move || store.load(&id)).await
    };
    let mut msg = match loaded {
        Ok(m) => m,
        Err(SpoolError::NotFound(_)) => return JobEnd::Gone,
        Err(SpoolError::Corrupt { path, reason }) => {
            let (s, i) = (Arc::clone(store), id.to_string());
            match blocking(move || s.set_aside(&i)).await {
                Ok(to) => error!(event = "set-aside", queue_id = %id, file = %path.display(),
                                 reason = %reason, moved_to = %to.display(),
                                 "unreadable spool file moved aside, not delivered"),
                Err(e) => error!(event = "set-aside", queue_id = %id, error = %e,
                                 "unreadable spool file could not be moved aside"),
            }
            return JobEnd::Gone;
        }
        Err(e) => {
            error!(queue_id = %id, error = %e, "cannot read queued message; will retry");
            return JobEnd::Retry(now_secs() + 60);
        }
    };
    let message_id = headers::message_id(&msg.body);

    let pending: Vec<String> = msg.state.pending().map(|r| r.addr.clone()).collect();
    let decisions = decide(&msg, &pending, settings, keys, resolver, id).await;
    let actions = {
        let (envelope, body, settings, keys) = (
            msg.envelope.clone(),
            Arc::clone(&msg.body),
            Arc::clone(settings),
            Arc::clone(keys),
        );
        // Decryption, signing and encryption are CPU work: off the async threads.
        tokio::task::spawn_blocking(move || {
            let ctx = pipeline::Context {
                settings: &settings,
                keys: &keys,
                now: now_secs() as i64,
                decisions: &decisions,
            };
            pipeline::process(&envelope, &body, pending, &ctx)
                .into_iter()
                .map(pipeline::Action::into_owned)
                .collect::<Vec<_>>()
        })
        .await
    };
    let actions = match actions {
        Ok(a) => a,
        Err(e) => {
            error!(queue_id = %id, error = %e, "message processing failed; will retry");
            return JobEnd::Retry(now_secs() + 60);
        }
    };
    let mut results: Vec<(String, String, RcptOutcome)> = Vec::new();
    for action in &actions {
        let (rcpts_all, body, note) = match action {
            Action::Deliver(Copy { rcpts, body, note }) => (rcpts, body, note),
            Action::Observed(event) => {
                metrics::pipeline(event);
                continue;
            }
            Action::Fail { rcpts, reason } => {
                for rcpt in rcpts {
                    results.push((
                        rcpt.clone(),
                        POLICY.into(),
                        RcptOutcome::Failed(format!("550 5.7.1 {reason}")),
                    ));
                }
                continue;
            }
            Action::Defer { rcpts, reason } => {
                for rcpt in rcpts {
                    results.push((
                        rcpt.clone(),
                        POLICY.into(),
                        RcptOutcome::Deferred(reason.clone()),
                    ));
                }
                continue;
            }
            Action::Harvest(cert, caps) => {
                let (k, c, caps) = (Arc::clone(keys), cert.clone(), caps.clone());
                match tokio::task::spawn_blocking(move || k.directory.harvest(&c, &caps)).await {
                    Ok(Ok(true)) => info!(event = "harvested", queue_id = %id,
                        subject = %crate::smime::cms::subject(cert), "signer certificate added to the directory"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        warn!(queue_id = %id, error = %e, "cannot keep a harvested certificate")
                    }
                    Err(e) => warn!(queue_id = %id, error = %e, "harvest failed"),
                }
                continue;
            }
            Action::Quarantine { rcpts, reason } => {
                let mut env = msg.envelope.clone();
                env.rcpts = rcpts.clone();
                let (s, b, r) = (Arc::clone(store), Arc::clone(&msg.body), reason.clone());
                match blocking(move || s.quarantine(&env, &b, &r)).await {
                    Ok(qid) => {
                        for rcpt in rcpts {
                            warn!(event = "quarantined", queue_id = %id, quarantine_id = %qid,
                                  message_id = %message_id, sender = %msg.envelope.mail_from,
                                  recipient = %rcpt, reason = %reason, "undecryptable message quarantined");
                            results.push((
                                rcpt.clone(),
                                "quarantine".into(),
                                RcptOutcome::Quarantined,
                            ));
                        }
                    }
                    Err(e) => error!(queue_id = %id, error = %e, "cannot quarantine; will retry"),
                }
                continue;
            }
        };
        if let Some(note) = note {
            info!(event = "smime", queue_id = %id, message_id = %message_id,
                  recipients = %rcpts_all.join(","), "{note}");
        }
        let eight_bit = msg.envelope.eight_bit || body.iter().any(|b| *b >= 0x80);
        let mut by_hop: Vec<(&str, Vec<String>)> = Vec::new();
        for rcpt in rcpts_all {
            let hop = route::next_hop(settings, rcpt);
            match by_hop.iter_mut().find(|(h, _)| *h == hop) {
                Some((_, list)) => list.push(rcpt.clone()),
                None => by_hop.push((hop, vec![rcpt.clone()])),
            }
        }
        for (hop, rcpts) in by_hop {
            let out = Outbound {
                hop,
                mail_from: &msg.envelope.mail_from,
                rcpts: &rcpts,
                eight_bit,
                smtputf8: msg.envelope.smtputf8,
                body,
            };
            let started = std::time::Instant::now();
            let outcomes = delivery::send(&settings.relay, &settings.server.hostname, &out).await;
            metrics::delivery_time(hop, started.elapsed().as_secs_f64());
            for (rcpt, outcome) in rcpts.into_iter().zip(outcomes) {
                results.push((rcpt, hop.to_string(), outcome));
            }
        }
    }

    let now = now_secs();
    let mut failures = Vec::new();
    for (rcpt, hop, outcome) in results {
        let Some(state) = msg
            .state
            .rcpts
            .iter_mut()
            .find(|r| r.addr == rcpt && r.status == RcptStatus::Pending)
        else {
            continue;
        };
        state.hop = Some(hop.clone());
        match outcome {
            RcptOutcome::Delivered(reply) => {
                info!(event = "delivered", queue_id = %id, message_id = %message_id,
                      sender = %msg.envelope.mail_from, recipient = %rcpt, hop = %hop,
                      reply = %reply, "delivered");
                metrics::delivered();
                state.status = RcptStatus::Delivered;
                state.reply = Some(reply);
            }
            RcptOutcome::Deferred(reason) => {
                info!(event = "deferred", queue_id = %id, message_id = %message_id,
                      sender = %msg.envelope.mail_from, recipient = %rcpt, hop = %hop,
                      reply = %reason, "deferred");
                metrics::deferred();
                state.reply = Some(reason);
            }
            RcptOutcome::Quarantined => {
                metrics::quarantined();
                state.status = RcptStatus::Quarantined;
                state.reply = Some("quarantined: undecryptable".into());
            }
            RcptOutcome::Failed(reply) => {
                failures.push(Failure {
                    rcpt: rcpt.clone(),
                    reply: reply.clone(),
                    remote_mta: (hop != POLICY).then_some(hop),
                    expired: false,
                });
                state.reply = Some(reply);
            }
        }
    }
    msg.state.attempts += 1;
    let lifetime = settings.queue.max_lifetime;
    if retry::expired(msg.envelope.received, now, lifetime) {
        for state in msg
            .state
            .rcpts
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
        {
            if failures.iter().any(|f| f.rcpt == state.addr) {
                continue;
            }
            failures.push(Failure {
                rcpt: state.addr.clone(),
                reply: state
                    .reply
                    .clone()
                    .unwrap_or_else(|| "not delivered".into()),
                remote_mta: state.hop.clone().filter(|h| h != POLICY),
                expired: true,
            });
        }
    }

    if !failures.is_empty()
        && bounce(id, settings, store, notify, &msg, &failures, &message_id).await
    {
        for f in &failures {
            if let Some(s) = msg
                .state
                .rcpts
                .iter_mut()
                .find(|r| r.addr == f.rcpt && r.status == RcptStatus::Pending)
            {
                s.status = RcptStatus::Failed;
            }
        }
    }

    if msg.state.is_done() {
        let (s, i) = (Arc::clone(store), id.to_string());
        if let Err(e) = blocking(move || s.remove(&i)).await {
            error!(queue_id = %id, error = %e, "delivered message could not be removed from the queue");
            return JobEnd::Retry(now + 60);
        }
        return JobEnd::Gone;
    }
    let next =
        now + retry::delay_after(msg.state.attempts, &settings.queue.retry_intervals).as_secs();
    msg.state.next_attempt = next;
    let (s, i, st) = (Arc::clone(store), id.to_string(), msg.state.clone());
    if let Err(e) = blocking(move || s.save_state(&i, &st)).await {
        error!(queue_id = %id, error = %e, "cannot record delivery state; recipients may be sent twice");
    }
    JobEnd::Retry(next)
}

/// Queues the bounce for `failures` (or logs why none is sent). Returns
/// false when the bounce could not be queued: the recipients then stay
/// pending, so nothing is lost.
async fn bounce(
    id: &str,
    settings: &Settings,
    store: &Arc<Store>,
    notify: &mpsc::UnboundedSender<String>,
    msg: &Spooled,
    failures: &[Failure],
    message_id: &str,
) -> bool {
    for f in failures {
        info!(event = "bounced", queue_id = %id, message_id = %message_id,
              sender = %msg.envelope.mail_from, recipient = %f.rcpt,
              hop = %f.remote_mta.as_deref().unwrap_or("-"), reply = %f.reply,
              expired = f.expired, "bounced");
        metrics::bounced();
    }
    if msg.envelope.is_null_sender() {
        info!(event = "bounce-discarded", queue_id = %id, "the failed message had the null sender: no bounce is sent");
        return true;
    }
    // No decryption oracle: what happens to an encrypted message inside
    // (delivered decrypted, quarantined, refused by the mailbox server) is
    // never reported to its sender. Such failures go to the postmaster.
    let encrypted = matches!(mime::shape(&msg.body), mime::Shape::Enveloped { .. });
    let internal =
        |rcpt: &str| domain_of(rcpt).is_some_and(|d| settings.server.is_internal_domain(&d));
    let (hidden, visible): (Vec<Failure>, Vec<Failure>) = failures
        .iter()
        .cloned()
        .partition(|f| encrypted && internal(&f.rcpt));
    let mut ok = true;
    if !visible.is_empty() {
        ok &= queue_dsn(
            id,
            settings,
            store,
            notify,
            msg,
            &msg.envelope.mail_from,
            &visible,
        )
        .await;
    }
    if !hidden.is_empty() {
        match settings.server.internal_domains.first() {
            Some(domain) => {
                let postmaster = format!("postmaster@{domain}");
                info!(event = "bounce-redirected", queue_id = %id, to = %postmaster,
                      "encrypted mail failed for internal recipients: reported to the postmaster, not the sender");
                ok &= queue_dsn(id, settings, store, notify, msg, &postmaster, &hidden).await;
            }
            None => {
                info!(event = "bounce-discarded", queue_id = %id, "no internal domain for a postmaster report")
            }
        }
    }
    ok
}

/// Queues a delivery status notification about `failures` to `to`.
async fn queue_dsn(
    id: &str,
    settings: &Settings,
    store: &Arc<Store>,
    notify: &mpsc::UnboundedSender<String>,
    msg: &Spooled,
    to: &str,
    failures: &[Failure],
) -> bool {
    let mut about = msg.envelope.clone();
    about.mail_from = to.to_string();
    let (envelope, body) = dsn::build(
        &settings.server.hostname,
        id,
        &about,
        &msg.body,
        failures,
        SystemTime::now(),
    );
    let s = Arc::clone(store);
    match blocking(move || s.enqueue(&envelope, &body)).await {
        Ok(dsn_id) => {
            info!(event = "dsn-queued", queue_id = %id, dsn_id = %dsn_id, to = %to, "bounce queued");
            let _ = notify.send(dsn_id);
            true
        }
        Err(e) => {
            error!(queue_id = %id, error = %e, "cannot queue the bounce; will try again");
            false
        }
    }
}

//! The queue manager (in the manner of Postfix's qmgr): takes messages
//! from the spool when they are due, runs one delivery attempt for each
//! (at most `queue.max_deliveries` at once), and schedules what is left.
//!
//! - [`schedule`]: due times per message.
//! - [`attempt`]: one attempt: decide, pipeline, delivery, record, bounce.
//! - [`dispatch`]: an attempt's actions carried out (delivery, harvest, quarantine).
//! - [`budget`]: octets of messages in the pipeline and delivery at once.
//! - [`record`]: outcomes applied to per-recipient state (pure).
//! - [`bounce`]: who is told about failures (pure routing, then queued).
//! - [`returned`]: mail back at the gateway's return path (postmaster only).
//! - [`housekeeping`]: queue scans, gauges, own-revocation checks.

pub mod attempt;
pub mod bounce;
pub mod budget;
pub mod dispatch;
pub mod housekeeping;
pub mod record;
pub mod returned;
pub mod schedule;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, warn};

use attempt::JobEnd;
use budget::Budget;
use housekeeping::RevocationCheck;
use schedule::Schedule;

use crate::delivery::Pool;
use crate::journal::Journal;
use crate::snapshot::Live;
use crate::spool::{SpoolError, Store};

/// What went wrong in a spool task run off the async threads.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    Spool(#[from] SpoolError),
    /// The task itself failed (a panic): an internal error, retried later;
    /// never a reason to call the message corrupt.
    #[error("internal error in a spool task: {0}")]
    Internal(#[from] tokio::task::JoinError),
}

/// Runs a blocking spool operation off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, QueueError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The queue manager of a running daemon.
pub struct Runner {
    live: Arc<Live>,
    pool: Arc<Pool>,
    store: Arc<Store>,
    rx: mpsc::UnboundedReceiver<String>,
    tx: mpsc::UnboundedSender<String>,
    shutdown: watch::Receiver<bool>,
    journal: Journal,
}

impl Runner {
    /// `rx` announces newly queued messages; `tx` is how bounces announce
    /// themselves.
    pub fn new(
        live: Arc<Live>,
        pool: Arc<Pool>,
        store: Arc<Store>,
        rx: mpsc::UnboundedReceiver<String>,
        tx: mpsc::UnboundedSender<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            live,
            pool,
            store,
            rx,
            tx,
            shutdown,
            journal: Journal::disabled(),
        }
    }

    /// Decisions and key use go to `journal` (off the delivery path).
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = journal;
        self
    }

    /// Runs until shutdown; then waits up to `server.shutdown_timeout` for
    /// deliveries in flight (the spool keeps whatever they did not finish).
    pub async fn run(mut self) {
        let mut due = Schedule::default();
        let mut busy: HashSet<String> = HashSet::new();
        let mut tasks: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut revocation = RevocationCheck::default();
        let mut jobs: JoinSet<(String, JobEnd)> = JoinSet::new();
        // Fixed at start: a reload does not resize it.
        let budget = Arc::new(Budget::new(
            self.live.current().settings.queue.memory_budget,
        ));
        let scan_every = self.live.current().settings.queue.scan_interval;
        let mut scan = tokio::time::interval(scan_every);
        let mut shutdown = self.shutdown.clone();
        let reaper = tokio::spawn(close_idle(Arc::clone(&self.pool), self.shutdown.clone()));
        // Runs until the deliveries in flight at shutdown have ended: their
        // removals are made within the tenth of a second too.
        let (removals_end, removals_stop) = watch::channel(false);
        let removals = tokio::spawn(sync_removals(Arc::clone(&self.store), removals_stop));

        loop {
            let now = now_secs();
            let max = self.live.current().settings.queue.max_deliveries;
            while jobs.len() < max {
                let Some(id) = due.pop_due(now) else { break };
                if !busy.insert(id.clone()) {
                    continue;
                }
                let (live, store, tx, budget, journal, pool) = (
                    Arc::clone(&self.live),
                    Arc::clone(&self.store),
                    self.tx.clone(),
                    Arc::clone(&budget),
                    self.journal.clone(),
                    Arc::clone(&self.pool),
                );
                let queue_id = id.clone();
                let handle = jobs.spawn(async move {
                    let end = attempt::attempt(
                        &id,
                        &attempt::Services {
                            live: &live,
                            store: &store,
                            notify: &tx,
                            budget: &budget,
                            journal: &journal,
                            pool: &pool,
                        },
                    )
                    .await;
                    (id, end)
                });
                tasks.insert(handle.id(), queue_id);
            }
            let sleep = match due.next_time() {
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
                    revocation.maybe_start(&self.live);
                    let store = Arc::clone(&self.store);
                    match tokio::task::spawn_blocking(move || housekeeping::scan_queue(&store)).await {
                        Ok(Ok(found)) => {
                            housekeeping::observe_queue(&found);
                            housekeeping::observe_identities(&self.live.current().keys);
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

        let bound = self.live.current().settings.server.shutdown_timeout;
        let finished =
            tokio::time::timeout(bound, async { while jobs.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            warn!(
                jobs = jobs.len(),
                "deliveries still running at shutdown; they will be retried"
            );
            jobs.abort_all();
            // A job running on another thread finishes its step first.
            while jobs.join_next().await.is_some() {}
        }
        let _ = reaper.await;
        let _ = removals_end.send(true);
        let _ = removals.await;
        // Removals of the last deliveries, made durable before the end.
        // Then the kept files of delivered messages go: they hold their
        // bytes.
        let store = Arc::clone(&self.store);
        let synced = tokio::task::spawn_blocking(move || {
            let synced = store.sync_removals();
            store.release_kept();
            synced
        })
        .await;
        if let Ok(Err(e)) = synced {
            error!(error = %e, "cannot make the last removals from the queue durable");
        }
        self.pool.close_all().await;
    }
}

/// Makes removals of delivered messages, and makes them durable, within
/// a tenth of a second when no arrival's trip to the disk has (see
/// [`Store::remove_soon`]), and unlinks the kept files of removed
/// messages no new one has taken for a while, until `stop` (after the
/// deliveries in flight at shutdown have ended).
async fn sync_removals(store: Arc<Store>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !store.removals_pending() {
                    continue;
                }
                let store = Arc::clone(&store);
                match tokio::task::spawn_blocking(move || store.sync_removals()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!(error = %e, "cannot make removals from the queue durable"),
                    Err(e) => error!(error = %e, "queue folder sync failed"),
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Closes kept next-hop connections once they have been idle for
/// `relay.reuse_idle`, until shutdown.
async fn close_idle(pool: Arc<Pool>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => pool.close_idle().await,
            _ = shutdown.changed() => return,
        }
    }
}

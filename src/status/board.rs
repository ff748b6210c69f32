//! The readiness table behind the status page and the readiness gauges:
//! every counterparty (each external address in the certificate
//! directory, and each outside recipient the journal saw in the last 90
//! days, with its message count) assessed by `readiness::assess` (the one
//! readiness computation, through `pipeline::decide`) at the configured
//! cutoff, kept, and made again every `status.refresh` and after each reload;
//! its certificate lookups are not counted as mail traffic;
//! tables at other dates are made on request, one at a time, and the last
//! few kept until the next refresh (a page reloaded costs nothing).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use super::page::{ReadinessRow, Table};
use crate::config::Settings;
use crate::journal::{self, JournalError};
use crate::metrics;
use crate::pipeline::decide::is_internal;
use crate::readiness::{self, Readiness};
use crate::snapshot::{Live, Snapshot};

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The moment the default table is at: the first second after the
/// configured cutoff (when OCES2 stops being used), or now once it has
/// passed or when none is configured.
pub fn default_at(cutoff: Option<i64>, now: i64) -> i64 {
    match cutoff {
        Some(c) => (c + 1).max(now),
        None => now,
    }
}

/// How far back the journal's counterparties and their mail are counted.
pub const JOURNAL_WINDOW: i64 = 90 * 86_400;

/// How long the journal may take to answer for one table.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the journal's counterparties are not in a table.
#[derive(Debug, thiserror::Error)]
pub enum SeenError {
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error("the journal did not answer within {0:?}")]
    Timeout(Duration),
}

/// Messages per outside recipient in the journal since `since`. A journal
/// not written yet is empty; one switched off, unreadable or slow is an
/// error.
pub async fn seen_in_journal(
    settings: &Settings,
    since: i64,
) -> Result<BTreeMap<String, u64>, SeenError> {
    let Some(target) = journal::Target::of(settings) else {
        return Err(JournalError::Disabled.into());
    };
    let read = async {
        let store = match journal::Store::open_for_reading(&target).await {
            Ok(s) => s,
            Err(JournalError::Missing(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        store.outbound(since).await
    };
    let used = tokio::time::timeout(JOURNAL_TIMEOUT, read)
        .await
        .map_err(|_| SeenError::Timeout(JOURNAL_TIMEOUT))??;
    let mut out = BTreeMap::new();
    for u in used {
        *out.entry(u.recipient.to_ascii_lowercase()).or_insert(0) += u.count;
    }
    Ok(out)
}

/// Every external address in the certificate directory and in `seen`,
/// once, sorted, with its messages in the journal (`None`: not known).
pub fn counterparties(
    snapshot: &Snapshot,
    seen: Option<&BTreeMap<String, u64>>,
) -> Vec<(String, Option<u64>)> {
    let mut out: BTreeMap<String, Option<u64>> = BTreeMap::new();
    for entry in snapshot.certs.all() {
        for address in &entry.info.emails {
            out.insert(address.to_ascii_lowercase(), seen.map(|_| 0));
        }
    }
    for (address, n) in seen.into_iter().flatten() {
        out.insert(address.clone(), Some(*n));
    }
    out.into_iter()
        .filter(|(a, _)| !is_internal(&snapshot.settings, a))
        .collect()
}

/// The table of every counterparty at `at`.
pub async fn table(snapshot: &Snapshot, live: &Live, now: i64, at: i64) -> Table {
    let seen = seen_in_journal(&snapshot.settings, now - JOURNAL_WINDOW).await;
    if let Err(why) = &seen {
        warn!(error = %why, "status page: the journal's counterparties are left out");
    }
    let mut rows = Vec::new();
    for (address, messages) in counterparties(snapshot, seen.as_ref().ok()) {
        let a = readiness::assess(snapshot, live, &address, now, at).await;
        rows.push(ReadinessRow {
            messages,
            address: a.address,
            readiness: a.readiness.token(),
            today: a.today.outcome.token().to_string(),
            at_date: a.at_date.outcome.token().to_string(),
            reason: a.reason,
            turns_plain: a.turns_plain,
        });
    }
    Table {
        at,
        computed: now,
        rows,
        journal: seen.err().map(|e| e.to_string()),
    }
}

/// How many rows of each readiness class.
pub fn census(table: &Table) -> Vec<(&'static str, usize)> {
    Readiness::ALL
        .iter()
        .map(|r| {
            let token = r.token();
            (
                token,
                table
                    .rows
                    .iter()
                    .filter(|row| row.readiness == token)
                    .count(),
            )
        })
        .collect()
}

/// Tables at picked dates kept until the next refresh.
const PICKED_KEPT: usize = 8;
/// Picked dates waiting to be made at most.
pub const PICKED_PENDING: usize = 4;

/// Too many picked dates are being made already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("other dates are being computed; try again in a moment")]
pub struct Busy;

/// The kept tables and the gate that lets one table be made at a time.
pub struct Board {
    live: Arc<Live>,
    kept: Mutex<Option<Arc<Table>>>,
    picked: Mutex<Vec<Arc<Table>>>,
    /// Picked dates being made.
    pending: Mutex<Vec<i64>>,
    /// Counts tables made at picked dates (wakes their requests).
    made: watch::Sender<u64>,
    making: Semaphore,
}

impl Board {
    pub fn new(live: Arc<Live>) -> Self {
        Self {
            live,
            kept: Mutex::new(None),
            picked: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            made: watch::Sender::new(0),
            making: Semaphore::new(1),
        }
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Makes the default table again, keeps it and sets the gauges.
    pub async fn refresh(&self) -> Arc<Table> {
        let _turn = self.making.acquire().await;
        let snapshot = self.live.current();
        let now = now();
        let at = default_at(snapshot.settings.policy.oces2_cutoff.map(|c| c.unix), now);
        let t = Arc::new(metrics::uncounted(table(&snapshot, &self.live, now, at)).await);
        metrics::readiness(&census(&t));
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&t));
        self.picked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        t
    }

    fn kept(&self) -> Option<Arc<Table>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The kept default table (made now when there is none yet).
    pub async fn current(&self) -> Arc<Table> {
        if let Some(t) = self.kept() {
            return t;
        }
        // The first refresh may be under way: wait for it, not redo it.
        drop(self.making.acquire().await);
        match self.kept() {
            Some(t) => t,
            None => self.refresh().await,
        }
    }

    fn picked(&self, at: i64) -> Option<Arc<Table>> {
        let picked = self.picked.lock().unwrap_or_else(|p| p.into_inner());
        picked.iter().find(|t| t.at == at).cloned()
    }

    /// A table at `at` (someone picked a date): one kept since the last
    /// refresh, or made now, one at a time. It is made by a task of its
    /// own, so a request that gives up (the 30-second limit of a
    /// connection) still leaves it kept for the next one; at most
    /// [`PICKED_PENDING`] dates wait their turn, further ones are [`Busy`].
    pub async fn at(self: &Arc<Self>, at: i64) -> Result<Arc<Table>, Busy> {
        if let Some(t) = self.picked(at) {
            return Ok(t);
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !pending.contains(&at) {
                if pending.len() >= PICKED_PENDING {
                    return Err(Busy);
                }
                pending.push(at);
                let board = Arc::clone(self);
                tokio::spawn(async move { board.make_picked(at).await });
            }
        }
        let mut made = self.made.subscribe();
        loop {
            if let Some(t) = self.picked(at) {
                return Ok(t);
            }
            if !self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&at)
            {
                // Made and already pushed out by newer ones, or cleared
                // by a refresh: make it again.
                return Box::pin(self.at(at)).await;
            }
            if made.changed().await.is_err() {
                return Err(Busy);
            }
        }
    }

    async fn make_picked(&self, at: i64) {
        let _turn = self.making.acquire().await;
        let snapshot = self.live.current();
        let t = Arc::new(metrics::uncounted(table(&snapshot, &self.live, now(), at)).await);
        {
            let mut picked = self.picked.lock().unwrap_or_else(|p| p.into_inner());
            if picked.len() >= PICKED_KEPT {
                picked.remove(0);
            }
            picked.push(t);
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&p| p != at);
        self.made.send_modify(|n| *n += 1);
    }

    /// Refreshes every `refresh` and whenever `reloaded` changes, until
    /// shutdown.
    pub async fn run(
        self: Arc<Self>,
        mut reloaded: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let started = std::time::Instant::now();
            let t = tokio::select! {
                t = self.refresh() => t,
                _ = shutdown.changed() => return,
            };
            info!(
                at = t.at,
                counterparties = t.rows.len(),
                ms = started.elapsed().as_millis() as u64,
                "cutoff readiness computed"
            );
            let every = self.live.current().settings.status.refresh;
            tokio::select! {
                _ = tokio::time::sleep(every.max(Duration::from_secs(1))) => {}
                r = reloaded.changed() => {
                    if r.is_err() {
                        warn!("reload notices ended; readiness refreshed on the timer only");
                        tokio::select! {
                            _ = tokio::time::sleep(every) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_is_just_after_the_cutoff_or_now() {
        assert_eq!(default_at(Some(1_000), 10), 1_001);
        assert_eq!(default_at(Some(1_000), 5_000), 5_000);
        assert_eq!(default_at(None, 5_000), 5_000);
    }

    #[test]
    fn every_class_is_counted_even_when_empty() {
        let row = |class: &'static str| ReadinessRow {
            address: "a@b.dk".into(),
            readiness: class,
            today: String::new(),
            at_date: String::new(),
            reason: None,
            turns_plain: false,
            messages: None,
        };
        let t = Table {
            at: 0,
            computed: 0,
            rows: vec![row("oces3"), row("oces2-only"), row("oces3")],
            journal: None,
        };
        assert_eq!(
            census(&t),
            vec![("oces3", 2), ("oces2-only", 1), ("none", 0)]
        );
    }
}

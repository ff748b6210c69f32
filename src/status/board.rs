//! The readiness table behind the status page and the readiness gauges:
//! every counterparty assessed by `readiness::assess` (the one readiness
//! computation, through `pipeline::decide`) at the configured cutoff,
//! kept, and made again every `status.refresh` and after each reload;
//! tables at other dates are made on request, one at a time.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use super::page::{ReadinessRow, Table};
use crate::metrics;
use crate::pipeline::decide::is_internal;
use crate::readiness::{self, Readiness};
use crate::snapshot::{Live, Snapshot};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The moment the default table is at: the first second after the
/// configured cutoff (when OCES2 stops being used), or now once it has
/// passed or when none is configured.
pub fn default_at(snapshot: &Snapshot, now: i64) -> i64 {
    match snapshot.settings.policy.oces2_cutoff {
        Some(c) => (c.unix + 1).max(now),
        None => now,
    }
}

/// Every external address in the certificate directory, once, sorted.
pub fn counterparties(snapshot: &Snapshot) -> Vec<String> {
    let mut out = BTreeSet::new();
    for entry in snapshot.certs.all() {
        for address in &entry.info.emails {
            let address = address.to_ascii_lowercase();
            if !is_internal(&snapshot.settings, &address) {
                out.insert(address);
            }
        }
    }
    out.into_iter().collect()
}

/// The table of every counterparty at `at`.
pub async fn table(snapshot: &Snapshot, live: &Live, now: i64, at: i64) -> Table {
    let mut rows = Vec::new();
    for address in counterparties(snapshot) {
        let a = readiness::assess(snapshot, live, &address, now, at).await;
        rows.push(ReadinessRow {
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

/// The kept table and the gate that lets one table be made at a time.
pub struct Board {
    live: Arc<Live>,
    kept: Mutex<Option<Arc<Table>>>,
    making: Semaphore,
}

impl Board {
    pub fn new(live: Arc<Live>) -> Self {
        Self {
            live,
            kept: Mutex::new(None),
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
        let t = Arc::new(table(&snapshot, &self.live, now, default_at(&snapshot, now)).await);
        metrics::readiness(&census(&t));
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&t));
        t
    }

    /// The kept default table (made now when there is none yet).
    pub async fn current(&self) -> Arc<Table> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match kept {
            Some(t) => t,
            None => self.refresh().await,
        }
    }

    /// A table at `at` (someone picked a date); made now, one at a time.
    pub async fn at(&self, at: i64) -> Table {
        let _turn = self.making.acquire().await;
        let snapshot = self.live.current();
        table(&snapshot, &self.live, now(), at).await
    }

    /// Refreshes every `refresh` and whenever `reloaded` changes, until
    /// shutdown.
    pub async fn run(
        self: Arc<Self>,
        mut reloaded: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let t = tokio::select! {
                t = self.refresh() => t,
                _ = shutdown.changed() => return,
            };
            info!(
                at = t.at,
                counterparties = t.rows.len(),
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

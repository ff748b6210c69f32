//! What the queue manager does besides delivering: reading the whole queue
//! (at start and every `queue.scan_interval`), the queue and key-expiry
//! gauges, and asking the CAs whether the organisation's own identities
//! were revoked (hourly, and whenever the keys were reloaded).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::now_secs;
use crate::metrics;
use crate::pki::{revocation, Keyring};
use crate::snapshot::Live;
use crate::spool::{SpoolError, Store};

/// Every queued message with the time of its next attempt.
pub fn scan_queue(store: &Store) -> Result<Vec<(String, u64)>, SpoolError> {
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

/// Queue size and the age of its oldest message (ids are arrival times).
pub fn observe_queue(found: &[(String, u64)]) {
    let oldest = found
        .iter()
        .filter_map(|(id, _)| crate::spool::id::parse(id))
        .min()
        .map(|micros| now_secs().saturating_sub(micros / 1_000_000))
        .unwrap_or(0);
    metrics::queue(found.len(), oldest);
}

/// Days until the earliest expiry among the identities valid now.
pub fn observe_identities(keys: &Keyring) {
    let now = now_secs() as i64;
    let days = keys
        .identities
        .iter()
        .filter(|i| i.info.valid_at(now))
        .map(|i| (i.info.not_after - now) as f64 / 86_400.0)
        .min_by(|a, b| a.total_cmp(b));
    metrics::identity_expiry(days);
}

/// When the own-revocation check last ran, and for which keys.
#[derive(Debug, Default)]
pub struct RevocationCheck {
    last: Option<(Instant, usize)>,
}

impl RevocationCheck {
    /// Starts a check in the background when one is due: hourly, or at
    /// once when the keys changed. Identities found revoked still decrypt,
    /// but no longer sign.
    pub fn maybe_start(&mut self, live: &Arc<Live>) {
        let snapshot = live.current();
        let ptr = Arc::as_ptr(&snapshot.keys) as usize;
        let due = self
            .last
            .is_none_or(|(at, p)| p != ptr || at.elapsed() >= Duration::from_secs(3600));
        if !due || snapshot.keys.identities.is_empty() {
            return;
        }
        self.last = Some((Instant::now(), ptr));
        let live = Arc::clone(live);
        // In the background: CRL and OCSP sources may be slow to answer.
        tokio::spawn(async move {
            let s = Arc::clone(&snapshot);
            let history = Arc::clone(&live.crl_history);
            let found = tokio::task::spawn_blocking(move || {
                revocation::revoked_identities(&s.keys, &s.settings, history, now_secs() as i64)
            })
            .await;
            let found = match found {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "revocation check of the organisation's identities failed");
                    return;
                }
            };
            let mut revoked = HashSet::new();
            for (id, _) in snapshot
                .keys
                .identities
                .iter()
                .zip(found)
                .filter(|(_, r)| *r)
            {
                warn!(event = "identity-revoked", subject = %id.info.subject_cn,
                      "an identity of the organisation is revoked: it decrypts but no longer signs");
                revoked.insert(id.fingerprint());
            }
            live.revoked.set(revoked);
        });
    }
}

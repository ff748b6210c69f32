//! The memory budget: how many octets of messages (their spooled size) may
//! be in the pipeline and in delivery at once, so that many large messages
//! wait their turn instead of stacking up in memory. A message larger than
//! the whole budget takes all of it and runs alone. Counted in KiB.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget of a running queue manager (fixed at start).
#[derive(Debug)]
pub struct Budget {
    units: Arc<Semaphore>,
    total: u32,
}

impl Budget {
    /// A budget of `bytes` octets (at least 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX >> 3)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Self {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// The units a message of `size` octets takes.
    pub fn units_for(&self, size: u64) -> u32 {
        u32::try_from(size.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total)
    }

    /// True when a message of `size` octets would have to wait now.
    pub fn would_wait(&self, size: u64) -> bool {
        self.units.available_permits() < self.units_for(size) as usize
    }

    /// True when no message holds any of the budget.
    pub fn idle(&self) -> bool {
        self.units.available_permits() >= self.total as usize
    }

    /// Waits until a message of `size` octets fits; the budget is given
    /// back when the permit is dropped.
    pub async fn take(&self, size: u64) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.units)
            .acquire_many_owned(self.units_for(size))
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_messages_wait_and_a_huge_one_runs_alone() {
        let b = Budget::new(1024 * 1024); // 1 MiB
        assert_eq!(b.units_for(0), 1);
        assert_eq!(
            b.units_for(10 * 1024 * 1024),
            1024,
            "capped at the whole budget"
        );
        assert!(b.idle());
        let first = b.take(700 * 1024).await;
        assert!(first.is_some());
        assert!(!b.idle());
        assert!(b.would_wait(700 * 1024), "the second large one waits");
        assert!(!b.would_wait(100 * 1024), "a small one still fits");
        drop(first);
        assert!(!b.would_wait(700 * 1024));
        let huge = b.take(u64::MAX).await;
        assert!(b.would_wait(1));
        drop(huge);
        assert!(!b.would_wait(1));
    }
}

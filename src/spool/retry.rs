//! The retry schedule: when a deferred message is tried again, and when it
//! has been queued too long. Pure arithmetic on seconds; the caller reads
//! the clock.

use std::time::Duration;

/// Delay before the next attempt after `attempts` failed ones: the n-th
/// interval of the list, the last one repeating.
pub fn delay_after(attempts: u32, intervals: &[Duration]) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(intervals.len().saturating_sub(1));
    intervals
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(60))
}

/// True when a message received at `received` (Unix seconds) has outlived
/// `lifetime` at `now`.
pub fn expired(received: u64, now: u64, lifetime: Duration) -> bool {
    now.saturating_sub(received) >= lifetime.as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_interval_repeats() {
        let iv = [Duration::from_secs(60), Duration::from_secs(300)];
        assert_eq!(delay_after(1, &iv), Duration::from_secs(60));
        assert_eq!(delay_after(2, &iv), Duration::from_secs(300));
        assert_eq!(delay_after(9, &iv), Duration::from_secs(300));
    }

    #[test]
    fn lifetime() {
        assert!(!expired(100, 150, Duration::from_secs(60)));
        assert!(expired(100, 160, Duration::from_secs(60)));
    }
}

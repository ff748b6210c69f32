//! Queue identifiers: short, sortable by arrival, unique across restarts.
//!
//! An id is the microsecond wall-clock time in upper-case hex, forced to
//! grow strictly within a process and started above every id already in
//! the spool, so a clock step back cannot reuse a name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct IdGenerator {
    last: AtomicU64,
}

impl IdGenerator {
    /// A generator that never hands out an id at or below `floor`.
    pub fn starting_above(floor: u64) -> Self {
        Self {
            last: AtomicU64::new(floor),
        }
    }

    pub fn next(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = now.max(prev + 1);
            match self.last.compare_exchange_weak(
                prev,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return format!("{candidate:014X}"),
                Err(seen) => prev = seen,
            }
        }
    }
}

/// The numeric value of an id, or `None` when `text` is not an id.
pub fn parse(text: &str) -> Option<u64> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// True when `text` has the shape of a queue id (safe to use in a path).
pub fn is_valid(text: &str) -> bool {
    parse(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_grow_and_parse() {
        let g = IdGenerator::starting_above(0x00FF_FFFF_FFFF_FFF0);
        let a = g.next();
        let b = g.next();
        assert!(b > a);
        assert_eq!(parse(&a).unwrap() + 1, parse(&b).unwrap());
        assert!(!is_valid("../etc/passwd"));
    }
}

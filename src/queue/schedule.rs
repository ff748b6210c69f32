//! Which message is due next: queue ids ordered by the time (Unix seconds)
//! of their next attempt. Pure bookkeeping; the runner reads the clock.

use std::collections::{BTreeSet, HashMap};

/// Message ids by the time they are next due.
#[derive(Debug, Default)]
pub struct Schedule {
    order: BTreeSet<(u64, String)>,
    at: HashMap<String, u64>,
}

impl Schedule {
    /// Sets (or moves) the due time of `id`.
    pub fn set(&mut self, id: String, when: u64) {
        if let Some(old) = self.at.insert(id.clone(), when) {
            self.order.remove(&(old, id.clone()));
        }
        self.order.insert((when, id));
    }

    /// Takes the earliest id due at `now`, if any.
    pub fn pop_due(&mut self, now: u64) -> Option<String> {
        let (when, _) = self.order.first()?;
        if *when > now {
            return None;
        }
        let (_, id) = self.order.pop_first()?;
        self.at.remove(&id);
        Some(id)
    }

    /// When the earliest message is due.
    pub fn next_time(&self) -> Option<u64> {
        self.order.first().map(|(when, _)| *when)
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_only_when_due() {
        let mut s = Schedule::default();
        s.set("b".into(), 20);
        s.set("a".into(), 10);
        s.set("c".into(), 30);
        assert_eq!(s.next_time(), Some(10));
        assert_eq!(s.pop_due(5), None);
        assert_eq!(s.pop_due(25).as_deref(), Some("a"));
        assert_eq!(s.pop_due(25).as_deref(), Some("b"));
        assert_eq!(s.pop_due(25), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn setting_again_moves_an_id_instead_of_duplicating_it() {
        let mut s = Schedule::default();
        s.set("a".into(), 50);
        s.set("a".into(), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.pop_due(0).as_deref(), Some("a"));
        assert!(s.is_empty());
        assert_eq!(s.pop_due(100), None);
    }
}

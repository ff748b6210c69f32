//! Group commit of the queue directory: a message file is fsynced on its
//! own, but its rename into `queue/` is made durable by an fsync of the
//! directory, and messages renamed at the same moment share one. Linux has
//! no multi-file fsync; this is the directory half only. A caller returns
//! only once a directory fsync that started after its rename has finished,
//! so nobody hears 250 before their message is durable.
//!
//! Called on the blocking thread that made the rename (in the same trip
//! as the file's write and fsync): the waiters of a moment queue on a
//! mutex while one of them fsyncs for all, and no extra thread hop is
//! made per message.
//!
//! Removals of delivered messages wait for no fsync: they are marked and
//! covered by the next one (see `departures`).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The directory fsyncs of one folder.
#[derive(Debug)]
pub struct GroupSync {
    dir: PathBuf,
    /// Tickets handed out: one per rename, taken after the rename.
    requested: AtomicU64,
    /// Every ticket up to this one is covered by a finished fsync.
    done: AtomicU64,
    /// One fsync at a time; waiters queue here. The folder, kept open
    /// between fsyncs (opened again after an error).
    running: Mutex<Option<std::fs::File>>,
}

impl GroupSync {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            requested: AtomicU64::new(0),
            done: AtomicU64::new(0),
            running: Mutex::new(None),
        }
    }

    /// Makes every rename into the folder made before this call durable.
    /// Blocking: call it off the async threads.
    pub fn sync(&self) -> io::Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut folder = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if self.done.load(Ordering::SeqCst) >= ticket {
            // An fsync that started after our rename has finished.
            return Ok(());
        }
        // Every ticket handed out so far belongs to a rename already made.
        let covers = self.requested.load(Ordering::SeqCst);
        let synced = match folder.take() {
            Some(f) => f.sync_all().map(|()| f),
            None => std::fs::File::open(&self.dir).and_then(|f| f.sync_all().map(|()| f)),
        };
        *folder = Some(synced?);
        self.done.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Notes a change to the folder (a removal) whose durability is left
    /// to the next fsync, whoever makes it: nobody waits for it. Returns
    /// its ticket, for [`GroupSync::covers`].
    pub fn mark(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Whether a finished fsync covers `ticket`.
    pub fn covers(&self, ticket: u64) -> bool {
        self.done.load(Ordering::SeqCst) >= ticket
    }

    /// Whether a change to the folder is not covered by a finished fsync.
    pub fn pending(&self) -> bool {
        self.done.load(Ordering::SeqCst) < self.requested.load(Ordering::SeqCst)
    }

    /// Fsyncs the folder if some change to it is not covered yet (the
    /// removals [`GroupSync::mark`]ed while no message arrived). Returns
    /// whether it fsynced. Blocking.
    pub fn sync_pending(&self) -> io::Result<bool> {
        if !self.pending() {
            return Ok(false);
        }
        self.sync().map(|()| true)
    }

    /// How many commits asked for a directory fsync so far.
    pub fn tickets(&self) -> u64 {
        self.requested.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_commits_all_return_after_a_sync_and_share_them() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(GroupSync::new(dir.path().to_path_buf()));
        let threads: Vec<_> = (0..64)
            .map(|_| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || g.sync())
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(g.tickets(), 64);
        assert_eq!(g.done.load(Ordering::SeqCst), 64);
    }

    #[test]
    fn a_caller_returns_only_after_a_sync_that_began_after_its_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupSync::new(dir.path().to_path_buf());
        g.sync().unwrap();
        assert_eq!(g.done.load(Ordering::SeqCst), 1);
        // A later caller is not covered by the earlier fsync: it makes one.
        g.sync().unwrap();
        assert_eq!(g.done.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn marked_changes_are_covered_by_the_next_sync_or_a_pending_one() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupSync::new(dir.path().to_path_buf());
        assert!(!g.sync_pending().unwrap(), "nothing to cover");
        let t = g.mark();
        assert!(!g.covers(t), "not yet fsynced");
        assert!(g.sync_pending().unwrap());
        assert!(g.covers(t));
        assert!(!g.sync_pending().unwrap(), "covered: no second fsync");
        // A commit's fsync covers a removal marked before it.
        let t = g.mark();
        g.sync().unwrap();
        assert!(g.covers(t));
        assert!(!g.sync_pending().unwrap());
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let g = GroupSync::new("/nonexistent/spool/queue".into());
        assert!(g.sync().is_err());
        // Positive control: an existing folder syncs.
        let dir = tempfile::tempdir().unwrap();
        assert!(GroupSync::new(dir.path().to_path_buf()).sync().is_ok());
    }
}

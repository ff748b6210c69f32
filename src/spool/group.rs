//! Group commit of the queue directory: a message file is fsynced on its
//! own, but its rename into `queue/` is made durable by an fsync of the
//! directory, and messages renamed at the same moment share one. Linux has
//! no multi-file fsync; this is the directory half only. A caller returns
//! only once a directory fsync that started after its rename has finished,
//! so nobody hears 250 before their message is durable.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::durable;

/// The directory fsyncs of one folder.
#[derive(Debug)]
pub struct GroupSync {
    dir: PathBuf,
    /// Tickets handed out: one per rename, taken after the rename.
    requested: AtomicU64,
    /// Every ticket up to this one is covered by a finished fsync.
    done: AtomicU64,
    /// One fsync at a time; waiters queue here.
    running: tokio::sync::Mutex<()>,
}

impl GroupSync {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            requested: AtomicU64::new(0),
            done: AtomicU64::new(0),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes every rename into the folder made before this call durable.
    pub async fn sync(&self) -> io::Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.running.lock().await;
        if self.done.load(Ordering::SeqCst) >= ticket {
            // An fsync that started after our rename has finished.
            return Ok(());
        }
        // Every ticket handed out so far belongs to a rename already made.
        let covers = self.requested.load(Ordering::SeqCst);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || durable::sync_dir(&dir))
            .await
            .map_err(io::Error::other)??;
        self.done.fetch_max(covers, Ordering::SeqCst);
        Ok(())
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_all_return_after_a_sync_and_share_them() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(GroupSync::new(dir.path().to_path_buf()));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let g = Arc::clone(&g);
            tasks.push(tokio::spawn(async move { g.sync().await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(g.tickets(), 64);
        assert_eq!(g.done.load(Ordering::SeqCst), 64);
    }

    #[tokio::test]
    async fn a_missing_folder_is_an_error() {
        let g = GroupSync::new("/nonexistent/spool/queue".into());
        assert!(g.sync().await.is_err());
    }
}

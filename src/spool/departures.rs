//! Delivered messages leaving the queue. A removal waits for nobody: the
//! delivery job hands the id over and is done; the next arrival's trip to
//! the disk (or the queue's tick within a tenth of a second when none
//! comes) renames the file out of `queue/`, and that arrival's directory
//! fsync makes the removal durable with its own rename. No thread hop
//! and no fsync is spent on a removal itself. A crash or power loss
//! before can deliver a message again, never lose one.
//!
//! The files leave for `tmp/` and are kept ([`Recycled`]) for new
//! messages to be written over: a message then costs the file system no
//! inode allocation and no inode release (ext4's inode allocator slows
//! down with every inode released in the last minute, which at a few
//! hundred messages a second was a fifth of the daemon's time), and a new
//! message of about the old one's size no block allocation either, so its
//! fdatasync writes data only. A crash leaves them in `tmp/`, which the
//! store clears at start. A kept file still holds the bytes of the
//! message that left: one that no new message has taken for
//! [`KEPT_FOR`] is unlinked, and so is every kept file at shutdown, so
//! that a delivered message does not stay on disk once traffic stops.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::error;

use super::group::GroupSync;

/// Files kept for reuse at most.
pub(super) const RECYCLE_MAX: usize = 256;

/// The largest file kept for reuse as it is: a larger one is emptied
/// first (its blocks freed at once).
pub(super) const RECYCLE_LEN_MAX: u64 = 128 * 1024;

/// How long a kept file waits for a new message before it is unlinked.
pub(super) const KEPT_FOR: Duration = Duration::from_secs(2);

/// Waiting removals beyond which the delivery job has them carried out at
/// once (on a blocking thread) rather than by the next arrival.
pub(super) const WAITING_MAX: usize = 64;

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The removals of delivered messages not yet made, and the kept files.
#[derive(Debug)]
pub(super) struct Departures {
    queue: PathBuf,
    /// The removals handed over and not finished.
    pending: Mutex<Pending>,
    /// Held while removals are made: the shutdown's last sync waits for
    /// any in progress, so none lands after it.
    making: Mutex<()>,
    recycled: Recycled,
    sync: Arc<GroupSync>,
}

impl Departures {
    pub(super) fn new(queue: PathBuf, tmp: PathBuf, sync: Arc<GroupSync>) -> Self {
        Self {
            queue,
            pending: Mutex::default(),
            making: Mutex::default(),
            recycled: Recycled {
                tmp,
                free: Mutex::default(),
                seq: AtomicU64::new(0),
                prefix: OnceLock::new(),
            },
            sync,
        }
    }

    /// Hands message `id` over for removal; returns how many wait.
    pub(super) fn leave(&self, id: &str) -> usize {
        let mut pending = locked(&self.pending);
        pending.leaving.insert(id.to_string());
        pending.waiting.push(id.to_string());
        pending.waiting.len()
    }

    /// Whether message `id` is on its way out of the queue.
    pub(super) fn is_leaving(&self, id: &str) -> bool {
        locked(&self.pending).leaving.contains(id)
    }

    /// Whether removals wait to be made.
    pub(super) fn waiting(&self) -> bool {
        !locked(&self.pending).waiting.is_empty()
    }

    /// Makes the waiting removals. Blocking: call it on the blocking
    /// thread of a disk trip, before that trip's directory fsync. Unless
    /// `wait`, it leaves them to removals already in progress elsewhere
    /// (an arrival does not wait for another's).
    pub(super) fn carry_out(&self, wait: bool) {
        let _making = match self.making.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if wait => locked(&self.making),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let ids = std::mem::take(&mut locked(&self.pending).waiting);
        for id in ids {
            if let Err(e) = self.remove(&id) {
                error!(queue_id = %id, error = %e,
                       "delivered message could not be removed from the queue; it will be delivered again");
            }
            locked(&self.pending).leaving.remove(&id);
        }
    }

    /// Moves message `id` out of the queue (to be written over by a new
    /// message; emptied first when large, unlinked when enough are kept),
    /// then its state and retry files. A message already gone is no error.
    fn remove(&self, id: &str) -> io::Result<()> {
        let msg = self.queue.join(format!("{id}.msg"));
        let spare = self.recycled.name();
        let moved = match &spare {
            Some(to) => fs::rename(&msg, to),
            None => fs::remove_file(&msg),
        };
        let spare = match moved {
            Ok(()) => spare,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Kept or not, the message must go (a full folder cannot take
            // the new name): unlinked.
            Err(_) if spare.is_some() => match fs::remove_file(&msg) {
                Ok(()) => None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let removed = self.sync.mark();
        if let Some(spare) = spare {
            // A large file is emptied (its blocks freed at once) and kept.
            let len = match fs::metadata(&spare) {
                Ok(m) if m.len() <= RECYCLE_LEN_MAX => Some(m.len()),
                Ok(_) => fs::OpenOptions::new()
                    .write(true)
                    .open(&spare)
                    .and_then(|f| f.set_len(0))
                    .ok()
                    .map(|()| 0),
                Err(_) => None,
            };
            match len {
                Some(len) => self.recycled.give(Free {
                    path: spare,
                    len,
                    removed,
                    kept_at: Instant::now(),
                }),
                None => {
                    let _ = fs::remove_file(&spare);
                }
            }
        }
        let _ = fs::remove_file(self.queue.join(format!("{id}.retry")));
        let _ = fs::remove_file(self.queue.join(format!("{id}.state")));
        Ok(())
    }

    /// Unlinks every kept file (the file system is full, or the daemon
    /// stops).
    pub(super) fn release_kept(&self) {
        self.recycled.release_all();
    }

    /// Whether a kept file has waited for a new message for `age`.
    pub(super) fn kept_longer_than(&self, age: Duration) -> bool {
        self.recycled.oldest_waited(age)
    }

    /// Unlinks the kept files that have waited for a new message for
    /// `age`; how many.
    pub(super) fn release_kept_longer_than(&self, age: Duration) -> usize {
        self.recycled.release_older(age)
    }

    /// A kept file to write a new message over, when one is free and its
    /// removal durable: its path and length.
    pub(super) fn reusable(&self) -> Option<(PathBuf, u64)> {
        self.recycled.take(&self.sync)
    }
}

/// Removals handed over: those not started, and all not finished.
#[derive(Debug, Default)]
struct Pending {
    /// Not renamed out yet.
    waiting: Vec<String>,
    /// Not finished: a queue scan must not find them and deliver them
    /// again.
    leaving: HashSet<String>,
}

/// Files of removed messages, moved to `tmp/`, for new messages to be
/// written over.
#[derive(Debug)]
pub(super) struct Recycled {
    tmp: PathBuf,
    free: Mutex<VecDeque<Free>>,
    seq: AtomicU64,
    /// `free-<process>.<store>`: the names of this store's files.
    prefix: OnceLock<String>,
}

/// A file of a removed message, kept for the next.
#[derive(Debug)]
struct Free {
    path: PathBuf,
    /// Its length: what a shorter new message must cut off.
    len: u64,
    /// The queue folder's ticket for its removal: the file is written over
    /// only once a directory fsync covers that removal, so that a power
    /// loss can never bring the old message's name back over new bytes.
    removed: u64,
    /// When it was kept: it holds the old message's bytes until written
    /// over or unlinked.
    kept_at: Instant,
}

impl Recycled {
    /// A file to write a new message into, when one is free and its
    /// removal durable.
    fn take(&self, sync: &GroupSync) -> Option<(PathBuf, u64)> {
        let mut free = locked(&self.free);
        if !sync.covers(free.front()?.removed) {
            return None;
        }
        free.pop_front().map(|f| (f.path, f.len))
    }

    /// A new name in `tmp/` for a file about to be freed, unless enough
    /// are kept already.
    fn name(&self) -> Option<PathBuf> {
        if locked(&self.free).len() >= RECYCLE_MAX {
            return None;
        }
        // Unique among stores and processes on the same spool.
        static STORES: AtomicU64 = AtomicU64::new(0);
        let prefix = self.prefix.get_or_init(|| {
            let store = STORES.fetch_add(1, Ordering::Relaxed);
            format!("free-{}.{store}", std::process::id())
        });
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Some(self.tmp.join(format!("{prefix}.{n}")))
    }

    /// Unlinks every kept file (the file system is full: their blocks
    /// are worth more free).
    fn release_all(&self) {
        let gone: Vec<Free> = locked(&self.free).drain(..).collect();
        for f in gone {
            let _ = fs::remove_file(&f.path);
        }
    }

    /// Whether the oldest kept file has waited for `age`.
    fn oldest_waited(&self, age: Duration) -> bool {
        locked(&self.free)
            .front()
            .is_some_and(|f| f.kept_at.elapsed() >= age)
    }

    /// Unlinks the kept files that have waited for `age` (the oldest are
    /// at the front); how many.
    fn release_older(&self, age: Duration) -> usize {
        let mut gone = Vec::new();
        {
            let mut free = locked(&self.free);
            while free.front().is_some_and(|f| f.kept_at.elapsed() >= age) {
                gone.extend(free.pop_front());
            }
        }
        for f in &gone {
            let _ = fs::remove_file(&f.path);
        }
        gone.len()
    }

    fn give(&self, file: Free) {
        let mut free = locked(&self.free);
        if free.len() < RECYCLE_MAX {
            free.push_back(file);
        } else {
            drop(free);
            let _ = fs::remove_file(&file.path);
        }
    }
}

//! The spool's files. One accepted message is `queue/<id>.msg`: a header
//! line, the envelope as JSON, the message bytes exactly as received, and a
//! trailer with the length and CRC-32 of the whole file, so a torn or
//! altered file is recognised and never delivered. Its per-recipient state
//! is `queue/<id>.state`, replaced atomically after each attempt (absent
//! until the first); an operator's retry request is `queue/<id>.retry`.
//! Every file carries its format version and is checked as a whole (see
//! [`super::format`]). Messages are written in `tmp/` and renamed into
//! `queue/` only once fsynced; unreadable files are moved to `corrupt/`.
//!
//! Why one long file: about a third is unit tests of the crash and
//! upgrade cases, which need the store's private paths.

use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tracing::error;

use super::departures::Departures;
use super::envelope::{Envelope, QueueState};
use super::format::{self, FormatError};
use super::id::{self, IdGenerator};
use crate::durable;

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool file {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write spool file {path}: {source}")]
    Unwritable {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("no message {0} in the queue")]
    NotFound(String),
    #[error("{0:?} is not a queue id")]
    BadId(String),
}

impl SpoolError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn corrupt(path: &Path) -> impl FnOnce(FormatError) -> SpoolError + '_ {
        move |e| SpoolError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    fn unwritable(path: &Path) -> impl FnOnce(FormatError) -> SpoolError + '_ {
        move |source| SpoolError::Unwritable {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the error says the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                || source.kind() == io::ErrorKind::StorageFull)
    }
}

/// A message read back from the queue.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub id: String,
    pub envelope: Envelope,
    pub body: crate::blob::Blob,
    pub state: QueueState,
}

/// The spool directory and the id generator that names its files.
#[derive(Debug)]
pub struct Store {
    queue: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    quarantine: PathBuf,
    work: PathBuf,
    ids: IdGenerator,
    /// Directory fsyncs of `queue/`, shared by messages committed together.
    queue_sync: std::sync::Arc<super::group::GroupSync>,
    /// Small messages just committed, for their first attempt.
    fresh: std::sync::Arc<Fresh>,
    /// Removals of delivered messages not made yet, and the files of
    /// removed messages kept for new ones to be written over.
    departures: std::sync::Arc<Departures>,
}

/// Octets of just-committed messages kept for their first attempt at most.
const FRESH_BUDGET: usize = 8 * 1024 * 1024;

/// Small messages just committed, kept in memory for their first attempt
/// so the queue does not read back what the session has just written
/// (bounded in octets; beyond, messages are read from disk as always).
#[derive(Debug, Default)]
struct Fresh {
    /// The messages by id, and their octets in all.
    held: std::sync::Mutex<(HashMap<String, FreshMessage>, usize)>,
}

/// A just-committed message: its envelope and body.
type FreshMessage = (Envelope, crate::blob::Blob);

impl Fresh {
    fn put(&self, id: &str, envelope: Envelope, body: Vec<u8>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.1 + body.len() > FRESH_BUDGET {
            return;
        }
        held.1 += body.len();
        held.0
            .insert(id.to_string(), (envelope, crate::blob::Blob::from(body)));
    }

    fn take(&self, id: &str) -> Option<FreshMessage> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let got = held.0.remove(id)?;
        held.1 -= got.1.len();
        Some(got)
    }
}

impl Store {
    /// Opens (creating when needed) the spool at `dir` for the daemon.
    /// Temporary files of transactions that never completed are removed
    /// (they were never acknowledged), and so are state files whose
    /// message is gone.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let store = Self::open_shared(dir)?;
        for entry in fs::read_dir(&store.tmp).map_err(SpoolError::io(&store.tmp))? {
            let entry = entry.map_err(SpoolError::io(&store.tmp))?;
            let _ = fs::remove_file(entry.path());
        }
        // Work folders of attempts a crash interrupted.
        for entry in fs::read_dir(&store.work).map_err(SpoolError::io(&store.work))? {
            let entry = entry.map_err(SpoolError::io(&store.work))?;
            let _ = fs::remove_dir_all(entry.path());
        }
        for entry in fs::read_dir(&store.queue).map_err(SpoolError::io(&store.queue))? {
            let path = entry.map_err(SpoolError::io(&store.queue))?.path();
            let leftover = path
                .extension()
                .is_some_and(|x| x == "state" || x == "retry");
            if leftover && !path.with_extension("msg").exists() {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(store)
    }

    /// Opens the spool beside a running daemon (operator commands): touches
    /// nothing the daemon may be writing.
    pub fn open_shared(dir: &Path) -> Result<Self, SpoolError> {
        let queue = dir.join("queue");
        let tmp = dir.join("tmp");
        let corrupt = dir.join("corrupt");
        let quarantine = dir.join("quarantine");
        let work = dir.join("work");
        // Parents get the usual mode; the spool itself is private (made
        // here with 0700: made with its parents, it would get theirs).
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(SpoolError::io(parent))?;
        }
        for d in [dir, &queue, &tmp, &corrupt, &quarantine, &work] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(SpoolError::io(d))?;
        }
        let mut floor = 0;
        for d in [&queue, &corrupt, &quarantine] {
            for name in ids_in(d)? {
                floor = floor.max(id::parse(&name).unwrap_or(0));
            }
        }
        let queue_sync = std::sync::Arc::new(super::group::GroupSync::new(queue.clone()));
        let departures = std::sync::Arc::new(Departures::new(
            queue.clone(),
            tmp.clone(),
            std::sync::Arc::clone(&queue_sync),
        ));
        Ok(Self {
            queue_sync,
            queue,
            tmp,
            corrupt,
            quarantine,
            work,
            ids: IdGenerator::starting_above(floor),
            fresh: std::sync::Arc::default(),
            departures,
        })
    }

    fn msg_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.state"))
    }

    fn retry_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.retry"))
    }

    fn checked<'a>(&self, id: &'a str) -> Result<&'a str, SpoolError> {
        if id::is_valid(id) {
            Ok(id)
        } else {
            Err(SpoolError::BadId(id.to_string()))
        }
    }

    /// Starts writing a new message for `envelope`. Nothing touches the
    /// disk yet: a message that fits [`Incoming`]'s buffer is written,
    /// fsynced and renamed in one trip at its commit.
    pub async fn begin(&self, envelope: &Envelope) -> Result<Incoming, SpoolError> {
        let id = self.ids.next();
        let head =
            format::message_head(envelope).map_err(SpoolError::unwritable(&self.tmp.join(&id)))?;
        // The file of a removed message when there is one (written
        // over, never created), else a new one named by the id.
        let (tmp_path, reused) = match self.departures.reusable() {
            Some((p, len)) => (p, Some(len)),
            None => (self.tmp.join(&id), None),
        };
        let mut incoming = Incoming {
            buf: Vec::with_capacity(BUFFER),
            file: None,
            reused,
            envelope: Some(envelope.clone()),
            head_len: head.len(),
            fresh: std::sync::Arc::clone(&self.fresh),
            departures: std::sync::Arc::clone(&self.departures),
            final_path: self.msg_path(&id),
            queue_sync: std::sync::Arc::clone(&self.queue_sync),
            tmp_path,
            id,
            crc: crc32fast::Hasher::new(),
            len: 0,
            failed: false,
        };
        incoming.write(&head).await?;
        Ok(incoming)
    }

    /// Writes a whole message at once (bounces the gateway makes itself).
    pub fn enqueue(&self, envelope: &Envelope, body: &[u8]) -> Result<String, SpoolError> {
        let id = self.ids.next();
        let path = self.msg_path(&id);
        let bytes =
            format::encode_message(envelope, body).map_err(SpoolError::unwritable(&path))?;
        durable::write_atomic(&path, &bytes).map_err(SpoolError::io(&path))?;
        Ok(id)
    }

    /// Keeps a copy of a message for `envelope`'s recipients in the
    /// quarantine, with the reason, until an operator releases it.
    pub fn quarantine(
        &self,
        envelope: &Envelope,
        body: &[u8],
        reason: &str,
    ) -> Result<String, SpoolError> {
        let id = self.ids.next();
        let path = self.quarantine.join(format!("{id}.msg"));
        let bytes =
            format::encode_message(envelope, body).map_err(SpoolError::unwritable(&path))?;
        let why = self.quarantine.join(format!("{id}.reason"));
        durable::write_atomic(&why, &format::encode_reason(reason))
            .map_err(SpoolError::io(&why))?;
        durable::write_atomic(&path, &bytes).map_err(SpoolError::io(&path))?;
        Ok(id)
    }

    /// Quarantined messages: id, envelope and reason, oldest first.
    pub fn quarantined(&self) -> Result<Vec<(String, Envelope, String)>, SpoolError> {
        let mut ids = ids_in(&self.quarantine)?;
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let path = self.quarantine.join(format!("{id}.msg"));
            let bytes = fs::read(&path).map_err(SpoolError::io(&path))?;
            let (envelope, _) =
                format::decode_message(&bytes).map_err(SpoolError::corrupt(&path))?;
            let why = self.quarantine.join(format!("{id}.reason"));
            let reason = match fs::read(&why).map(|b| format::decode_reason(&b)) {
                Ok(Ok(reason)) => reason,
                Ok(Err(e)) => format!("(reason unreadable: {e})"),
                Err(_) => String::new(),
            };
            out.push((id, envelope, reason));
        }
        Ok(out)
    }

    /// Whether more than `keep_free` percent of the spool's file system is
    /// free (for unprivileged writers): the quarantine may take more.
    /// An error reading it counts as no room.
    pub fn quarantine_has_room(&self, keep_free: u8) -> bool {
        match rustix::fs::statvfs(&self.quarantine) {
            Ok(v) if v.f_blocks > 0 => {
                u128::from(v.f_bavail) * 100 > u128::from(v.f_blocks) * u128::from(keep_free)
            }
            _ => false,
        }
    }

    /// How many messages the quarantine holds (their files are not read).
    pub fn quarantine_count(&self) -> Result<usize, SpoolError> {
        Ok(ids_in(&self.quarantine)?.len())
    }

    /// Moves quarantined message `id` back into the queue, marked as
    /// released so it is delivered (unchanged, with the reason) and never
    /// quarantined again.
    pub fn release(&self, id: &str) -> Result<(), SpoolError> {
        let id = self.checked(id)?;
        let path = self.quarantine.join(format!("{id}.msg"));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.to_string()))
            }
            Err(e) => return Err(SpoolError::io(&path)(e)),
        };
        let (mut envelope, body) =
            format::decode_message(&bytes).map_err(SpoolError::corrupt(&path))?;
        envelope.released = true;
        let dest = self.msg_path(id);
        let bytes =
            format::encode_message(&envelope, body).map_err(SpoolError::unwritable(&dest))?;
        durable::write_atomic(&dest, &bytes).map_err(SpoolError::io(&dest))?;
        let why = self.quarantine.join(format!("{id}.reason"));
        durable::remove(&why).map_err(SpoolError::io(&why))?;
        durable::remove(&path).map_err(SpoolError::io(&path))
    }

    /// Ids of every message in the queue, oldest first.
    pub fn list(&self) -> Result<Vec<String>, SpoolError> {
        let mut ids = ids_in(&self.queue)?;
        // Delivered, on their way out: not to be tried again.
        ids.retain(|id| !self.departures.is_leaving(id));
        ids.sort();
        Ok(ids)
    }

    /// The work folder for an attempt at message `id` (see [`super::work`]).
    pub fn work(&self, id: &str) -> Result<super::work::WorkDir, SpoolError> {
        let id = self.checked(id)?;
        let dir = self.work.join(id);
        super::work::WorkDir::create(dir.clone()).map_err(SpoolError::io(&dir))
    }

    /// Reads message `id` with its state, checking the file's integrity.
    pub fn load(&self, id: &str) -> Result<Spooled, SpoolError> {
        if let Some(fresh) = self.load_fresh(id) {
            return Ok(fresh);
        }
        let id = self.checked(id)?;
        // Delivered, its file not moved out yet: gone for every reader.
        if self.departures.is_leaving(id) {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let path = self.msg_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.to_string()))
            }
            Err(e) => return Err(SpoolError::io(&path)(e)),
        };
        let (envelope, body) =
            format::decode_message(&bytes).map_err(SpoolError::corrupt(&path))?;
        // The body is the part of the file's bytes it is: neither copied
        // nor moved to the front (a large message is not held twice).
        let start = body.as_ptr() as usize - bytes.as_ptr() as usize;
        let range = start..start + body.len();
        let body = crate::blob::Blob::new(crate::blob::Part::new(bytes, range));
        let state = self.load_state(id, &envelope)?;
        Ok(Spooled {
            id: id.to_string(),
            envelope,
            body,
            state,
        })
    }

    /// Message `id` as it was just committed, when it is still kept in
    /// memory for its first attempt (a small message) and its file is
    /// still there; `None` otherwise (read it with [`Store::load`]). One
    /// `stat` of the file: cheap enough for an async thread.
    pub fn load_fresh(&self, id: &str) -> Option<Spooled> {
        let (envelope, body) = self.fresh.take(id)?;
        // Exactly what the file holds, checked when it was written; the
        // file must still be there (an operator may have deleted it). Not
        // tried yet: no state file was ever written.
        if !self.msg_path(id).exists() {
            return None;
        }
        let state = QueueState::fresh(&envelope);
        Some(Spooled {
            id: id.to_string(),
            envelope,
            body,
            state,
        })
    }

    fn load_state(&self, id: &str, envelope: &Envelope) -> Result<QueueState, SpoolError> {
        let path = self.state_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(QueueState::fresh(envelope))
            }
            Err(e) => return Err(SpoolError::io(&path)(e)),
        };
        let state = format::decode_state(&bytes).map_err(SpoolError::corrupt(&path))?;
        if state.rcpts.len() != envelope.rcpts.len()
            || state
                .rcpts
                .iter()
                .zip(&envelope.rcpts)
                .any(|(s, e)| &s.addr != e)
        {
            return Err(SpoolError::Corrupt {
                path,
                reason: "state names other recipients than the envelope".into(),
            });
        }
        Ok(state)
    }

    /// When message `id` is next due (Unix seconds); 0 for a message never
    /// tried or one an operator asked to retry. Reads only the small state
    /// file and the retry marker; an unreadable marker is moved to
    /// `corrupt/` (and logged) and does not count.
    pub fn next_attempt(&self, id: &str) -> Result<u64, SpoolError> {
        let id = self.checked(id)?;
        let marker = self.retry_path(id);
        match fs::read(&marker) {
            Ok(bytes) => match format::decode_retry(&bytes, id) {
                Ok(()) => {
                    let _ = fs::remove_file(&marker);
                    return Ok(0);
                }
                Err(e) => self.set_aside_marker(id, &marker, &e),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::io(&marker)(e)),
        }
        let path = self.state_path(id);
        match fs::read(&path) {
            Ok(bytes) => format::decode_state(&bytes)
                .map(|s| s.next_attempt)
                .map_err(SpoolError::corrupt(&path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(SpoolError::io(&path)(e)),
        }
    }

    /// Moves an unreadable retry marker to `corrupt/`, with a log line.
    fn set_aside_marker(&self, id: &str, marker: &Path, why: &FormatError) {
        let to = self.corrupt.join(format!("{id}.retry"));
        let moved = fs::rename(marker, &to)
            .and_then(|()| durable::sync_dir(&self.corrupt))
            .and_then(|()| durable::sync_dir(&self.queue));
        match moved {
            Ok(()) => error!(event = "set-aside", queue_id = %id, file = %marker.display(),
                             reason = %why, moved_to = %to.display(),
                             "unreadable retry marker moved aside; the message keeps its schedule"),
            Err(e) => error!(event = "set-aside", queue_id = %id, file = %marker.display(),
                             reason = %why, error = %e,
                             "unreadable retry marker could not be moved aside"),
        }
    }

    /// Asks the daemon to try message `id` at its next queue scan. A marker
    /// file, so the operator never rewrites the state the daemon owns.
    pub fn request_retry(&self, id: &str) -> Result<(), SpoolError> {
        let id = self.checked(id)?;
        if !self.msg_path(id).exists() {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let marker = self.retry_path(id);
        durable::write_atomic(&marker, &format::encode_retry(id)).map_err(SpoolError::io(&marker))
    }

    /// Records the state of message `id` durably.
    pub fn save_state(&self, id: &str, state: &QueueState) -> Result<(), SpoolError> {
        let id = self.checked(id)?;
        // What is kept in memory of it holds no longer.
        self.fresh.take(id);
        let path = self.state_path(id);
        let bytes = format::encode_state(state).map_err(SpoolError::unwritable(&path))?;
        durable::write_atomic(&path, &bytes).map_err(SpoolError::io(&path))
    }

    /// Records the state of message `id` durably, sharing the directory
    /// fsync with the other state writes, removals and arrivals of the
    /// same moment (group commit): the state file is written and fsynced
    /// on its own and renamed into `queue/`; the call returns once a
    /// directory fsync that began after the rename has finished.
    pub async fn save_state_grouped(&self, id: &str, state: &QueueState) -> Result<(), SpoolError> {
        let id = self.checked(id)?;
        // What is kept in memory of it holds no longer.
        self.fresh.take(id);
        let path = self.state_path(id);
        let bytes = format::encode_state(state).map_err(SpoolError::unwritable(&path))?;
        let (p, sync) = (path.clone(), std::sync::Arc::clone(&self.queue_sync));
        // The write, its fsync, the rename and the shared directory fsync
        // in one trip to a blocking thread.
        tokio::task::spawn_blocking(move || {
            durable::write_replace(&p, &bytes)?;
            sync.sync()
        })
        .await
        .map_err(|e| SpoolError::io(&path)(io::Error::other(e)))?
        .map_err(SpoolError::io(&path))
    }

    /// Removes delivered message `id` like [`Store::remove`], without
    /// waiting: the next arrival's trip to the disk removes it before its
    /// directory fsync, or [`Store::sync_removals`] does (see
    /// [`super::departures`]). Until then [`Store::list`] leaves it out.
    /// A power loss before can deliver the message again, never lose one.
    pub fn remove_soon(&self, id: &str) -> Result<(), SpoolError> {
        let id = self.checked(id)?;
        // What is kept in memory of it holds no longer.
        self.fresh.take(id);
        if self.departures.leave(id) >= super::departures::WAITING_MAX {
            // Many wait and no arrival comes for them: now, off this thread.
            let departures = std::sync::Arc::clone(&self.departures);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || departures.carry_out(false))),
                Err(_) => departures.carry_out(false),
            }
        }
        Ok(())
    }

    /// Whether removals wait to be made or made durable, or a kept file
    /// of a removed message has waited too long for a new one.
    pub fn removals_pending(&self) -> bool {
        self.departures.waiting()
            || self.queue_sync.pending()
            || self
                .departures
                .kept_longer_than(super::departures::KEPT_FOR)
    }

    /// Makes the waiting removals of [`Store::remove_soon`], and fsyncs
    /// the queue folder when no arrival's fsync has covered a removal;
    /// then unlinks the kept files no new message took within
    /// [`super::departures::KEPT_FOR`]. Blocking; the daemon calls it
    /// when no arrival came for a tenth of a second, and at shutdown.
    pub fn sync_removals(&self) -> Result<(), SpoolError> {
        self.departures.carry_out(true);
        let synced = self
            .queue_sync
            .sync_pending()
            .map(|_| ())
            .map_err(SpoolError::io(&self.queue));
        self.departures
            .release_kept_longer_than(super::departures::KEPT_FOR);
        synced
    }

    /// Unlinks every kept file of a removed message (they hold its
    /// bytes). Blocking; the daemon calls it at shutdown, after the last
    /// [`Store::sync_removals`].
    pub fn release_kept(&self) {
        self.departures.release_kept();
    }

    /// Removes message `id` (delivered, bounced or deleted by an operator).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        let id = self.checked(id)?;
        // What is kept in memory of it holds no longer.
        self.fresh.take(id);
        let msg = self.msg_path(id);
        if !msg.exists() {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        // The message first: a state file left behind by a crash is
        // harmless (cleared at the next start), a message without its state
        // would be sent to every recipient again.
        durable::remove(&msg).map_err(SpoolError::io(&msg))?;
        let _ = fs::remove_file(self.retry_path(id));
        let state = self.state_path(id);
        durable::remove(&state).map_err(SpoolError::io(&state))
    }

    /// Moves message `id`, its state and retry marker out of the queue
    /// into `corrupt/`, where an operator can look at them. Returns the new
    /// path of the message.
    pub fn set_aside(&self, id: &str) -> Result<PathBuf, SpoolError> {
        let id = self.checked(id)?;
        // What is kept in memory of it holds no longer.
        self.fresh.take(id);
        let target = self.corrupt.join(format!("{id}.msg"));
        for (from, to) in [
            (
                self.retry_path(id),
                self.corrupt.join(format!("{id}.retry")),
            ),
            (
                self.state_path(id),
                self.corrupt.join(format!("{id}.state")),
            ),
            (self.msg_path(id), target.clone()),
        ] {
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io(&from)(e)),
            }
        }
        durable::sync_dir(&self.corrupt).map_err(SpoolError::io(&self.corrupt))?;
        durable::sync_dir(&self.queue).map_err(SpoolError::io(&self.queue))?;
        Ok(target)
    }
}

/// Octets of a message being received held in memory before they go to
/// its temporary file: a message of up to this size touches the disk
/// only at its commit.
const BUFFER: usize = 64 * 1024;

/// Once a message has its temporary file, the octets written to it at a
/// time.
const PIECE: usize = 256 * 1024;

/// Octets held when a client stalls from which they are written to the
/// file at once ([`Incoming::release`]).
const RELEASE_WRITES: usize = 16 * 1024;

/// Opens a message's temporary file: `reused`, the file of a removed
/// message (written over from its start, cut to length at the commit),
/// else a new one.
fn open_temporary(path: &Path, reused: bool) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(!reused)
        .open(path)
}

/// A message being received: bytes go to a temporary file (opened once
/// they outgrow the buffer), which becomes a queue file only through
/// [`Incoming::commit`]. Dropped uncommitted, the temporary file is
/// removed.
#[derive(Debug)]
pub struct Incoming {
    /// Bytes not written to the file yet.
    buf: Vec<u8>,
    /// The temporary file, once the message outgrew the buffer.
    file: Option<fs::File>,
    /// The temporary file is one of a removed message, of this length
    /// (opened without creating it, written over).
    reused: Option<u64>,
    /// The envelope, and the length of the file's header that holds it.
    envelope: Option<Envelope>,
    head_len: usize,
    fresh: std::sync::Arc<Fresh>,
    /// Removals made in the commit's trip; the kept files, given back to
    /// the file system when it is full.
    departures: std::sync::Arc<Departures>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    queue_sync: std::sync::Arc<super::group::GroupSync>,
    id: String,
    crc: crc32fast::Hasher,
    len: u64,
    /// A write failed: what was handed to it is gone, so nothing more may
    /// be written or committed (a later write would start the file again).
    failed: bool,
}

impl Incoming {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes the buffer to the temporary file (created on first use), in
    /// one trip to a blocking thread that takes the file and the buffer
    /// with it and gives both back (no copy on the way).
    async fn spill(&mut self) -> Result<(), SpoolError> {
        self.usable()?;
        // Until the write is back, this message is not whole.
        self.failed = true;
        let (file, buf) = (self.file.take(), std::mem::take(&mut self.buf));
        let (tmp, reused) = (self.tmp_path.clone(), self.reused.is_some());
        let step = tokio::task::spawn_blocking(move || -> io::Result<_> {
            use std::io::Write as _;
            let mut f = match file {
                Some(f) => f,
                None => open_temporary(&tmp, reused)?,
            };
            let mut buf = buf;
            f.write_all(&buf)?;
            buf.clear();
            Ok((f, buf))
        })
        .await
        .map_err(|e| SpoolError::io(&self.tmp_path)(io::Error::other(e)))?;
        let (file, buf) = match step {
            Ok(done) => done,
            Err(e) => return Err(self.failure(SpoolError::io(&self.tmp_path)(e)).await),
        };
        self.file = Some(file);
        self.buf = buf;
        self.failed = false;
        Ok(())
    }

    /// An error unless bytes may still be written and committed.
    fn usable(&self) -> Result<(), SpoolError> {
        let why = if self.id.is_empty() {
            "spool file already closed"
        } else if self.failed {
            "an earlier write to the spool file failed"
        } else {
            return Ok(());
        };
        Err(SpoolError::Io {
            path: self.tmp_path.clone(),
            source: io::Error::other(why),
        })
    }

    /// The client stalls: a stalled session should not hold a piece of its
    /// message in memory meanwhile. From [`RELEASE_WRITES`] held octets on
    /// the piece is written to the temporary file and the buffer freed;
    /// less is kept (no disk write and no file for a few octets, however
    /// often a client pauses), the buffer shrunk to it.
    pub async fn release(&mut self) -> Result<(), SpoolError> {
        if self.buf.len() < RELEASE_WRITES {
            self.buf.shrink_to_fit();
            return Ok(());
        }
        self.spill().await?;
        self.buf = Vec::new();
        Ok(())
    }

    /// Appends message bytes (and, first, the header), counted by the
    /// trailer.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.usable()?;
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        // Until the file exists a message is held up to BUFFER; after that
        // it goes in pieces of PIECE (fewer trips to a blocking thread).
        // What is held stays within the limit (or one call's bytes): the
        // buffer is written before it would grow past it.
        let limit = if self.file.is_some() { PIECE } else { BUFFER };
        if !self.buf.is_empty() && self.buf.len() + bytes.len() > limit {
            self.spill().await?;
        }
        self.buf.extend_from_slice(bytes);
        let limit = if self.file.is_some() { PIECE } else { BUFFER };
        if self.buf.len() >= limit {
            self.spill().await?;
        }
        Ok(())
    }

    /// Makes the message durable in the queue and returns its id. Only
    /// after this returns may the client be told 250.
    pub async fn commit(mut self) -> Result<String, SpoolError> {
        self.usable()?;
        let t = format::trailer(self.len, self.crc.clone().finalize());
        self.buf.extend_from_slice(&t);
        // Writes made earlier (a message larger than the buffer) are
        // finished, and their errors seen, by flushing the file itself.
        let file = self.file.take();
        let pending = std::mem::take(&mut self.buf);
        let (tmp, dest) = (self.tmp_path.clone(), self.final_path.clone());
        let sync = std::sync::Arc::clone(&self.queue_sync);
        // What is still buffered (a small message: all of it), the fsync,
        // the rename and the directory fsync shared with the renames of the
        // same moment (group commit), in one trip to a blocking thread.
        let whole = file.is_none();
        let reused = self.reused;
        // The file's length: a longer file written over is cut to it.
        let len = self.len + t.len() as u64;
        // A small message's body is kept for its first attempt. It is put
        // in memory before the file enters the queue, so that nothing can
        // find the file, try it and record a state the kept copy would
        // then hide (a recorded state takes the kept copy away).
        let keep = match (whole, self.envelope.take()) {
            (true, Some(envelope)) => Some((
                std::sync::Arc::clone(&self.fresh),
                self.id.clone(),
                envelope,
                self.head_len,
                t.len(),
            )),
            _ => None,
        };
        let departures = std::sync::Arc::clone(&self.departures);
        let step = tokio::task::spawn_blocking(move || -> Result<(), (bool, io::Error)> {
            // Removals of delivered messages ride along: this trip's
            // directory fsync makes them durable with the arrival.
            departures.carry_out(false);
            {
                use std::io::Write as _;
                let mut f = match file {
                    Some(f) => f,
                    None => open_temporary(&tmp, reused.is_some()).map_err(|e| (false, e))?,
                };
                f.write_all(&pending).map_err(|e| (false, e))?;
                if reused.is_some_and(|old| old > len) {
                    f.set_len(len).map_err(|e| (false, e))?;
                }
                // Data and length (what reading it back needs); a file
                // written over in place needs no journal commit for it.
                f.sync_data().map_err(|e| (false, e))?;
            }
            let kept = keep.map(|(fresh, id, envelope, head_len, trailer)| {
                let mut body = pending;
                body.truncate(body.len().saturating_sub(trailer));
                body.drain(..head_len.min(body.len()));
                fresh.put(&id, envelope, body);
                (fresh, id)
            });
            let entered = durable::rename_new(&tmp, &dest)
                .map_err(|e| (true, e))
                .and_then(|()| sync.sync().map_err(|e| (true, e)));
            if entered.is_err() {
                if let Some((fresh, id)) = kept {
                    fresh.take(&id);
                }
            }
            entered
        })
        .await
        .map_err(|e| SpoolError::Io {
            path: self.final_path.clone(),
            source: io::Error::other(e),
        })?;
        match step {
            Ok(()) => Ok(std::mem::take(&mut self.id)),
            Err((false, e)) => Err(self.failure(SpoolError::io(&self.tmp_path)(e)).await),
            Err((true, e)) => Err(self.failure(SpoolError::io(&self.final_path)(e)).await),
        }
    }

    /// A failed write: on a full file system the kept files of removed
    /// messages are given back to it first.
    async fn failure(&self, e: SpoolError) -> SpoolError {
        if e.is_disk_full() {
            let departures = std::sync::Arc::clone(&self.departures);
            let _ = tokio::task::spawn_blocking(move || departures.release_kept()).await;
        }
        e
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Queue ids of the `*.msg` files in `dir`.
fn ids_in(dir: &Path) -> Result<Vec<String>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(SpoolError::io(dir))? {
        let entry = entry.map_err(SpoolError::io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".msg") {
            if id::is_valid(id) {
                out.push(id.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            mail_from: "a@example.org".into(),
            rcpts: vec!["b@example.dk".into()],
            received: 1,
            client: "127.0.0.1".into(),
            helo: "client".into(),
            eight_bit: false,
            smtputf8: false,
            released: false,
            submission: false,
        }
    }

    /// Commits a message with `body`.
    async fn commit_body(store: &Store, body: &[u8]) -> String {
        let mut inc = store.begin(&envelope()).await.unwrap();
        inc.write(body).await.unwrap();
        inc.commit().await.unwrap()
    }

    /// Removes a delivered message and makes the removal durable.
    fn remove_now(store: &Store, id: &str) {
        store.remove_soon(id).unwrap();
        store.sync_removals().unwrap();
    }

    /// Files in the spool's `tmp/` (kept files among them).
    fn tmp_files(dir: &Path) -> usize {
        fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    /// Message `id`'s body as read back from its file.
    fn read_back(store: &Store, id: &str) -> Vec<u8> {
        store.fresh.take(id);
        store.load(id).unwrap().body.as_ref().to_vec()
    }

    #[tokio::test]
    async fn roundtrip_and_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut inc = store.begin(&envelope()).await.unwrap();
        inc.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        let id = inc.commit().await.unwrap();
        let got = store.load(&id).unwrap();
        assert_eq!(got.body.as_ref(), b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(got.envelope, envelope());

        let path = dir.path().join("queue").join(format!("{id}.msg"));
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(matches!(store.load(&id), Err(SpoolError::Corrupt { .. })));
        store.set_aside(&id).unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_load_of_a_small_message_takes_what_was_just_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = b"Subject: f\r\n\r\nfresh\r\n";
        async fn commit(store: &Store, body: &[u8]) -> String {
            let mut inc = store.begin(&envelope()).await.unwrap();
            inc.write(body).await.unwrap();
            inc.commit().await.unwrap()
        }
        let id = commit(&store, body).await;
        let path = dir.path().join("queue").join(format!("{id}.msg"));
        // Torn on disk after the commit: the first load has the bytes as
        // they were written (and checked); the next one reads the file.
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let got = store.load(&id).unwrap();
        assert_eq!(got.body.as_ref(), body);
        assert_eq!(got.envelope, envelope());
        assert_eq!(got.state, QueueState::fresh(&envelope()));
        assert!(matches!(store.load(&id), Err(SpoolError::Corrupt { .. })));
        // Removed by an operator (another process) before its first
        // attempt: gone, not delivered from memory.
        let id = commit(&store, body).await;
        fs::remove_file(dir.path().join("queue").join(format!("{id}.msg"))).unwrap();
        assert!(matches!(store.load(&id), Err(SpoolError::NotFound(_))));
        assert_eq!(store.fresh.held.lock().unwrap().1, 0, "nothing left held");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stall_writes_a_large_piece_out_and_keeps_a_few_octets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A few octets: no temporary file for them, the small message
        // stays kept in memory for its first attempt.
        let mut inc = store.begin(&envelope()).await.unwrap();
        inc.write(b"Subject: s\r\n\r\n").await.unwrap();
        inc.release().await.unwrap();
        assert!(inc.file.is_none(), "a file for a few octets");
        inc.write(b"paused\r\n").await.unwrap();
        let id = inc.commit().await.unwrap();
        let got = store.load_fresh(&id).expect("kept in memory");
        assert_eq!(got.body.as_ref(), b"Subject: s\r\n\r\npaused\r\n");
        // A large piece: written out and its buffer freed.
        let mut inc = store.begin(&envelope()).await.unwrap();
        let piece = vec![b'y'; RELEASE_WRITES];
        inc.write(&piece).await.unwrap();
        inc.release().await.unwrap();
        assert!(inc.file.is_some());
        assert_eq!(inc.buf.capacity(), 0);
        inc.write(b"\r\n").await.unwrap();
        let id = inc.commit().await.unwrap();
        let mut want = piece.clone();
        want.extend_from_slice(b"\r\n");
        assert_eq!(store.load(&id).unwrap().body.as_ref(), want.as_slice());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_failed_write_nothing_more_is_written_or_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut inc = store.begin(&envelope()).await.unwrap();
        // The temporary file cannot be created: the first piece fails.
        fs::remove_dir_all(dir.path().join("tmp")).unwrap();
        let piece = vec![b'x'; BUFFER];
        assert!(inc.write(&piece).await.is_err());
        // What that write took is gone: the message may not go on as if
        // whole, even once the folder is back.
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let again = inc.write(b"more\r\n").await.unwrap_err().to_string();
        assert!(again.contains("an earlier write"), "{again}");
        assert!(inc.commit().await.is_err());
        assert!(store.list().unwrap().is_empty());
        // Control: a new message writes and commits.
        let mut inc = store.begin(&envelope()).await.unwrap();
        inc.write(&piece).await.unwrap();
        assert!(inc.commit().await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_fails_keeps_nothing_in_memory() {
        // The kept copy is put before the file enters the queue (so that no
        // recorded state can come before it); a commit whose rename fails
        // takes it back.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut inc = store.begin(&envelope()).await.unwrap();
        inc.write(b"Subject: f\r\n\r\nfresh\r\n").await.unwrap();
        let id = inc.id().to_string();
        fs::rename(dir.path().join("queue"), dir.path().join("elsewhere")).unwrap();
        assert!(inc.commit().await.is_err());
        assert_eq!(store.fresh.held.lock().unwrap().1, 0, "nothing left held");
        assert!(store.fresh.take(&id).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_messages_file_is_written_over_by_the_next_once_its_removal_is_durable() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let commit = |body: &'static [u8]| commit_body(&store, body);
        let first = commit(b"Subject: 1\r\n\r\nfirst secret, a longer message\r\n").await;
        let path = |id: &str| dir.path().join("queue").join(format!("{id}.msg"));
        let inode = fs::metadata(path(&first)).unwrap().ino();
        store.remove_soon(&first).unwrap();
        assert!(
            store.list().unwrap().is_empty(),
            "left out of the queue at once"
        );
        assert!(
            matches!(store.load(&first), Err(SpoolError::NotFound(_))),
            "and gone for a reader told of it late"
        );
        assert!(
            path(&first).exists(),
            "the file goes with the next trip to the disk"
        );
        // The next arrival's trip moves it out; its file was chosen before
        // (control: a removal not durable yet is not written over).
        let early = commit(b"Subject: e\r\n\r\nearly\r\n").await;
        assert!(!path(&first).exists(), "removed from the queue");
        assert_ne!(fs::metadata(path(&early)).unwrap().ino(), inode);
        assert_eq!(tmp_files(dir.path()), 1, "kept in tmp/");
        // The early commit's directory fsync covered the removal: the next
        // message, shorter, is written into that very file and cut to length.
        let second = commit(b"Subject: 2\r\n\r\nsecond\r\n").await;
        assert_eq!(fs::metadata(path(&second)).unwrap().ino(), inode);
        assert_eq!(tmp_files(dir.path()), 0);
        let bytes = fs::read(path(&second)).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"secret"),
            "nothing of the old message is left"
        );
        assert_eq!(read_back(&store, &second), b"Subject: 2\r\n\r\nsecond\r\n");
        // A removal with no arrival after it is made durable by the
        // daemon's sync, and then its file is written over.
        remove_now(&store, &second);
        let third = commit(b"Subject: 3\r\n\r\nthird message, longer than the second\r\n").await;
        assert_eq!(fs::metadata(path(&third)).unwrap().ino(), inode);
        assert_eq!(
            read_back(&store, &third),
            b"Subject: 3\r\n\r\nthird message, longer than the second\r\n"
        );
        // A restart clears what was kept.
        remove_now(&store, &third);
        assert_eq!(tmp_files(dir.path()), 1);
        drop(store);
        let _store = Store::open(dir.path()).unwrap();
        assert_eq!(tmp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn kept_files_go_once_they_wait_too_long_and_at_shutdown() {
        use super::super::departures::KEPT_FOR;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keep_one = || async {
            let id = commit_body(&store, b"Subject: k\r\n\r\nkept words\r\n").await;
            remove_now(&store, &id);
            assert_eq!(tmp_files(dir.path()), 1, "kept");
        };
        keep_one().await;
        // Control: a file that has not waited that long stays.
        let hour = Duration::from_secs(3600);
        assert!(!store.departures.kept_longer_than(hour));
        assert_eq!(store.departures.release_kept_longer_than(hour), 0);
        assert_eq!(tmp_files(dir.path()), 1);
        assert!(store.departures.kept_longer_than(Duration::ZERO));
        assert_eq!(store.departures.release_kept_longer_than(Duration::ZERO), 1);
        assert_eq!(tmp_files(dir.path()), 0);
        // The daemon's tick: once one has waited KEPT_FOR it has work,
        // and its sync unlinks the file.
        keep_one().await;
        std::thread::sleep(KEPT_FOR + Duration::from_millis(50));
        assert!(store.removals_pending());
        store.sync_removals().unwrap();
        assert_eq!(tmp_files(dir.path()), 0);
        assert!(!store.removals_pending());
        // Shutdown.
        keep_one().await;
        store.release_kept();
        assert_eq!(tmp_files(dir.path()), 0);
        // A new message after all that is written to a new file.
        let id = commit_body(&store, b"Subject: n\r\n\r\nnew\r\n").await;
        assert_eq!(read_back(&store, &id), b"Subject: n\r\n\r\nnew\r\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiting_removals_are_made_without_waiting_for_an_arrival() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let n = super::super::departures::WAITING_MAX;
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut inc = store.begin(&envelope()).await.unwrap();
            inc.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
            ids.push(inc.commit().await.unwrap());
        }
        let on_disk = || fs::read_dir(dir.path().join("queue")).unwrap().count();
        for id in &ids[..n - 1] {
            store.remove_soon(id).unwrap();
        }
        // Control: below the bound they wait for an arrival or the tick.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(on_disk(), n);
        assert_eq!(store.list().unwrap().len(), 1, "the waiting are left out");
        store.remove_soon(&ids[n - 1]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while on_disk() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(on_disk(), 0, "made on a blocking thread at the bound");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_removed_message_is_emptied_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let large = vec![b'a'; super::super::departures::RECYCLE_LEN_MAX as usize + 1];
        let id = commit_body(&store, &large).await;
        remove_now(&store, &id);
        let kept: Vec<_> = fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(fs::metadata(&kept[0]).unwrap().len(), 0, "emptied");
        // Written over by the next message, then kept in turn.
        let next = b"Subject: n\r\n\r\nnext\r\n";
        let id = commit_body(&store, next).await;
        assert_eq!(tmp_files(dir.path()), 0, "reused");
        assert_eq!(read_back(&store, &id), next);
        remove_now(&store, &id);
        // A small one is kept as it is.
        let id = commit_body(&store, b"Subject: s\r\n\r\nsmall\r\n").await;
        remove_now(&store, &id);
        assert_eq!(tmp_files(dir.path()), 1);
        // Written over by a message that goes to disk in pieces (longer
        // than the file), which is kept in turn and cut by a short one.
        let big: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let id = commit_body(&store, &big).await;
        assert_eq!(tmp_files(dir.path()), 0, "reused");
        assert_eq!(read_back(&store, &id), big);
        remove_now(&store, &id);
        let short = b"Subject: s\r\n\r\nshort\r\n";
        let id = commit_body(&store, short).await;
        assert_eq!(tmp_files(dir.path()), 0, "reused");
        assert_eq!(read_back(&store, &id), short);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_messages_touch_the_disk_at_commit_and_large_ones_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tmp_files = || fs::read_dir(dir.path().join("tmp")).unwrap().count();
        let mut small = store.begin(&envelope()).await.unwrap();
        small.write(b"Subject: s\r\n\r\nbody\r\n").await.unwrap();
        assert_eq!(tmp_files(), 0, "a small message waits in memory");
        // Larger than the buffer, written in pieces: on disk before commit.
        let piece: Vec<u8> = (0..7000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut large = store.begin(&envelope()).await.unwrap();
        let mut want = b"Subject: l\r\n\r\n".to_vec();
        large.write(&want.clone()).await.unwrap();
        for _ in 0..30 {
            large.write(&piece).await.unwrap();
            want.extend_from_slice(&piece);
        }
        assert_eq!(tmp_files(), 1, "a large message is written as it comes");
        let (a, b) = (small.commit().await.unwrap(), large.commit().await.unwrap());
        assert_eq!(tmp_files(), 0);
        assert_eq!(
            store.load(&a).unwrap().body.as_ref(),
            b"Subject: s\r\n\r\nbody\r\n"
        );
        assert_eq!(store.load(&b).unwrap().body.as_ref(), &want[..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_state_writes_and_removals_land_and_share_directory_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let mut ids = Vec::new();
        for _ in 0..8 {
            let mut inc = store.begin(&envelope()).await.unwrap();
            inc.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
            ids.push(inc.commit().await.unwrap());
        }
        let before = store.queue_sync.tickets();
        let mut tasks = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let (store, id) = (std::sync::Arc::clone(&store), id.clone());
            tasks.push(tokio::spawn(async move {
                let mut st = QueueState::fresh(&envelope());
                st.attempts = n as u32 + 1;
                store.save_state_grouped(&id, &st).await.unwrap();
                st
            }));
        }
        for (id, t) in ids.iter().zip(tasks) {
            let st = t.await.unwrap();
            assert_eq!(store.load(id).unwrap().state, st, "state written");
        }
        // Every write asked the group for its directory fsync.
        assert_eq!(store.queue_sync.tickets(), before + 8);

        store.request_retry(&ids[0]).unwrap();
        store.remove_soon(&ids[0]).unwrap();
        store.sync_removals().unwrap();
        for ext in ["msg", "state", "retry"] {
            let p = dir.path().join("queue").join(format!("{}.{ext}", ids[0]));
            assert!(!p.exists(), "{} left behind", p.display());
        }
        assert!(!store.queue_sync.pending(), "the removal is durable");
        // The control: the others are still there with their state.
        assert_eq!(store.list().unwrap().len(), 7);
        assert_eq!(store.load(&ids[1]).unwrap().state.attempts, 2);
    }

    #[tokio::test]
    async fn dropped_incoming_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut inc = store.begin(&envelope()).await.unwrap();
        inc.write(b"partial").await.unwrap();
        drop(inc);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.list().unwrap().is_empty());
    }

    /// A spool directory holding the format 1 fixture (written by the
    /// format 1 code; see tests/fixtures/spool-v1/README.md).
    fn v1_spool() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
        for sub in ["queue", "quarantine"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
            for entry in fs::read_dir(fixture.join(sub)).unwrap() {
                let entry = entry.unwrap();
                fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
        dir
    }

    const PARTIAL: &str = "066170214BE607";
    const FRESH: &str = "066170214BFB30";
    const HELD: &str = "066170214BFDEC";

    #[test]
    fn the_quarantine_leaves_the_share_asked_for_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.quarantine_has_room(0));
        assert!(!store.quarantine_has_room(100));
    }

    #[test]
    fn the_spool_is_made_private_and_its_parents_are_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("var/spool");
        Store::open(&spool).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&spool), 0o700);
        assert_ne!(mode(&dir.path().join("var")), 0o700);
    }

    #[test]
    fn a_format_1_spool_is_read_after_the_upgrade() {
        let dir = v1_spool();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap(), vec![PARTIAL, FRESH]);

        let m = store.load(PARTIAL).unwrap();
        assert_eq!(m.envelope.received, 1_767_225_600);
        assert_eq!(m.state.attempts, 1);
        let pending: Vec<&str> = m.state.pending().map(|r| r.addr.as_str()).collect();
        assert_eq!(pending, vec!["later@example-law.dk"]);
        // The format 1 retry marker (an empty file) is honoured once.
        assert_eq!(store.next_attempt(PARTIAL).unwrap(), 0);
        assert_eq!(store.next_attempt(PARTIAL).unwrap(), 1_767_225_660);

        let m = store.load(FRESH).unwrap();
        assert_eq!(m.state, QueueState::fresh(&m.envelope));
        assert_eq!(store.next_attempt(FRESH).unwrap(), 0);

        let held = store.quarantined().unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0, HELD);
        assert_eq!(held[0].2, "cannot decrypt: no key for the RecipientInfo");

        // The next attempt rewrites the state in format 2; the message file
        // stays as it was, and both are still read together.
        let mut st = store.load(PARTIAL).unwrap().state;
        st.attempts = 2;
        store.save_state(PARTIAL, &st).unwrap();
        let on_disk = fs::read(dir.path().join(format!("queue/{PARTIAL}.state"))).unwrap();
        assert!(on_disk.starts_with(b"SMIMEGW-STATE 2\n"));
        let msg = fs::read(dir.path().join(format!("queue/{PARTIAL}.msg"))).unwrap();
        assert!(msg.starts_with(b"SMIMEGW-SPOOL 1 "));
        assert_eq!(store.load(PARTIAL).unwrap().state, st);

        // Released from quarantine, it is written in format 2.
        store.release(HELD).unwrap();
        let m = store.load(HELD).unwrap();
        assert!(m.envelope.released);
        assert!(m.body.ends_with(b"held\r\n"));
        let msg = fs::read(dir.path().join(format!("queue/{HELD}.msg"))).unwrap();
        assert!(msg.starts_with(b"SMIMEGW-SPOOL 2 "));
    }

    #[tokio::test]
    async fn streamed_and_whole_files_are_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut inc = store.begin(&envelope()).await.unwrap();
        inc.write(b"Subject: x\r\n").await.unwrap();
        inc.write(b"\r\nbody\r\n").await.unwrap();
        let id = inc.commit().await.unwrap();
        let written = fs::read(dir.path().join(format!("queue/{id}.msg"))).unwrap();
        assert_eq!(
            written,
            format::encode_message(&envelope(), b"Subject: x\r\n\r\nbody\r\n").unwrap()
        );
    }

    #[test]
    fn out_of_range_times_are_corrupt_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.enqueue(&envelope(), b"Subject: x\r\n\r\n").unwrap();
        let mut st = QueueState::fresh(&envelope());
        st.attempts = 1;
        st.next_attempt = super::super::time::MAX_SECS;
        store.save_state(&id, &st).unwrap();
        assert!(store.load(&id).is_ok());

        // A state naming the year 10000, with a correct checksum.
        let json = format!(
            "{{\"attempts\":1,\"next_attempt\":{},\"rcpts\":[{{\"addr\":\"b@example.dk\",\"status\":\"pending\"}}]}}",
            super::super::time::MAX_SECS + 1
        );
        let body = format!("SMIMEGW-STATE 2\n{json}").into_bytes();
        let mut sealed = body.clone();
        sealed.extend_from_slice(&format::trailer(body.len() as u64, crc32fast::hash(&body)));
        fs::write(dir.path().join(format!("queue/{id}.state")), &sealed).unwrap();
        store.request_retry(&id).unwrap();
        match store.load(&id) {
            Err(SpoolError::Corrupt { reason, .. }) => {
                assert!(reason.contains("next_attempt"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The retry marker is consumed, then the state is found corrupt.
        assert_eq!(store.next_attempt(&id).unwrap(), 0);
        assert!(matches!(
            store.next_attempt(&id),
            Err(SpoolError::Corrupt { .. })
        ));
        store.request_retry(&id).unwrap();
        store.set_aside(&id).unwrap();
        assert!(store.list().unwrap().is_empty());
        for ext in ["msg", "state", "retry"] {
            assert!(
                dir.path().join(format!("corrupt/{id}.{ext}")).exists(),
                "{ext}"
            );
        }

        // An envelope naming u64::MAX is refused when written.
        let mut late = envelope();
        late.received = u64::MAX;
        assert!(matches!(
            store.enqueue(&late, b"x"),
            Err(SpoolError::Unwritable { .. })
        ));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_retry_marker_is_set_aside_and_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.enqueue(&envelope(), b"Subject: x\r\n\r\n").unwrap();
        let mut st = QueueState::fresh(&envelope());
        st.attempts = 1;
        st.next_attempt = 1_900_000_000;
        store.save_state(&id, &st).unwrap();

        store.request_retry(&id).unwrap();
        let marker = dir.path().join(format!("queue/{id}.retry"));
        let mut bytes = fs::read(&marker).unwrap();
        bytes[17] ^= 1;
        fs::write(&marker, &bytes).unwrap();
        assert_eq!(store.next_attempt(&id).unwrap(), 1_900_000_000);
        assert!(!marker.exists());
        assert!(dir.path().join(format!("corrupt/{id}.retry")).exists());
        assert!(store.load(&id).is_ok(), "the message itself is fine");

        // Another message's marker under this name.
        fs::write(&marker, format::encode_retry("00000000000001")).unwrap();
        assert_eq!(store.next_attempt(&id).unwrap(), 1_900_000_000);
    }

    #[test]
    fn work_folders_left_by_a_crash_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let work = store.work("0661729839930A").unwrap();
        std::fs::write(work.path().join("0.part"), b"half written").unwrap();
        let left = work.path().to_path_buf();
        std::mem::forget(work); // a crash: the attempt never ends
                                // Positive control: an operator command beside the daemon leaves it.
        Store::open_shared(dir.path()).unwrap();
        assert!(left.join("0.part").exists());
        // The daemon's start removes it.
        Store::open(dir.path()).unwrap();
        assert!(!left.exists());
        assert!(dir.path().join("work").is_dir());
        assert!(
            store.work("../x").is_err(),
            "only queue ids name work folders"
        );
    }
}

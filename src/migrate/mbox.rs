//! An mbox file as a migration source, locked as MTAs and mail clients
//! lock it: a dot-lock (`FILE.lock`, created exclusively) and a POSIX
//! `fcntl` write lock on the file itself, both held for the whole run.
//! Messages are separated by `From ` lines (after a blank line); body
//! lines that look like one are quoted with `>` (mboxrd) on writing and
//! unquoted on reading; flags live in `Status`/`X-Status`. The folder is
//! the file; new copies are appended and fsynced (a batch in one write
//! and one fsync); originals are appended (once: checked by their
//! SHA-256) to a sibling mbox named after the originals folder, fsynced
//! once per batch, and removed from this file at the end of
//! the run by writing the kept messages to a new file, fsyncing it and
//! renaming it over the old one (a crash before leaves the originals
//! where they were; a re-run finds their copies and finishes).
//!
//! Why long: the format (separators, quoting, flags), the locks and the
//! rewrite belong together; their tests follow.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{fcntl_lock, FlockOperation};

use super::maildir::marker_in;
use super::rekey;
use super::source::{Entry, NewMessage, Source, SourceError};
use crate::durable::sync_dir;
use crate::mail::lines;

/// How long a lock held by someone else is waited for.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// A dot-lock older than this is left by a crashed program (as mutt and
/// Postfix judge it).
const STALE: Duration = Duration::from_secs(600);

/// An mbox file, locked.
struct Locked {
    path: PathBuf,
    file: File,
    dotlock: PathBuf,
}

impl Locked {
    fn open(path: &Path, create: bool) -> Result<Self, SourceError> {
        let dotlock = PathBuf::from(format!("{}.lock", path.display()));
        let start = Instant::now();
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dotlock)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let old = fs::metadata(&dotlock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > STALE);
                    let stale = old || holder_is_gone(&dotlock);
                    if stale {
                        let _ = fs::remove_file(&dotlock);
                        continue;
                    }
                    if start.elapsed() > LOCK_WAIT {
                        return Err(SourceError::Locked(dotlock.display().to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(SourceError::io(&dotlock, e)),
            }
        }
        // Never through a symbolic link: the originals' file sits in a
        // folder its owner can write, and a link planted there would have
        // the originals appended to any file this run may write.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&dotlock);
                let e = if e.raw_os_error() == Some(libc::ELOOP) {
                    std::io::Error::other("a symbolic link: refused (name the file itself)")
                } else {
                    e
                };
                return Err(SourceError::io(path, e));
            }
        };
        loop {
            match fcntl_lock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(_) if start.elapsed() <= LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(_) => {
                    let _ = fs::remove_file(&dotlock);
                    return Err(SourceError::Locked(path.display().to_string()));
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            dotlock,
        })
    }

    fn read_all(&mut self) -> Result<Vec<u8>, SourceError> {
        let mut buf = Vec::new();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_to_end(&mut buf))
            .map_err(|e| SourceError::io(&self.path, e))?;
        Ok(buf)
    }

    /// Appends `items` (message, flags, date) as mboxrd in one write, and
    /// fsyncs the file when `durable` (else [`Locked::sync`] does later);
    /// each one's offset and length.
    fn append_all(
        &mut self,
        items: &[(&[u8], &[String], i64)],
        durable: bool,
    ) -> Result<Vec<(u64, u64)>, SourceError> {
        let end = self
            .file
            .seek(SeekFrom::End(0))
            .map_err(|e| SourceError::io(&self.path, e))?;
        let size: usize = items.iter().map(|(m, _, _)| m.len() + 128).sum();
        let mut out = Vec::with_capacity(size);
        // A message must follow a blank line.
        if end > 0 {
            let mut last = [0u8; 2];
            let n = if end >= 2 { 2 } else { 1 };
            self.file
                .seek(SeekFrom::Start(end - n))
                .and_then(|_| self.file.read_exact(&mut last[..n as usize]))
                .map_err(|e| SourceError::io(&self.path, e))?;
            let tail = &last[..n as usize];
            if !tail.ends_with(b"\n\n") {
                out.extend_from_slice(if tail.ends_with(b"\n") {
                    b"\n"
                } else {
                    b"\n\n"
                });
            }
        }
        let mut placed = Vec::with_capacity(items.len());
        for (message, flags, date) in items {
            let start = out.len();
            out.extend_from_slice(&encode(message, flags, *date));
            placed.push((end + start as u64, (out.len() - start) as u64));
        }
        let written = self
            .file
            .seek(SeekFrom::End(0))
            .and_then(|_| self.file.write_all(&out))
            .and_then(|()| {
                if durable {
                    self.file.sync_all()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            // Half a message would carry a marker a re-run trips over:
            // the file is cut back to where it ended.
            let _ = self.file.set_len(end).and_then(|()| self.file.sync_all());
            return Err(SourceError::io(&self.path, e));
        }
        Ok(placed)
    }

    /// Makes what was appended durable.
    fn sync(&mut self) -> Result<(), SourceError> {
        self.file
            .sync_all()
            .map_err(|e| SourceError::io(&self.path, e))
    }
}

/// True when a dot-lock names a process (its first line, as mutt,
/// procmail and this program write it) that no longer runs here.
fn holder_is_gone(dotlock: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dotlock) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = fcntl_lock(&self.file, FlockOperation::Unlock);
        let _ = fs::remove_file(&self.dotlock);
    }
}

/// One message's place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    /// Offset of its `From ` line.
    start: u64,
    /// Octets up to the next message's `From ` line.
    len: u64,
}

/// The messages of an mbox: where each starts, its flags and date.
fn parse(bytes: &[u8]) -> Vec<(Slot, Vec<String>, i64)> {
    let mut starts = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let line_end = bytes[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(bytes.len());
        let after_blank = pos == 0
            || (pos >= 2 && bytes[pos - 2] == b'\n')
            || (pos >= 3 && &bytes[pos - 3..pos] == b"\n\r\n");
        if after_blank && bytes[pos..].starts_with(b"From ") {
            starts.push(pos);
        }
        pos = line_end;
    }
    let mut out = Vec::new();
    for (i, &s) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(bytes.len());
        let raw = &bytes[s..end];
        let from_line_end = raw.iter().position(|b| *b == b'\n').unwrap_or(raw.len());
        let date = from_line_date(&String::from_utf8_lossy(&raw[..from_line_end]));
        out.push((
            Slot {
                start: s as u64,
                len: (end - s) as u64,
            },
            flags_in(raw),
            date.unwrap_or(0),
        ));
    }
    out
}

/// The date of a `From sender Wed Nov 29 23:04:18 2026` line.
fn from_line_date(line: &str) -> Option<i64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    for skip in 2..words.len().min(4) {
        let rest: Vec<&str> = words[skip..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with(['+', '-']))
            .collect();
        if rest.len() < 5 {
            continue;
        }
        let text = format!(
            "{} {} {} {} {}",
            rest[0], rest[1], rest[2], rest[3], rest[4]
        );
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&text, "%a %b %e %H:%M:%S %Y") {
            return Some(t.and_utc().timestamp());
        }
    }
    None
}

/// The header fields mbox keeps its own metadata in (not part of the
/// message for migration's purposes).
fn is_metadata(name: &str) -> bool {
    matches!(
        name,
        "status" | "x-status" | "x-keywords" | "x-uid" | "x-imapbase" | "x-imap" | "content-length"
    )
}

/// Flags from `Status` / `X-Status` of a raw mbox message.
fn flags_in(raw: &[u8]) -> Vec<String> {
    let head_end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut flags = Vec::new();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "status" if value.contains('R') => flags.push("\\Seen".to_string()),
            "x-status" => {
                for (c, f) in [
                    ('A', "\\Answered"),
                    ('F', "\\Flagged"),
                    ('T', "\\Draft"),
                    ('D', "\\Deleted"),
                ] {
                    if value.contains(c) {
                        flags.push(f.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    flags
}

/// The message in a raw mbox slot: without its `From ` line and mbox
/// metadata fields, `>From ` quoting undone.
fn decode(raw: &[u8]) -> Vec<u8> {
    let body_start = raw
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(raw.len());
    let mut text = &raw[body_start..];
    // The blank line before the next `From ` belongs to the mbox.
    if text.ends_with(b"\n\n") {
        text = &text[..text.len() - 1];
    } else if text.ends_with(b"\r\n\r\n") {
        text = &text[..text.len() - 2];
    }
    let mut out = Vec::with_capacity(text.len());
    let mut in_head = true;
    for line in text.split_inclusive(|b| *b == b'\n') {
        if in_head {
            if line == b"\n" || line == b"\r\n" {
                in_head = false;
            } else if let Some(c) = line.iter().position(|b| *b == b':') {
                let name = String::from_utf8_lossy(&line[..c])
                    .trim()
                    .to_ascii_lowercase();
                if !line.starts_with(b" ") && !line.starts_with(b"\t") && is_metadata(&name) {
                    continue;
                }
            }
        }
        let q = line.iter().take_while(|b| **b == b'>').count();
        if q > 0 && line[q..].starts_with(b"From ") {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// A message as an mbox entry (LF line ends, mboxrd quoting, flags in
/// `Status`/`X-Status`), ending with the blank line.
fn encode(message: &[u8], flags: &[String], date: i64) -> Vec<u8> {
    let text = lines::lf(message);
    let when = chrono::DateTime::from_timestamp(date, 0)
        .map(|t| t.format("%a %b %e %H:%M:%S %Y").to_string())
        .unwrap_or_else(|| "Thu Jan  1 00:00:00 1970".into());
    let mut out = format!("From MAILER-DAEMON {when}\n").into_bytes();
    let has = |f: &str| flags.iter().any(|x| x.eq_ignore_ascii_case(f));
    let mut status = String::new();
    if has("\\Seen") {
        status.push('R');
    }
    status.push('O');
    let x: String = [
        ('A', "\\Answered"),
        ('F', "\\Flagged"),
        ('T', "\\Draft"),
        ('D', "\\Deleted"),
    ]
    .iter()
    .filter(|(_, f)| has(f))
    .map(|(c, _)| *c)
    .collect();
    let mut in_head = true;
    for line in text.split_inclusive(|b| *b == b'\n') {
        if in_head && line == b"\n" {
            out.extend_from_slice(format!("Status: {status}\n").as_bytes());
            if !x.is_empty() {
                out.extend_from_slice(format!("X-Status: {x}\n").as_bytes());
            }
            in_head = false;
            out.extend_from_slice(line);
            continue;
        }
        let q = line.iter().take_while(|b| **b == b'>').count();
        if line[q..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// An mbox file, locked for the run.
pub struct Mbox {
    folder: String,
    lock: Locked,
    slots: Vec<(Slot, Entry)>,
    /// Marker → the copy carrying it (read once, kept up to date).
    markers: Option<std::collections::HashMap<String, Entry>>,
    /// Messages to leave out when the file is rewritten at the end.
    removed: HashSet<u64>,
    /// Removals asked since the last [`Source::sync`]: they join
    /// `removed` only once their originals are durable where they went.
    unsynced: Vec<u64>,
    /// Originals mboxes opened so far, with the SHA-256 markers of what
    /// they hold.
    targets: Vec<(String, Locked, HashSet<String>)>,
}

impl Mbox {
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        if !path.is_file() {
            return Err(SourceError::Unsupported(format!(
                "{}: not an mbox file",
                path.display()
            )));
        }
        let folder = path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_else(|| "mbox".into());
        let mut lock = Locked::open(path, false)?;
        let bytes = lock.read_all()?;
        if !bytes.is_empty() && !bytes.starts_with(b"From ") {
            return Err(SourceError::Unsupported(format!(
                "{}: not an mbox file (it does not start with a From line)",
                path.display()
            )));
        }
        let slots = parse(&bytes)
            .into_iter()
            .map(|(slot, flags, date)| {
                let e = Entry {
                    id: slot.start.to_string(),
                    flags,
                    internal_date: date,
                    size: slot.len,
                };
                (slot, e)
            })
            .collect();
        Ok(Self {
            folder,
            lock,
            slots,
            markers: None,
            removed: HashSet::new(),
            unsynced: Vec::new(),
            targets: Vec::new(),
        })
    }

    fn check(&self, folder: &str) -> Result<(), SourceError> {
        if folder == self.folder {
            Ok(())
        } else {
            Err(SourceError::NoFolder(folder.to_string()))
        }
    }

    fn raw(&mut self, slot: &Slot) -> Result<Vec<u8>, SourceError> {
        let mut buf = vec![0u8; slot.len as usize];
        let path = self.lock.path.clone();
        self.lock
            .file
            .seek(SeekFrom::Start(slot.start))
            .and_then(|_| self.lock.file.read_exact(&mut buf))
            .map_err(|e| SourceError::io(&path, e))?;
        Ok(buf)
    }

    fn slot(&self, entry: &Entry) -> Result<Slot, SourceError> {
        self.slots
            .iter()
            .find(|(_, e)| e.id == entry.id)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| SourceError::Gone(entry.id.clone()))
    }

    /// The originals mbox `name` beside this one, locked, with what it holds.
    fn target(&mut self, name: &str) -> Result<usize, SourceError> {
        if let Some(i) = self.targets.iter().position(|(n, _, _)| n == name) {
            return Ok(i);
        }
        let dir = self
            .lock
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = dir.join(name);
        let mut lock = Locked::open(&path, true)?;
        let bytes = lock.read_all()?;
        let held = parse(&bytes)
            .iter()
            .map(|(s, _, _)| {
                rekey::marker(&decode(
                    &bytes[s.start as usize..(s.start + s.len) as usize],
                ))
            })
            .collect();
        sync_dir(&dir).map_err(|e| SourceError::io(&dir, e))?;
        self.targets.push((name.to_string(), lock, held));
        Ok(self.targets.len() - 1)
    }

    /// Writes the kept messages to a new file and renames it over this one.
    fn rewrite(&mut self) -> Result<(), SourceError> {
        let path = self.lock.path.clone();
        let all = self.lock.read_all()?;
        let tmp = PathBuf::from(format!("{}.migrate-tmp", path.display()));
        let mut out = crate::durable::create_fresh(&tmp).map_err(|e| SourceError::io(&tmp, e))?;
        if let Ok(meta) = fs::metadata(&path) {
            let _ = out.set_permissions(meta.permissions());
        }
        for (slot, _, _) in parse(&all) {
            if self.removed.contains(&slot.start) {
                continue;
            }
            out.write_all(&all[slot.start as usize..(slot.start + slot.len) as usize])
                .map_err(|e| SourceError::io(&tmp, e))?;
        }
        out.sync_all().map_err(|e| SourceError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| SourceError::io(&path, e))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        sync_dir(&dir).map_err(|e| SourceError::io(&dir, e))?;
        self.removed.clear();
        Ok(())
    }
}

impl Source for Mbox {
    fn name(&self) -> String {
        self.lock.path.display().to_string()
    }

    fn folders(&mut self) -> Result<Vec<String>, SourceError> {
        Ok(vec![self.folder.clone()])
    }

    fn list(&mut self, folder: &str) -> Result<Vec<Entry>, SourceError> {
        self.check(folder)?;
        Ok(self.slots.iter().map(|(_, e)| e.clone()).collect())
    }

    fn fetch(&mut self, folder: &str, entry: &Entry) -> Result<Vec<u8>, SourceError> {
        self.check(folder)?;
        let slot = self.slot(entry)?;
        Ok(decode(&self.raw(&slot)?))
    }

    fn find_marker(&mut self, folder: &str, marker: &str) -> Result<Option<Entry>, SourceError> {
        self.check(folder)?;
        if self.markers.is_none() {
            let mut map = std::collections::HashMap::new();
            for (slot, e) in self.slots.clone() {
                let raw = self.raw(&slot)?;
                let head_end = raw
                    .windows(2)
                    .position(|w| w == b"\n\n")
                    .unwrap_or(raw.len());
                if let Some(m) = marker_in(&decode(&raw[..head_end])) {
                    map.insert(m, e);
                }
            }
            self.markers = Some(map);
        }
        Ok(self.markers.as_ref().and_then(|m| m.get(marker)).cloned())
    }

    fn append_many(
        &mut self,
        folder: &str,
        messages: &[NewMessage<'_>],
    ) -> Vec<Result<Entry, SourceError>> {
        // All of them in one write and one fsync.
        let items: Vec<(&[u8], &[String], i64)> = messages
            .iter()
            .map(|m| (m.message, m.flags, m.internal_date))
            .collect();
        let placed = match self
            .check(folder)
            .and_then(|()| self.lock.append_all(&items, true))
        {
            Ok(p) => p,
            Err(e) => {
                return super::source::all_failed(messages.len(), &e);
            }
        };
        messages
            .iter()
            .zip(placed)
            .map(|(m, (start, len))| {
                let entry = Entry {
                    id: start.to_string(),
                    flags: m.flags.to_vec(),
                    internal_date: m.internal_date,
                    size: len,
                };
                self.slots.push((Slot { start, len }, entry.clone()));
                if let (Some(map), Some(k)) = (self.markers.as_mut(), marker_in(m.message)) {
                    map.insert(k, entry.clone());
                }
                Ok(entry)
            })
            .collect()
    }

    fn remove(&mut self, folder: &str, entry: &Entry, to: Option<&str>) -> Result<(), SourceError> {
        self.check(folder)?;
        let slot = self.slot(entry)?;
        if let Some(name) = to {
            let message = decode(&self.raw(&slot)?);
            let marker = rekey::marker(&message);
            let i = self.target(name)?;
            let (_, lock, held) = &mut self.targets[i];
            if !held.contains(&marker) {
                // Made durable by the batch's sync, before this file is
                // ever rewritten without it.
                lock.append_all(&[(&message, &entry.flags, entry.internal_date)], false)?;
                held.insert(marker);
            }
        }
        self.unsynced.push(slot.start);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SourceError> {
        let asked = std::mem::take(&mut self.unsynced);
        for (_, lock, _) in &mut self.targets {
            // Not known durable: those originals stay in this file.
            lock.sync()?;
        }
        self.removed.extend(asked);
        Ok(())
    }

    fn close(&mut self) -> Result<(), SourceError> {
        // The originals are safe in their mbox before they leave this one.
        self.sync()?;
        if !self.removed.is_empty() {
            self.rewrite()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_quoting_and_flags() {
        let m = b"Subject: a\r\n\r\nFrom here on\r\n>From quoted\r\nend\r\n";
        let e = encode(m, &["\\Seen".into(), "\\Flagged".into()], 1_700_000_000);
        let text = String::from_utf8_lossy(&e).to_string();
        assert!(
            text.starts_with("From MAILER-DAEMON Tue Nov 14 22:13:20 2023\n"),
            "{text}"
        );
        assert!(
            text.contains("Status: RO\nX-Status: F\n\n>From here on\n>>From quoted\n"),
            "{text}"
        );
        let mut file = e.clone();
        file.extend_from_slice(&encode(b"Subject: b\n\nFrom x\n", &[], 0));
        let parsed = parse(&file);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].1, vec!["\\Seen", "\\Flagged"]);
        assert_eq!(parsed[0].2, 1_700_000_000);
        let s = &parsed[0].0;
        let back = decode(&file[s.start as usize..(s.start + s.len) as usize]);
        assert_eq!(back, lines::lf(m));
    }

    #[test]
    fn a_locked_mbox_is_refused_and_a_copy_is_appended_and_an_original_moved() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("inbox");
        let mut file = encode(b"Subject: one\n\nbody\n", &[], 1_600_000_000);
        file.extend_from_slice(&encode(
            b"Subject: two\n\nbody\n",
            &["\\Seen".into()],
            1_600_000_100,
        ));
        fs::write(&p, &file).unwrap();
        // Someone else holds the dot-lock: refused (after the wait).
        fs::write(d.path().join("inbox.lock"), b"1\n").unwrap();
        let start = Instant::now();
        assert!(matches!(Mbox::open(&p), Err(SourceError::Locked(_))));
        assert!(start.elapsed() >= LOCK_WAIT);
        fs::remove_file(d.path().join("inbox.lock")).unwrap();
        let mut m = Mbox::open(&p).unwrap();
        assert!(d.path().join("inbox.lock").exists());
        let list = m.list("inbox").unwrap();
        assert_eq!(list.len(), 2);
        let copy = b"X-SMIME-Gateway: x; original-sha256=aa\r\nSubject: one\r\n\r\nnew\r\n";
        let e = m
            .append("inbox", copy, &list[0].flags, list[0].internal_date)
            .unwrap();
        assert_eq!(m.fetch("inbox", &e).unwrap(), lines::lf(copy));
        assert_eq!(
            m.find_marker("inbox", "original-sha256=aa").unwrap(),
            Some(e)
        );
        m.remove("inbox", &list[0], Some("OCES2-originals"))
            .unwrap();
        m.remove("inbox", &list[0], Some("OCES2-originals"))
            .unwrap();
        m.close().unwrap();
        drop(m);
        assert!(!d.path().join("inbox.lock").exists());
        let after = parse(&fs::read(&p).unwrap());
        assert_eq!(after.len(), 2);
        let moved = fs::read_to_string(d.path().join("OCES2-originals")).unwrap();
        assert_eq!(moved.matches("Subject: one").count(), 1, "{moved}");
    }
}

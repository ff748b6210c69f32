//! A Maildir (Maildir++ folders: the top is INBOX, `.Name` directories
//! are folders) as a migration source. A new copy is written to `tmp/`,
//! fsynced, given the original's time and renamed into `cur/` with the
//! original's flags (a batch of copies: each file fsynced, then `cur/`
//! once, before any original is touched); an original is moved by rename
//! into the originals folder or unlinked, and those directories are
//! fsynced at the end of the batch ([`Source::sync`]).
//! Maildir needs no locks: renames are atomic and names are unique.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::source::{trace_value, Entry, NewMessage, Source, SourceError, MAILDIR_FLAGS};
use crate::durable::sync_dir;

/// A Maildir at `root`.
pub struct Maildir {
    root: PathBuf,
    /// Per folder: marker → the message carrying it.
    markers: HashMap<String, HashMap<String, Entry>>,
    /// Directories an original was moved into, and out of, since the last
    /// [`Source::sync`]: fsynced there (destinations first), once each.
    moved_into: Vec<PathBuf>,
    moved_out_of: Vec<PathBuf>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Maildir {
    pub fn open(root: &Path) -> Result<Self, SourceError> {
        if !root.join("cur").is_dir() || !root.join("new").is_dir() {
            return Err(SourceError::Unsupported(format!(
                "{}: not a Maildir (no cur/ and new/)",
                root.display()
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            markers: HashMap::new(),
            moved_into: Vec::new(),
            moved_out_of: Vec::new(),
        })
    }

    fn dir(&self, folder: &str) -> PathBuf {
        if folder == "INBOX" {
            self.root.clone()
        } else {
            self.root.join(format!(".{}", folder.replace('/', ".")))
        }
    }

    fn existing(&self, folder: &str) -> Result<PathBuf, SourceError> {
        let d = self.dir(folder);
        if d.join("cur").is_dir() {
            Ok(d)
        } else {
            Err(SourceError::NoFolder(folder.to_string()))
        }
    }

    /// Creates folder `name` (cur/, new/, tmp/) when missing.
    fn create(&self, name: &str) -> Result<PathBuf, SourceError> {
        let d = self.dir(name);
        let mut created = false;
        for p in [d.clone(), d.join("tmp"), d.join("new"), d.join("cur")] {
            // A folder that is a symbolic link (planted by the mailbox's
            // owner) would have copies or originals written elsewhere.
            if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(SourceError::io(
                    &p,
                    std::io::Error::other("a symbolic link: refused"),
                ));
            }
        }
        for sub in ["tmp", "new", "cur"] {
            let p = d.join(sub);
            if !p.is_dir() {
                fs::create_dir_all(&p).map_err(|e| SourceError::io(&p, e))?;
                sync_dir(&d).map_err(|e| SourceError::io(&d, e))?;
                created = true;
            }
        }
        if created {
            sync_dir(&self.root).map_err(|e| SourceError::io(&self.root, e))?;
        }
        Ok(d)
    }

    /// The file of `entry`, also when a client renamed it since (new/ to
    /// cur/, other flags): found by its unique part.
    fn locate(&self, dir: &Path, entry: &Entry) -> Result<PathBuf, SourceError> {
        let p = dir.join(&entry.id);
        if p.exists() {
            return Ok(p);
        }
        let unique = unique_part(&entry.id);
        for sub in ["cur", "new"] {
            let d = dir.join(sub);
            let Ok(list) = fs::read_dir(&d) else { continue };
            for f in list.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if unique_part(&name) == unique {
                    return Ok(f.path());
                }
            }
        }
        Err(SourceError::Gone(entry.id.clone()))
    }

    fn index(&mut self, folder: &str) -> Result<&mut HashMap<String, Entry>, SourceError> {
        if !self.markers.contains_key(folder) {
            let mut map = HashMap::new();
            for e in self.list(folder)? {
                let dir = self.existing(folder)?;
                let path = dir.join(&e.id);
                if let Ok(bytes) = read_headers(&path) {
                    if let Some(m) = marker_in(&bytes) {
                        map.insert(m, e);
                    }
                }
            }
            self.markers.insert(folder.to_string(), map);
        }
        self.markers
            .get_mut(folder)
            .ok_or_else(|| SourceError::NoFolder(folder.to_string()))
    }
}

/// The `original-sha256=…` marker a message's trace header carries.
pub fn marker_in(message: &[u8]) -> Option<String> {
    super::plan::marker_of(&trace_value(message)?)
}

/// The header section of a file (the whole file when short).
pub fn read_headers(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(2).any(|w| w == b"\n\n")
            || buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
        {
            break;
        }
    }
    buf.truncate(n);
    Ok(buf)
}

fn unique_part(name: &str) -> &str {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.split(':').next().unwrap_or(base)
}

/// IMAP flags from a Maildir file name's `:2,` info.
pub fn flags_of(name: &str) -> Vec<String> {
    let Some((_, info)) = name.rsplit_once(":2,") else {
        return Vec::new();
    };
    MAILDIR_FLAGS
        .iter()
        .filter(|(c, _)| info.contains(*c))
        .map(|(_, f)| f.to_string())
        .collect()
}

/// The `:2,` info for IMAP flags (letters in order; keywords dropped).
pub fn info_of(flags: &[String]) -> String {
    let letters: String = MAILDIR_FLAGS
        .iter()
        .filter(|(_, f)| flags.iter().any(|x| x.eq_ignore_ascii_case(f)))
        .map(|(c, _)| *c)
        .collect();
    format!(":2,{letters}")
}

fn mtime(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A name no other writer uses: time, microseconds, pid, counter, host.
fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .replace(['/', ':'], "_");
    format!(
        "{}.M{}P{}Q{}.{host}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `bytes` to `tmp`, fsynced, with `date` as its time, and
/// renames it to `to`; fsyncs `to`'s directory.
pub fn write_durably(tmp: &Path, to: &Path, bytes: &[u8], date: i64) -> Result<(), SourceError> {
    write_file(tmp, to, bytes, date)?;
    if let Some(parent) = to.parent() {
        sync_dir(parent).map_err(|e| SourceError::io(parent, e))?;
    }
    Ok(())
}

/// [`write_durably`] without the directory's fsync (the caller does it).
/// A write that fails (a full disk, a file size limit) takes its
/// temporary file away: no half copy is left behind.
pub fn write_file(tmp: &Path, to: &Path, bytes: &[u8], date: i64) -> Result<(), SourceError> {
    let mut f = crate::durable::create_fresh(tmp).map_err(|e| SourceError::io(tmp, e))?;
    let t = UNIX_EPOCH + Duration::from_secs(date.max(0) as u64);
    let written = f
        .write_all(bytes)
        .and_then(|()| f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)))
        .and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(SourceError::io(tmp, e));
    }
    fs::rename(tmp, to).map_err(|e| {
        let _ = fs::remove_file(tmp);
        SourceError::io(to, e)
    })
}

/// Adds `dir` to `list` unless it is there.
fn remember(list: &mut Vec<PathBuf>, dir: PathBuf) {
    if !list.contains(&dir) {
        list.push(dir);
    }
}

impl Source for Maildir {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn folders(&mut self) -> Result<Vec<String>, SourceError> {
        let mut out = vec!["INBOX".to_string()];
        let mut more = Vec::new();
        let list = fs::read_dir(&self.root).map_err(|e| SourceError::io(&self.root, e))?;
        for f in list.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if let Some(folder) = name.strip_prefix('.') {
                if !folder.is_empty() && f.path().join("cur").is_dir() {
                    more.push(folder.replace('.', "/"));
                }
            }
        }
        more.sort();
        out.extend(more);
        Ok(out)
    }

    fn list(&mut self, folder: &str) -> Result<Vec<Entry>, SourceError> {
        let dir = self.existing(folder)?;
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let d = dir.join(sub);
            let list = fs::read_dir(&d).map_err(|e| SourceError::io(&d, e))?;
            for f in list.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    continue;
                }
                let Ok(meta) = f.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                out.push(Entry {
                    id: format!("{sub}/{name}"),
                    flags: flags_of(&name),
                    internal_date: mtime(&meta),
                    size: meta.len(),
                });
            }
        }
        out.sort_by(|a, b| (a.internal_date, &a.id).cmp(&(b.internal_date, &b.id)));
        Ok(out)
    }

    fn fetch(&mut self, folder: &str, entry: &Entry) -> Result<Vec<u8>, SourceError> {
        let dir = self.existing(folder)?;
        let path = self.locate(&dir, entry)?;
        fs::read(&path).map_err(|e| SourceError::io(&path, e))
    }

    fn find_marker(&mut self, folder: &str, marker: &str) -> Result<Option<Entry>, SourceError> {
        Ok(self.index(folder)?.get(marker).cloned())
    }

    fn append(
        &mut self,
        folder: &str,
        message: &[u8],
        flags: &[String],
        internal_date: i64,
    ) -> Result<Entry, SourceError> {
        let dir = self.create(folder)?;
        let unique = unique_name();
        let name = format!("{unique}{}", info_of(flags));
        let bytes = crate::mail::lines::lf(message);
        write_durably(
            &dir.join("tmp").join(&unique),
            &dir.join("cur").join(&name),
            &bytes,
            internal_date,
        )?;
        let entry = Entry {
            id: format!("cur/{name}"),
            flags: flags.to_vec(),
            internal_date,
            size: bytes.len() as u64,
        };
        if let Some(m) = marker_in(message) {
            self.index(folder)?.insert(m, entry.clone());
        }
        Ok(entry)
    }

    fn append_many(
        &mut self,
        folder: &str,
        messages: &[NewMessage<'_>],
    ) -> Vec<Result<Entry, SourceError>> {
        // Each file written and fsynced, then one fsync of cur/ for all.
        let dir = match self.create(folder) {
            Ok(d) => d,
            Err(e) => {
                return super::source::all_failed(messages.len(), &e);
            }
        };
        let mut out: Vec<Result<Entry, SourceError>> = messages
            .iter()
            .map(|m| {
                let unique = unique_name();
                let name = format!("{unique}{}", info_of(m.flags));
                let bytes = crate::mail::lines::lf(m.message);
                write_file(
                    &dir.join("tmp").join(&unique),
                    &dir.join("cur").join(&name),
                    &bytes,
                    m.internal_date,
                )?;
                Ok(Entry {
                    id: format!("cur/{name}"),
                    flags: m.flags.to_vec(),
                    internal_date: m.internal_date,
                    size: bytes.len() as u64,
                })
            })
            .collect();
        let cur = dir.join("cur");
        if let Err(e) = sync_dir(&cur) {
            // Not known to be durable: none of them counts as written.
            let why = SourceError::io(&cur, e).to_string();
            for r in out.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(SourceError::Batch(why.clone()));
            }
            return out;
        }
        for (m, r) in messages.iter().zip(&out) {
            if let (Ok(entry), Some(marker)) = (r, marker_in(m.message)) {
                if let Ok(index) = self.index(folder) {
                    index.insert(marker, entry.clone());
                }
            }
        }
        out
    }

    fn remove(&mut self, folder: &str, entry: &Entry, to: Option<&str>) -> Result<(), SourceError> {
        let dir = self.existing(folder)?;
        let path = self.locate(&dir, entry)?;
        let from_dir = path.parent().map(Path::to_path_buf).unwrap_or(dir.clone());
        match to {
            Some(target) => {
                let tdir = self.create(target)?;
                let sub = from_dir
                    .file_name()
                    .map(|s| s.to_os_string())
                    .unwrap_or_else(|| "cur".into());
                let name = path
                    .file_name()
                    .map(|s| s.to_os_string())
                    .unwrap_or_default();
                let dest = tdir.join(sub).join(name);
                fs::rename(&path, &dest).map_err(|e| SourceError::io(&dest, e))?;
                if let Some(p) = dest.parent() {
                    remember(&mut self.moved_into, p.to_path_buf());
                }
            }
            None => fs::remove_file(&path).map_err(|e| SourceError::io(&path, e))?,
        }
        remember(&mut self.moved_out_of, from_dir);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SourceError> {
        let into = std::mem::take(&mut self.moved_into);
        let out_of = std::mem::take(&mut self.moved_out_of);
        for d in into.iter().chain(&out_of) {
            sync_dir(d).map_err(|e| SourceError::io(d, e))?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), SourceError> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_go_both_ways() {
        let f = flags_of("123.M4P5.host:2,RS");
        assert_eq!(f, vec!["\\Answered", "\\Seen"]);
        assert_eq!(info_of(&f), ":2,RS");
        assert_eq!(
            info_of(&["\\Flagged".into(), "\\Seen".into(), "$Label1".into()]),
            ":2,FS"
        );
        assert!(flags_of("123.M4P5.host").is_empty());
        assert_eq!(unique_part("cur/123.M4.host:2,S"), "123.M4.host");
    }

    #[test]
    fn the_marker_is_found_in_a_folded_trace_header() {
        let m = b"X-SMIME-Gateway: decrypted; key=\"CN=A\"; generation=OCES2;\n original-sha256=abcd; migrated-at=2026-01-01T00:00:00Z\nSubject: s\n\nx\n";
        assert_eq!(marker_in(m).as_deref(), Some("original-sha256=abcd"));
        assert_eq!(marker_in(b"Subject: s\n\nx\n"), None);
    }

    #[test]
    fn a_copy_is_written_found_and_an_original_moved() {
        let d = tempfile::tempdir().unwrap();
        for s in ["cur", "new", "tmp"] {
            fs::create_dir_all(d.path().join(s)).unwrap();
        }
        fs::write(d.path().join("new/1.orig.host"), b"Subject: a\n\nx\n").unwrap();
        let mut m = Maildir::open(d.path()).unwrap();
        let list = m.list("INBOX").unwrap();
        assert_eq!(list.len(), 1);
        let copy = b"X-SMIME-Gateway: decrypted; original-sha256=ff\r\nSubject: a\r\n\r\ny\r\n";
        assert_eq!(m.find_marker("INBOX", "original-sha256=ff").unwrap(), None);
        let e = m
            .append("INBOX", copy, &["\\Seen".into()], 1_000_000)
            .unwrap();
        assert!(e.id.ends_with(":2,S"));
        assert_eq!(
            m.fetch("INBOX", &e).unwrap(),
            b"X-SMIME-Gateway: decrypted; original-sha256=ff\nSubject: a\n\ny\n"
        );
        let again = Maildir::open(d.path())
            .unwrap()
            .find_marker("INBOX", "original-sha256=ff")
            .unwrap();
        assert_eq!(again.map(|x| x.internal_date), Some(1_000_000));
        m.remove("INBOX", &list[0], Some("OCES2-originals"))
            .unwrap();
        assert!(d.path().join(".OCES2-originals/new/1.orig.host").exists());
        assert_eq!(m.folders().unwrap(), vec!["INBOX", "OCES2-originals"]);
        assert_eq!(m.list("INBOX").unwrap().len(), 1);
        assert!(matches!(m.list("Nope"), Err(SourceError::NoFolder(_))));
        m.sync().unwrap();
    }

    #[test]
    fn a_batch_of_copies_is_written_with_flags_and_times_and_found() {
        let d = tempfile::tempdir().unwrap();
        for s in ["cur", "new", "tmp"] {
            fs::create_dir_all(d.path().join(s)).unwrap();
        }
        let mut m = Maildir::open(d.path()).unwrap();
        let (a, b) = (
            b"X-SMIME-Gateway: x; original-sha256=aa\r\n\r\nA\r\n".to_vec(),
            b"X-SMIME-Gateway: x; original-sha256=bb\r\n\r\nB\r\n".to_vec(),
        );
        let (seen, none) = (vec!["\\Seen".to_string()], Vec::new());
        let written = m.append_many(
            "Sager",
            &[
                NewMessage {
                    message: &a,
                    flags: &seen,
                    internal_date: 1_000,
                },
                NewMessage {
                    message: &b,
                    flags: &none,
                    internal_date: 2_000,
                },
            ],
        );
        let written: Vec<Entry> = written.into_iter().map(Result::unwrap).collect();
        assert!(written[0].id.ends_with(":2,S") && written[1].id.ends_with(":2,"));
        assert!(d
            .path()
            .join(".Sager/tmp")
            .read_dir()
            .unwrap()
            .next()
            .is_none());
        // Found by marker in this session and in a new one, time kept.
        assert_eq!(
            m.find_marker("Sager", "original-sha256=bb").unwrap(),
            Some(written[1].clone())
        );
        let again = Maildir::open(d.path())
            .unwrap()
            .find_marker("Sager", "original-sha256=aa")
            .unwrap();
        assert_eq!(again.map(|x| x.internal_date), Some(1_000));
        assert_eq!(
            m.fetch("Sager", &written[1]).unwrap(),
            b"X-SMIME-Gateway: x; original-sha256=bb\n\nB\n"
        );
    }
}

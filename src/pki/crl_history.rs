//! The newest CRL seen from each distribution point of each issuer, kept
//! across reloads and restarts. A CRL stays inside its validity for a day
//! or more after its successor is out, so someone on the path to the CRL
//! server could serve the older one, from before a revocation, once the
//! kept copy is gone (a reload, a restart, its nextUpdate). A CRL older
//! than one already seen (an earlier thisUpdate, or a lower CRL number)
//! is such a replay and answers for nothing.
//!
//! The daemon keeps the history in `<spool>/revocation/crl-history`, one
//! line per distribution point and issuer; a write merges with what is on
//! disk. The operator's commands read it and never write it (run by
//! another user, they would leave a file the daemon cannot replace).
//! Without a file (tests) it is kept in memory only.
//!
//! Beside it, in `<spool>/revocation/revoked`, the certificates a CRL or
//! OCSP answer has said are revoked (for any reason but certificateHold,
//! the one that can be lifted). Revocation is for good: once seen, a
//! certificate stays revoked whatever is served later, so an answer from
//! before the revocation (an OCSP "good" from a responder that does not
//! echo nonces, replayed while the CRL is kept from the gateway) cannot
//! bring it back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

/// At most this many distribution points are remembered (each line is
/// about 90 bytes); beyond it a new one is checked but not remembered.
const MAX_ENTRIES: usize = 10_000;
/// At most this many revoked certificates are remembered (65 bytes each).
const MAX_REVOKED: usize = 100_000;

/// What identifies a CRL's age: its thisUpdate and its CRL number
/// (big-endian, without leading zero bytes), when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub this_update: i64,
    pub number: Option<Vec<u8>>,
}

/// Whether `fetched` may stand where `newest` (the newest seen from the
/// same point and issuer) was: not older by thisUpdate or CRL number.
pub fn judge(newest: Option<&Seen>, fetched: &Seen) -> Result<(), String> {
    let Some(newest) = newest else {
        return Ok(());
    };
    if fetched.this_update < newest.this_update {
        return Err(format!(
            "an older CRL than one already seen from this point (thisUpdate {} before {}): a replay",
            fetched.this_update, newest.this_update
        ));
    }
    if let (Some(f), Some(n)) = (&fetched.number, &newest.number) {
        if number_order(f, n) == std::cmp::Ordering::Less {
            return Err(
                "a lower CRL number than one already seen from this point: a replay".into(),
            );
        }
    }
    Ok(())
}

/// `a` against `b` as unsigned big-endian integers.
fn number_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let a = strip(a);
    let b = strip(b);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn strip(n: &[u8]) -> &[u8] {
    let zeros = n.iter().take_while(|b| **b == 0).count();
    &n[zeros..]
}

/// The newer of two (the later thisUpdate, and the higher number of
/// either).
fn newer(a: &Seen, b: &Seen) -> Seen {
    let number = match (&a.number, &b.number) {
        (Some(x), Some(y)) => Some(if number_order(x, y).is_ge() {
            x.clone()
        } else {
            y.clone()
        }),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    Seen {
        this_update: a.this_update.max(b.this_update),
        number,
    }
}

/// The key of a distribution point (its names, joined) and an issuer (its
/// name and key; before, its certificate's fingerprint): a hash, so the
/// file needs no escaping.
pub fn key(point: &[String], issuer: &str) -> String {
    let mut text = point.join("\n");
    text.push('\0');
    text.push_str(issuer);
    crate::ossl::sha256_hex(text.as_bytes())
}

/// The key of a certificate among the revoked: who issued it (its
/// issuer's name and key) and its serial number (hex).
pub fn revoked_key(issuer: &str, serial_hex: &str) -> String {
    crate::ossl::sha256_hex(format!("{issuer}\0{serial_hex}").as_bytes())
}

/// The newest CRL seen per distribution point and issuer, and the
/// certificates seen revoked.
#[derive(Debug, Default)]
pub struct CrlHistory {
    seen: Mutex<HashMap<String, Seen>>,
    /// Where newer entries are written (the daemon's).
    file: Option<PathBuf>,
    revoked: Mutex<HashSet<String>>,
    /// Where certificates seen revoked are written (the daemon's).
    revoked_file: Option<PathBuf>,
}

impl CrlHistory {
    /// The history kept in `file`, and the certificates seen revoked in
    /// `revoked` beside it (read now; missing is empty).
    pub fn kept_in(file: PathBuf) -> Self {
        let seen = read(&file);
        let revoked_file = file.with_file_name(REVOKED_FILE);
        Self {
            seen: Mutex::new(seen),
            file: Some(file),
            revoked: Mutex::new(read_revoked(&revoked_file)),
            revoked_file: Some(revoked_file),
        }
    }

    /// Whether a source has said the certificate `key`
    /// ([`revoked_key`]) is revoked, in this process or before.
    pub fn was_revoked(&self, key: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Remembers that a source said the certificate `key` is revoked (for
    /// a reason that cannot be lifted): one line appended to the file and
    /// made durable (a line cut short by a crash does not read as a key
    /// and is skipped).
    pub fn remember_revoked(&self, key: &str) {
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if revoked.contains(key) || revoked.len() >= MAX_REVOKED {
            return;
        }
        revoked.insert(key.to_string());
        if let Some(file) = &self.revoked_file {
            if let Err(e) = append_line(file, key) {
                warn!(file = %file.display(), error = %e,
                      "cannot write the certificates seen revoked: they are remembered only until a restart");
            }
        }
    }

    /// The daemon's history, in the spool under `spool_dir`.
    pub fn of_spool(spool_dir: &Path) -> Self {
        Self::kept_in(history_file(spool_dir))
    }

    /// What the daemon's history under `spool_dir` says now, for a
    /// command: newer CRLs it fetches are remembered in memory only.
    pub fn read_from_spool(spool_dir: &Path) -> Self {
        let file = history_file(spool_dir);
        Self {
            seen: Mutex::new(read(&file)),
            file: None,
            revoked: Mutex::new(read_revoked(&file.with_file_name(REVOKED_FILE))),
            revoked_file: None,
        }
    }

    /// Takes `fetched` as the CRL now served at the point `key`, or says
    /// why it is a replay (older than what was seen under `key` or under
    /// any of the `earlier` keys the same point went by). A newer one is
    /// remembered under `key` (and written).
    pub fn admit(&self, key: &str, earlier: &[&str], fetched: Seen) -> Result<(), String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        judge(seen.get(key), &fetched)?;
        for old in earlier {
            judge(seen.get(*old), &fetched)?;
        }
        if seen.get(key) == Some(&fetched) {
            return Ok(());
        }
        if !seen.contains_key(key) && seen.len() >= MAX_ENTRIES {
            return Ok(());
        }
        let merged = match seen.get(key) {
            Some(old) => newer(old, &fetched),
            None => fetched,
        };
        seen.insert(key.to_string(), merged);
        if let Some(file) = &self.file {
            // What another process wrote since counts too.
            for (k, v) in read(file) {
                let m = match seen.get(&k) {
                    Some(mine) => newer(mine, &v),
                    None if seen.len() < MAX_ENTRIES => v,
                    None => continue,
                };
                seen.insert(k, m);
            }
            if let Err(e) = write(file, &seen) {
                warn!(file = %file.display(), error = %e,
                      "cannot write the CRL history: older CRLs are refused only until a restart");
            }
        }
        Ok(())
    }
}

fn history_file(spool_dir: &Path) -> PathBuf {
    spool_dir.join("revocation").join("crl-history")
}

/// The file of certificates seen revoked, beside the CRL history.
const REVOKED_FILE: &str = "revoked";

/// Appends `line` to `file` (created with its folder when missing) and
/// makes it durable. A file that does not end its last line (a write cut
/// short) gets a line end first, so the new line reads whole.
fn append_line(file: &Path, line: &str) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let created = !file.exists();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(file)?;
    let mut text = String::with_capacity(line.len() + 2);
    if f.metadata()?.len() > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::End(-1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    text.push_str(line);
    text.push('\n');
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    if created {
        if let Some(dir) = file.parent() {
            crate::durable::sync_dir(dir)?;
        }
    }
    Ok(())
}

/// One key ([`revoked_key`]) per line; lines that are not one are skipped.
fn read_revoked(file: &Path) -> HashSet<String> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return HashSet::new();
    };
    text.lines()
        .filter(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        .take(MAX_REVOKED)
        .map(str::to_string)
        .collect()
}

/// Lines `key this_update number` (the number in hex, `-` for none);
/// lines that do not read so are skipped.
fn read(file: &Path) -> HashMap<String, Seen> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (k, t, n) = (f.next()?, f.next()?, f.next()?);
            let number = match n {
                "-" => None,
                n => Some(unhex(n)?),
            };
            (k.len() == 64).then(|| {
                t.parse().ok().map(|this_update| {
                    (
                        k.to_string(),
                        Seen {
                            this_update,
                            number,
                        },
                    )
                })
            })?
        })
        .take(MAX_ENTRIES)
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn write(file: &Path, seen: &HashMap<String, Seen>) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = String::with_capacity(seen.len() * 96);
    for (k, v) in seen {
        let n = v
            .number
            .as_deref()
            .map(crate::ossl::lower_hex)
            .unwrap_or_else(|| "-".into());
        text.push_str(&format!("{k} {} {n}\n", v.this_update));
    }
    crate::durable::write_atomic(file, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(t: i64, n: Option<&[u8]>) -> Seen {
        Seen {
            this_update: t,
            number: n.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn an_older_crl_than_the_newest_seen_is_a_replay() {
        assert!(judge(None, &seen(5, Some(&[1]))).is_ok());
        let newest = seen(100, Some(&[0x02, 0x00]));
        assert!(judge(Some(&newest), &seen(100, Some(&[0x02, 0x00]))).is_ok());
        assert!(judge(Some(&newest), &seen(200, Some(&[0x02, 0x01]))).is_ok());
        assert!(judge(Some(&newest), &seen(200, None)).is_ok());
        // Older by time, or by number (a leading zero changes nothing).
        assert!(judge(Some(&newest), &seen(99, Some(&[0x03, 0x00]))).is_err());
        assert!(judge(Some(&newest), &seen(200, Some(&[0xff]))).is_err());
        assert!(judge(Some(&newest), &seen(200, Some(&[0x00, 0x01, 0xff]))).is_err());
        assert!(judge(Some(&newest), &seen(200, Some(&[0x00, 0x02, 0x00]))).is_ok());
    }

    #[test]
    fn the_history_outlives_the_process_and_merges_with_another() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(&["http://crl.example/a.crl".into()], "ab");
        let other = key(&["http://crl.example/b.crl".into()], "ab");
        assert_ne!(k, other);
        let first = CrlHistory::of_spool(dir.path());
        first.admit(&k, &[], seen(100, Some(&[7]))).unwrap();
        // Another process (an operator's command) saw another point.
        let second = CrlHistory::of_spool(dir.path());
        second.admit(&other, &[], seen(50, None)).unwrap();
        assert!(second.admit(&k, &[], seen(90, Some(&[6]))).is_err());
        // A restart reads both.
        let third = CrlHistory::of_spool(dir.path());
        assert!(third.admit(&k, &[], seen(99, Some(&[9]))).is_err());
        assert!(third.admit(&other, &[], seen(49, None)).is_err());
        assert!(third.admit(&k, &[], seen(100, Some(&[7]))).is_ok());
        // The first one wrote after the second: nothing of it is lost.
        first.admit(&k, &[], seen(150, Some(&[8]))).unwrap();
        let fourth = CrlHistory::of_spool(dir.path());
        assert!(fourth.admit(&other, &[], seen(49, None)).is_err());
        assert!(fourth.admit(&k, &[], seen(149, Some(&[9]))).is_err());
        // Under a new key, what the earlier key saw still counts.
        let renamed = key(&["http://crl.example/a.crl".into()], "name:key");
        assert!(fourth.admit(&renamed, &[&k], seen(149, None)).is_err());
        assert!(fourth.admit(&renamed, &[&k], seen(150, Some(&[8]))).is_ok());
        assert!(fourth.admit(&renamed, &[], seen(149, None)).is_err());
        // Lines that do not read are skipped, not fatal.
        let file = dir.path().join("revocation").join("crl-history");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("garbage\nzz 1 -\n");
        std::fs::write(&file, text).unwrap();
        assert_eq!(read(&file).len(), 3);
    }

    #[test]
    fn a_command_reads_the_daemons_history_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(&["http://crl.example/a.crl".into()], "ab");
        CrlHistory::of_spool(dir.path())
            .admit(&k, &[], seen(100, None))
            .unwrap();
        let command = CrlHistory::read_from_spool(dir.path());
        assert!(command.admit(&k, &[], seen(99, None)).is_err());
        command.admit(&k, &[], seen(200, None)).unwrap();
        // Not written: the daemon's file still says 100.
        let again = CrlHistory::read_from_spool(dir.path());
        assert!(again.admit(&k, &[], seen(150, None)).is_ok());
        let file = dir.path().join("revocation").join("crl-history");
        assert_eq!(
            std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_certificate_seen_revoked_stays_revoked_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let k = revoked_key("ab", "01f3");
        assert_ne!(k, revoked_key("ab", "01f4"));
        assert_ne!(k, revoked_key("ac", "01f3"));
        let daemon = CrlHistory::of_spool(dir.path());
        assert!(!daemon.was_revoked(&k));
        daemon.remember_revoked(&k);
        assert!(daemon.was_revoked(&k));
        assert!(CrlHistory::of_spool(dir.path()).was_revoked(&k));
        // A command reads it and writes nothing.
        let command = CrlHistory::read_from_spool(dir.path());
        assert!(command.was_revoked(&k));
        let other = revoked_key("ab", "02");
        command.remember_revoked(&other);
        assert!(command.was_revoked(&other));
        assert!(!CrlHistory::of_spool(dir.path()).was_revoked(&other));
        // Lines that are not keys are skipped.
        let file = dir.path().join("revocation").join("revoked");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("garbage\n");
        std::fs::write(&file, text).unwrap();
        assert_eq!(read_revoked(&file).len(), 1);
        // Appended, one line each; a line cut short by a crash is skipped
        // and the next one still reads whole.
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(&revoked_key("ab", "03")[..20]);
        std::fs::write(&file, text).unwrap();
        let daemon = CrlHistory::of_spool(dir.path());
        let (four, five) = (revoked_key("ab", "04"), revoked_key("ab", "05"));
        daemon.remember_revoked(&four);
        daemon.remember_revoked(&five);
        daemon.remember_revoked(&four);
        let restarted = CrlHistory::of_spool(dir.path());
        assert!(restarted.was_revoked(&k) && restarted.was_revoked(&four));
        assert!(restarted.was_revoked(&five));
        assert!(!restarted.was_revoked(&revoked_key("ab", "03")));
        assert_eq!(read_revoked(&file).len(), 3);
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 5);
    }

    #[test]
    fn in_memory_only_without_a_file() {
        let h = CrlHistory::default();
        h.admit("k", &[], seen(10, None)).unwrap();
        assert!(h.admit("k", &[], seen(9, None)).is_err());
    }
}

//! Archive migration: stored mail encrypted to old keys (OCES2, or any
//! key older than the mailbox's current certificate) re-keyed to the
//! mailbox's current OCES3 certificate through the inbound path's own
//! unwrap and re-encryption ([`rekey`]), in place, without ever losing a
//! message: each new copy is written first, read back and checked, and
//! only then is the original kept, moved or removed. Every copy carries
//! the SHA-256 of its original in its trace header; a re-run looks for
//! it before writing, so a crash at any point is finished by running
//! again, without a second copy.
//!
//! - [`source`]: the trait over where mail lives; [`maildir`], [`eml`],
//!   [`mbox`] and [`imap`] implement it.
//! - [`plan`]: what to do with one message (pure).
//! - [`rekey`]: one message through the pipeline.
//! - [`report`]: the per-folder report, as a table or JSON lines.
//!
//! [`run`] reads with one thread, opens and re-encrypts on `jobs` worker
//! threads, gathers the results into batches (at most [`WRITE_BATCH`] new
//! copies or [`WRITE_BYTES`] octets) and writes each batch on the caller's
//! thread: look for every marker, append the new copies in one go (IMAP
//! MULTIAPPEND), read them all back, and only then move or remove their
//! originals.

pub mod eml;
pub mod imap;
pub mod maildir;
pub mod mbox;
pub mod multiappend;
pub mod plan;
pub mod rekey;
pub mod report;
pub mod source;

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use rekey::{Mailbox, Prepared, Rekeyer};
use report::{Done, FolderReport, MessageLine};
use source::{Entry, NewMessage, Originals, Source, SourceError};

/// Why a migration run stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("a worker thread failed")]
    Worker,
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    pub originals: Originals,
    pub dry_run: bool,
    /// Folders to work on (empty: every folder but the originals folder).
    pub folders: Vec<String>,
    /// Messages opened and re-encrypted at once.
    pub jobs: usize,
    /// TEST ONLY: a pause after each batch of new copies is written and
    /// read back and before their originals are touched
    /// (`SMIMEGW_MIGRATE_TEST_PAUSE_MS`, read by debug builds only), so a
    /// test can kill the process in that gap.
    pub pause: Option<Duration>,
}

/// Told as messages are done (a progress bar).
pub trait Progress: Sync {
    fn total(&self, messages: u64, bytes: u64);
    fn done(&self, bytes: u64);
}

/// Progress nobody watches.
pub struct Quiet;

impl Progress for Quiet {
    fn total(&self, _: u64, _: u64) {}
    fn done(&self, _: u64) {}
}

/// The folders a run works on, each with its messages.
fn folders_to_do(
    source: &mut dyn Source,
    opts: &Options,
) -> Result<Vec<(String, Vec<Entry>)>, SourceError> {
    let names = if opts.folders.is_empty() {
        source
            .folders()?
            .into_iter()
            .filter(|f| Some(f.as_str()) != opts.originals.folder())
            .collect()
    } else {
        opts.folders.clone()
    };
    let mut out = Vec::new();
    for name in names {
        let list = source.list(&name)?;
        out.push((name, list));
    }
    Ok(out)
}

/// Messages read in one go (one IMAP FETCH).
const FETCH_BATCH: usize = 16;

/// New copies written in one go (one IMAP MULTIAPPEND, one read back).
pub const WRITE_BATCH: usize = 64;

/// Octets of new copies gathered into one batch at most (a single larger
/// copy goes alone).
pub const WRITE_BYTES: u64 = 8 << 20;

/// One message's result from the workers.
type Result1 = (Entry, Result<Prepared, String>);

enum Job {
    Fetched(Entry, Vec<u8>),
    Unreadable(Entry, SourceError),
}

/// Migrates `source`'s mail for `mailbox`: every message is decided and,
/// unless `dry_run`, re-keyed; `line` hears of each message; the folder
/// reports are returned.
pub fn run(
    source: &mut dyn Source,
    rekeyer: &Rekeyer<'_>,
    address: &str,
    opts: &Options,
    progress: &dyn Progress,
    line: &mut dyn FnMut(&MessageLine),
) -> Result<Vec<FolderReport>, MigrateError> {
    let mailbox = rekeyer.mailbox(address);
    source.supports(&opts.originals)?;
    let todo = folders_to_do(source, opts)?;
    let (count, bytes) = todo
        .iter()
        .flat_map(|(_, l)| l)
        .fold((0, 0), |(c, b), e| (c + 1, b + e.size));
    progress.total(count, bytes);
    let mut reports = Vec::new();
    let mut second = source.reader()?;
    let main: &mut dyn Source = &mut *source;
    let source = Mutex::new(main);
    let second = second
        .as_mut()
        .map(|b| Mutex::new(b.as_mut() as &mut dyn Source));
    let reader = second.as_ref().unwrap_or(&source);
    for (folder, entries) in todo {
        let mut report = FolderReport::new(address, &folder);
        folder_run(
            &source,
            reader,
            rekeyer,
            &mailbox,
            &folder,
            entries,
            opts,
            progress,
            &mut |l, used, copy| {
                report.add(l, used, copy, opts.originals != Originals::Delete);
                line(l);
            },
        )?;
        reports.push(report);
    }
    if let Some(Ok(r)) = second.map(Mutex::into_inner) {
        r.close()?;
    }
    if let Ok(s) = source.into_inner() {
        s.close()?;
    }
    Ok(reports)
}

type Sink<'a> = dyn FnMut(&MessageLine, Option<&plan::KeyFacts>, u64) + 'a;

#[allow(clippy::too_many_arguments)]
fn folder_run(
    source: &Mutex<&mut dyn Source>,
    reader_source: &Mutex<&mut dyn Source>,
    rekeyer: &Rekeyer<'_>,
    mailbox: &Mailbox<'_>,
    folder: &str,
    entries: Vec<Entry>,
    opts: &Options,
    progress: &dyn Progress,
    sink: &mut Sink<'_>,
) -> Result<(), MigrateError> {
    let jobs = opts.jobs.max(1);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(jobs * 2);
    let job_rx = Mutex::new(job_rx);
    // Bounded all the way: a slow writer holds the gatherer back, and it
    // the workers, so new copies never pile up in memory (at most the
    // batch being written, the one waiting, the one being gathered and
    // 2 × jobs results).
    let (res_tx, res_rx) = mpsc::sync_channel::<Result1>(jobs * 2);
    let (batch_tx, batch_rx) = mpsc::sync_channel::<Vec<Result1>>(1);
    std::thread::scope(|s| -> Result<(), MigrateError> {
        // The reader: one message at a time from the source.
        let reader = s.spawn(move || {
            for chunk in entries.chunks(FETCH_BATCH) {
                let got = match reader_source.lock() {
                    Ok(mut src) => src.fetch_many(folder, chunk),
                    Err(_) => return,
                };
                for (e, got) in chunk.iter().zip(got) {
                    let job = match got {
                        Ok(bytes) => Job::Fetched(e.clone(), bytes),
                        Err(err) => Job::Unreadable(e.clone(), err),
                    };
                    if job_tx.send(job).is_err() {
                        return;
                    }
                }
            }
        });
        // The workers: open, decide, re-encrypt, check.
        for _ in 0..jobs {
            let (job_rx, res_tx) = (&job_rx, res_tx.clone());
            s.spawn(move || loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let res = match job {
                    Job::Fetched(e, bytes) => {
                        let r = rekeyer
                            .prepare(&bytes, &e, mailbox)
                            .map_err(|x| x.to_string());
                        (e, r)
                    }
                    Job::Unreadable(e, err) => (e, Err(err.to_string())),
                };
                if res_tx.send(res).is_err() {
                    return;
                }
            });
        }
        drop(res_tx);
        // The gatherer: results into batches.
        s.spawn(move || {
            let mut batch = Vec::new();
            let mut gathered = Gathered::default();
            for r in res_rx {
                let full = gathered.add(copy_len(&r));
                batch.push(r);
                if full {
                    gathered = Gathered::default();
                    if batch_tx.send(std::mem::take(&mut batch)).is_err() {
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = batch_tx.send(batch);
            }
        });
        // The writer: here, one batch at a time.
        for batch in batch_rx {
            let done = write_batch(source, rekeyer, mailbox, folder, &batch, opts);
            for ((entry, prepared), done) in batch.into_iter().zip(done) {
                let size = entry.size;
                match prepared {
                    Ok(p) => {
                        let copy_size = p.copy.as_ref().map(|c| c.len() as u64).unwrap_or(0);
                        let l = MessageLine::new(
                            &mailbox.address,
                            folder,
                            &entry.id,
                            &p.subject,
                            size,
                            &p.decision,
                            done,
                        );
                        sink(&l, p.used.as_ref(), copy_size);
                    }
                    Err(why) => {
                        let d = plan::Decision::Leave(plan::Leave::Unopenable(why.clone()));
                        let l = MessageLine::new(
                            &mailbox.address,
                            folder,
                            &entry.id,
                            "",
                            size,
                            &d,
                            Done::Failed(why),
                        );
                        sink(&l, None, 0);
                    }
                }
                progress.done(size);
            }
        }
        reader.join().map_err(|_| MigrateError::Worker)
    })
}

/// The octets of the new copy a result carries (0: nothing to write).
fn copy_len(r: &Result1) -> Option<u64> {
    match &r.1 {
        Ok(p) => p.copy.as_ref().map(|c| c.len() as u64),
        Err(_) => None,
    }
}

/// How much a batch being gathered holds.
#[derive(Debug, Default)]
struct Gathered {
    copies: usize,
    bytes: u64,
}

impl Gathered {
    /// Counts one more result (with a copy of `len` octets, or none);
    /// true when the batch is full.
    fn add(&mut self, len: Option<u64>) -> bool {
        if let Some(len) = len {
            self.copies += 1;
            self.bytes += len;
        }
        self.copies >= WRITE_BATCH || self.bytes >= WRITE_BYTES
    }
}

/// Writes one batch of results and says what was done with each, in
/// order: for each message to re-key, an earlier run's copy is looked
/// for (by its marker) and checked, or a new copy is written (all of the
/// batch's in one go) and read back; only then is the original kept,
/// moved or removed.
fn write_batch(
    source: &Mutex<&mut dyn Source>,
    rekeyer: &Rekeyer<'_>,
    mailbox: &Mailbox<'_>,
    folder: &str,
    batch: &[Result1],
    opts: &Options,
) -> Vec<Done> {
    let mut done: Vec<Option<Done>> = batch
        .iter()
        .map(|(_, p)| match p {
            Err(why) => Some(Done::Failed(why.clone())),
            Ok(p) if p.copy.is_none() || p.plaintext.is_none() || mailbox.target.is_none() => {
                Some(Done::Left)
            }
            Ok(_) if opts.dry_run => Some(Done::WouldMigrate),
            Ok(_) => None,
        })
        .collect();
    let todo: Vec<(usize, &Entry, &Prepared)> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| done[*i].is_none())
        .filter_map(|(i, (e, p))| Some((i, e, p.as_ref().ok()?)))
        .collect();
    let Some(target) = mailbox.target.filter(|_| !todo.is_empty()) else {
        return done.into_iter().map(|d| d.unwrap_or(Done::Left)).collect();
    };
    let Ok(mut src) = source.lock() else {
        let why = "the source is unusable after a failed thread";
        return done
            .into_iter()
            .map(|d| d.unwrap_or_else(|| Done::Failed(why.into())))
            .collect();
    };
    // 1. Copies from an earlier run; two identical originals share one
    // marker, so the second waits until the first's copy is written.
    let mut markers = HashSet::new();
    let (mut fresh, mut repeats) = (Vec::new(), Vec::new());
    for &(i, e, p) in &todo {
        if !markers.insert(p.marker.as_str()) {
            repeats.push((i, e, p));
            continue;
        }
        match earlier_copy(&mut **src, rekeyer, folder, p, target) {
            Ok(Some(d)) => done[i] = Some(d),
            Ok(None) => fresh.push((i, e, p)),
            Err(why) => done[i] = Some(Done::Failed(why)),
        }
    }
    // 2. The new copies, in one go, then 3. read back in one go.
    let news: Vec<NewMessage<'_>> = fresh
        .iter()
        .filter_map(|(_, e, p)| {
            Some(NewMessage {
                message: p.copy.as_deref()?,
                flags: &e.flags,
                internal_date: e.internal_date,
            })
        })
        .collect();
    let written = if news.is_empty() {
        Vec::new()
    } else {
        src.append_many(folder, &news)
    };
    let mut back_of = Vec::new();
    for ((i, _, p), w) in fresh.iter().zip(written) {
        match w {
            Ok(entry) => back_of.push((*i, *p, entry)),
            Err(e) => done[*i] = Some(Done::Failed(format!("writing the new copy: {e}"))),
        }
    }
    let entries: Vec<Entry> = back_of.iter().map(|(_, _, e)| e.clone()).collect();
    let back = if entries.is_empty() {
        Vec::new()
    } else {
        src.fetch_many(folder, &entries)
    };
    for ((i, p, _), b) in back_of.iter().zip(back) {
        done[*i] = Some(match b {
            Err(e) => Done::Failed(format!("reading the new copy back: {e}")),
            Ok(b) if same_copy(&b, p) => Done::Migrated,
            Ok(_) => Done::Failed(
                "the new copy read back differs from what was written; original kept".into(),
            ),
        });
    }
    // The repeats: their copy is the one just written (or written earlier).
    for (i, _, p) in repeats {
        done[i] = Some(match earlier_copy(&mut **src, rekeyer, folder, p, target) {
            Ok(Some(d)) => d,
            Ok(None) => Done::Failed(
                "the copy of an identical message was not written; original kept".into(),
            ),
            Err(why) => Done::Failed(why),
        });
    }
    if let Some(pause) = opts.pause {
        std::thread::sleep(pause);
    }
    // 4. The originals of the copies now known good.
    for &(i, e, _) in &todo {
        if !matches!(done[i], Some(Done::Migrated | Done::CopyFound)) {
            continue;
        }
        let removed = match &opts.originals {
            Originals::Keep => Ok(()),
            Originals::Move(to) => src
                .remove(folder, e, Some(to))
                .map_err(|err| format!("moving the original to {to}: {err}")),
            Originals::Delete => src
                .remove(folder, e, None)
                .map_err(|err| format!("removing the original: {err}")),
        };
        if let Err(why) = removed {
            done[i] = Some(Done::Failed(why));
        }
    }
    if let Err(e) = src.sync() {
        // The copies are durable; an original's removal may come undone.
        for &(i, _, _) in &todo {
            if matches!(done[i], Some(Done::Migrated | Done::CopyFound))
                && opts.originals != Originals::Keep
            {
                done[i] = Some(Done::Failed(format!(
                    "the original's removal is not known to be durable ({e}); the checked copy is there"
                )));
            }
        }
    }
    done.into_iter()
        .map(|d| d.unwrap_or_else(|| Done::Failed("not written".into())))
        .collect()
}

/// True when `back` (read back from the source) is `p`'s new copy.
fn same_copy(back: &[u8], p: &Prepared) -> bool {
    p.copy
        .as_deref()
        .is_some_and(|c| crate::mail::lines::crlf(back) == crate::mail::lines::crlf(c))
}

/// An earlier run's copy of `p`'s original in `folder`, checked:
/// `Some(CopyFound)`, or `None` when there is none.
fn earlier_copy(
    src: &mut dyn Source,
    rekeyer: &Rekeyer<'_>,
    folder: &str,
    p: &Prepared,
    target: &crate::pki::Identity,
) -> Result<Option<Done>, String> {
    let Some(earlier) = src
        .find_marker(folder, &p.marker)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let plaintext = p.plaintext.as_deref().unwrap_or_default();
    let bytes = src.fetch(folder, &earlier).map_err(|e| e.to_string())?;
    rekeyer
        .check(&bytes, plaintext, target)
        .map_err(|e| format!("a copy from an earlier run is there but {e}"))?;
    Ok(Some(Done::CopyFound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_full_at_its_count_or_its_octets() {
        let mut g = Gathered::default();
        // Messages left alone do not fill a batch.
        for _ in 0..1000 {
            assert!(!g.add(None));
        }
        for _ in 1..WRITE_BATCH {
            assert!(!g.add(Some(10)));
        }
        assert!(g.add(Some(10)));
        let mut g = Gathered::default();
        assert!(!g.add(Some(WRITE_BYTES - 1)));
        assert!(g.add(Some(1)));
        // One copy larger than the limit goes alone.
        assert!(Gathered::default().add(Some(WRITE_BYTES * 3)));
    }
}

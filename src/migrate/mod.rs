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
//! threads, and writes (look, append, read back, remove) on the caller's.

pub mod eml;
pub mod imap;
pub mod maildir;
pub mod mbox;
pub mod plan;
pub mod rekey;
pub mod report;
pub mod source;

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use rekey::{Mailbox, Prepared, Rekeyer};
use report::{Done, FolderReport, MessageLine};
use source::{Entry, Originals, Source, SourceError};

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
    /// TEST ONLY: a pause after each new copy is written and before its
    /// original is touched (`SMIMEGW_MIGRATE_TEST_PAUSE_MS`), so a test
    /// can kill the process in that gap.
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
    // Bounded both ways: a slow writer holds the workers back, so new
    // copies never pile up in memory.
    let (res_tx, res_rx) = mpsc::sync_channel::<(Entry, Result<Prepared, String>)>(jobs * 2);
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
        // The writer: here, one message at a time.
        for (entry, prepared) in res_rx {
            let size = entry.size;
            match prepared {
                Ok(p) => {
                    let done = write(source, rekeyer, mailbox, folder, &entry, &p, opts);
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
                    let key = p.used.as_ref();
                    sink(&l, key, copy_size);
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
        reader.join().map_err(|_| MigrateError::Worker)
    })
}

/// Writes the new copy of one message (unless one exists already or it
/// is a dry run), reads it back, and then deals with the original.
fn write(
    source: &Mutex<&mut dyn Source>,
    rekeyer: &Rekeyer<'_>,
    mailbox: &Mailbox<'_>,
    folder: &str,
    entry: &Entry,
    p: &Prepared,
    opts: &Options,
) -> Done {
    let (Some(copy), Some(plaintext), Some(target)) = (&p.copy, &p.plaintext, mailbox.target)
    else {
        return Done::Left;
    };
    if opts.dry_run {
        return Done::WouldMigrate;
    }
    let Ok(mut src) = source.lock() else {
        return Done::Failed("the source is unusable after a failed thread".into());
    };
    let result = (|| -> Result<Done, String> {
        let done = match src
            .find_marker(folder, &p.marker)
            .map_err(|e| e.to_string())?
        {
            Some(earlier) => {
                let bytes = src.fetch(folder, &earlier).map_err(|e| e.to_string())?;
                rekeyer
                    .check(&bytes, plaintext, target)
                    .map_err(|e| format!("a copy from an earlier run is there but {e}"))?;
                Done::CopyFound
            }
            None => {
                let written = src
                    .append(folder, copy, &entry.flags, entry.internal_date)
                    .map_err(|e| format!("writing the new copy: {e}"))?;
                let back = src
                    .fetch(folder, &written)
                    .map_err(|e| format!("reading the new copy back: {e}"))?;
                if crate::mail::lines::crlf(&back) != crate::mail::lines::crlf(copy) {
                    return Err(
                        "the new copy read back differs from what was written; original kept"
                            .into(),
                    );
                }
                Done::Migrated
            }
        };
        if let Some(pause) = opts.pause {
            std::thread::sleep(pause);
        }
        match &opts.originals {
            Originals::Keep => {}
            Originals::Move(to) => src
                .remove(folder, entry, Some(to))
                .map_err(|e| format!("moving the original to {to}: {e}"))?,
            Originals::Delete => src
                .remove(folder, entry, None)
                .map_err(|e| format!("removing the original: {e}"))?,
        }
        Ok(done)
    })();
    result.unwrap_or_else(Done::Failed)
}

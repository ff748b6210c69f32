//! `migrate`: the command around [`crate::migrate`]: which source, which
//! mailbox address its mail is re-keyed for, the options, a progress bar
//! on a terminal (nothing when not a terminal), and the report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{unix_now, OpsError};
use crate::config::MailboxSettings;
use crate::daemon;
use crate::migrate::imap::{Account, ImapSource};
use crate::migrate::plan::Chosen;
use crate::migrate::rekey::{rfc3339, Rekeyer};
use crate::migrate::report::{self, MessageLine};
use crate::migrate::source::{Originals, Source};
use crate::migrate::{self, eml::EmlDir, maildir::Maildir, Options, Progress};
use crate::pki::directory::Source as CertSource;
use crate::pki::oces::Generation;
use crate::pki::resolve::Verdict;
use crate::pki::signer;
use crate::snapshot::{Live, Snapshot};
use openssl::x509::X509;

/// Where the mail is.
#[derive(Debug, Clone)]
pub enum Where {
    Maildir(PathBuf),
    Mbox(PathBuf),
    Eml(PathBuf),
    Imap(Account),
}

/// The `migrate` command line.
#[derive(Debug, Clone)]
pub struct MigrateArgs {
    pub config: PathBuf,
    /// The sources, done one after the other (each its own mailbox).
    pub sources: Vec<Where>,
    pub folders: Vec<String>,
    /// `NAME=ADDRESS` (or a bare address).
    pub mailboxes: Vec<String>,
    pub originals: String,
    pub rekey: String,
    pub dry_run: bool,
    pub json: bool,
    pub jobs: Option<usize>,
}

/// Why migration failed (besides configuration and usage).
#[derive(Debug, thiserror::Error)]
pub enum MigrateCommandError {
    #[error("{0}")]
    Migrate(#[from] migrate::MigrateError),
    #[error("{0}")]
    Source(#[from] migrate::source::SourceError),
    #[error("[migrate] extra_recipients: {address} has no usable certificate ({why})")]
    ExtraRecipient { address: String, why: String },
}

/// Messages done of all, and octets (with rate and ETA) on the bar.
struct Bar(ProgressBar, AtomicU64, AtomicU64);

impl Progress for Bar {
    fn total(&self, messages: u64, bytes: u64) {
        self.0.set_length(bytes);
        self.2.store(messages, Ordering::Relaxed);
        self.0.set_message(format!("0/{messages} messages"));
    }
    fn done(&self, bytes: u64) {
        let n = self.1.fetch_add(1, Ordering::Relaxed) + 1;
        self.0
            .set_message(format!("{n}/{} messages", self.2.load(Ordering::Relaxed)));
        self.0.inc(bytes);
    }
}

/// The address whose certificate `name`'s mail is re-keyed to.
/// In order: `--mailbox NAME=ADDRESS` (or a lone `--mailbox ADDRESS`),
/// a `[[mailbox]]` whose `migrate_from` names the login or the folder, the
/// login itself when it is an address.
fn address_for(
    name: &str,
    path: Option<&Path>,
    mailboxes: &[String],
    configured: &[MailboxSettings],
) -> Result<String, OpsError> {
    let file = path
        .and_then(|p| p.file_name())
        .map(|f| f.to_string_lossy().to_string());
    for m in mailboxes {
        match m.split_once('=') {
            Some((k, v)) if k == name || Some(k) == file.as_deref() => {
                return Ok(v.trim().to_string())
            }
            None if mailboxes.len() == 1 && m.contains('@') => return Ok(m.trim().to_string()),
            _ => {}
        }
    }
    let named = |k: &String| k == name || Some(k.as_str()) == file.as_deref();
    if let Some(m) = configured
        .iter()
        .find(|m| !m.address.starts_with("*@") && m.migrate_from.iter().any(named))
    {
        return Ok(m.address.clone());
    }
    if name.contains('@') && !name.contains('/') {
        return Ok(name.to_string());
    }
    Err(OpsError::Usage(format!(
        "migrate: whose mailbox is {name}? give --mailbox {}=ADDRESS",
        file.as_deref().unwrap_or(name)
    )))
}

/// The name a source is known by (a path, or an IMAP login without its
/// master user), and its path.
fn source_name(source: &Where) -> (String, Option<&Path>) {
    match source {
        Where::Maildir(p) | Where::Eml(p) | Where::Mbox(p) => (p.display().to_string(), Some(p)),
        // A master user's login (`user*master`) names the user's mailbox.
        Where::Imap(a) => (
            a.user.split('*').next().unwrap_or(&a.user).to_string(),
            None,
        ),
    }
}

/// `migrate`: the report, and whether every message went well. Several
/// sources (mailboxes) are done one after the other; each is mapped to its
/// address before any is touched.
pub fn migrate(args: &MigrateArgs) -> Result<(String, bool), OpsError> {
    let originals = Originals::parse(&args.originals).ok_or_else(|| {
        OpsError::Usage(format!(
            "--originals {}: expected keep, delete or move:FOLDER",
            args.originals
        ))
    })?;
    let chosen = Chosen::parse(&args.rekey).ok_or_else(|| {
        OpsError::Usage(format!(
            "--rekey {}: expected a list of oces2, oces3, other, older",
            args.rekey
        ))
    })?;
    if args.sources.is_empty() {
        return Err(OpsError::Usage(
            "migrate: give --maildir, --mbox, --eml or --imap".into(),
        ));
    }
    let snapshot = daemon::check(&args.config)?;
    let mut todo = Vec::new();
    for source in &args.sources {
        let (name, path) = source_name(source);
        let address = address_for(&name, path, &args.mailboxes, &snapshot.settings.mailboxes)?;
        todo.push((source, name, address));
    }
    let now = unix_now();
    let known = signer::known_certificates(&snapshot.keys, &snapshot.certs);
    let live = Live::for_command(snapshot);
    let snapshot = live.current();
    let extra = extra_recipients(&snapshot, &live, now)?;
    let rekeyer = Rekeyer {
        snapshot: &snapshot,
        live: &live,
        known,
        chosen,
        now,
        extra,
        ldap: Default::default(),
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let opts = Options {
        originals: originals.clone(),
        dry_run: args.dry_run,
        folders: args.folders.clone(),
        jobs,
        pause: test_pause(),
    };
    let mut text = String::new();
    let mut all_well = true;
    for (source, name, address) in todo {
        let (part, well) = one_source(
            source,
            &name,
            &address,
            &rekeyer,
            &opts,
            args.json,
            snapshot.settings.migrate.imap_timeout,
        )?;
        text.push_str(&part);
        all_well &= well;
    }
    Ok((text, all_well))
}

/// Migrates one source for `address`: its part of the report, and
/// whether every message went well.
fn one_source(
    source: &Where,
    name: &str,
    address: &str,
    rekeyer: &Rekeyer<'_>,
    opts: &Options,
    json: bool,
    imap_timeout: Duration,
) -> Result<(String, bool), OpsError> {
    let mut source: Box<dyn Source> = match source {
        Where::Maildir(p) => Box::new(Maildir::open(p).map_err(cmd)?),
        Where::Eml(p) => Box::new(EmlDir::open(p).map_err(cmd)?),
        Where::Mbox(p) => Box::new(migrate::mbox::Mbox::open(p).map_err(cmd)?),
        Where::Imap(a) => Box::new(ImapSource::open(a, imap_timeout).map_err(cmd)?),
    };
    let bar = ProgressBar::with_draw_target(
        None,
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style);
    }
    let progress = Bar(bar, AtomicU64::new(0), AtomicU64::new(0));
    let mut text = String::new();
    let target = rekeyer.mailbox(address).target.map(|t| {
        format!(
            "{} ({}, expires {})",
            t.info.subject_cn,
            t.info.generation,
            rfc3339(t.info.not_after).get(..10).unwrap_or_default()
        )
    });
    let also: Vec<&str> = rekeyer.extra.iter().map(|(a, _)| a.as_str()).collect();
    let originals = &opts.originals;
    if json {
        text.push_str(
            &serde_json::json!({"type": "mailbox", "source": name, "mailbox": address,
                "target": target, "also_encrypted_to": also,
                "originals": originals.to_string(), "dry_run": opts.dry_run})
            .to_string(),
        );
        text.push('\n');
    } else {
        let also = if also.is_empty() {
            String::new()
        } else {
            format!(" and to {}", also.join(", "))
        };
        text.push_str(&format!(
            "source {name}: mailbox {address}, re-encrypted to {}{also}; originals {originals}\n",
            target
                .as_deref()
                .unwrap_or("nothing (no valid OCES3 certificate)")
        ));
    }
    let mut lines: Vec<MessageLine> = Vec::new();
    let reports = migrate::run(
        source.as_mut(),
        rekeyer,
        address,
        opts,
        &progress,
        &mut |l: &MessageLine| lines.push(l.clone()),
    )
    .map_err(|e| OpsError::Migrate(e.into()))?;
    progress.0.finish_and_clear();
    let failed: Vec<&MessageLine> = lines
        .iter()
        .filter(|l| matches!(l.done, report::Done::Failed(_)))
        .collect();
    if json {
        for l in &lines {
            if l.outcome != "plain" && l.outcome != "migrated-copy" && l.outcome != "current" {
                text.push_str(&report::message_json(l));
                text.push('\n');
            }
        }
        text.push_str(&report::folders_json(&reports, opts.dry_run));
    } else {
        text.push_str(&report::table(&reports, opts.dry_run));
        for l in &failed {
            if let report::Done::Failed(why) = &l.done {
                text.push_str(&format!(
                    "FAILED {} {}: {why} (original untouched)\n",
                    l.folder, l.id
                ));
            }
        }
    }
    Ok((text, failed.is_empty()))
}

/// The certificate of each `[migrate] extra_recipients` address, found in
/// the certificate sources and checked as any recipient's (validity, key
/// usage, chain, revocation at `now`): of the usable ones, OCES3 before
/// OCES2, then the one valid longest. An address without one stops the
/// run before anything is read or written.
fn extra_recipients(
    snapshot: &Snapshot,
    live: &Live,
    now: i64,
) -> Result<Vec<(String, X509)>, OpsError> {
    let wanted = &snapshot.settings.migrate.extra_recipients;
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OpsError::Runtime)?;
    let mut out = Vec::new();
    for address in wanted {
        let (candidates, lookup_error) = rt.block_on(live.resolver.candidates(
            &snapshot.keys,
            &snapshot.certs,
            &snapshot.checked,
            &snapshot.settings,
            address,
            now,
            |e| e.info.can_encrypt(),
        ));
        // Every copy of the archive is encrypted to it: only a certificate
        // the operator put in the certificate folders will do, never one
        // harvested from mail or found in LDAP.
        let pick = candidates
            .iter()
            .filter(|c| c.entry.source == CertSource::Directory)
            .filter(|c| matches!(c.verdict, Verdict::Usable(_)))
            .max_by_key(|c| {
                (
                    c.entry.info.generation == Generation::Oces3,
                    c.entry.info.not_after,
                )
            });
        match pick {
            Some(c) => out.push((address.clone(), c.entry.cert.clone())),
            None => {
                let mut why: Vec<String> = candidates
                    .iter()
                    .map(|c| {
                        let verdict = match &c.verdict {
                            _ if c.entry.source != CertSource::Directory => format!(
                                "not taken: {} (only a certificate in [certificates] dirs is)",
                                c.entry.source
                            ),
                            Verdict::Usable(n) => n.clone(),
                            Verdict::Refused(n) => format!("refused: {n}"),
                            Verdict::Unknown(n) => format!("unknown: {n}"),
                        };
                        format!("{}: {verdict}", c.entry.info.subject_cn)
                    })
                    .collect();
                why.extend(lookup_error);
                if why.is_empty() {
                    why.push("no certificate found".into());
                }
                return Err(OpsError::Migrate(MigrateCommandError::ExtraRecipient {
                    address: address.clone(),
                    why: why.join("; "),
                }));
            }
        }
    }
    Ok(out)
}

/// TEST ONLY: the pause between writing new copies and touching their
/// originals (`SMIMEGW_MIGRATE_TEST_PAUSE_MS`), so a test can kill the
/// process in that gap. Read only by debug builds (what the tests run); a
/// release build has no such hook.
#[cfg(debug_assertions)]
fn test_pause() -> Option<Duration> {
    std::env::var("SMIMEGW_MIGRATE_TEST_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}

#[cfg(not(debug_assertions))]
fn test_pause() -> Option<Duration> {
    None
}

fn cmd(e: migrate::source::SourceError) -> OpsError {
    OpsError::Migrate(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(address: &str, from: &[&str]) -> MailboxSettings {
        MailboxSettings {
            address: address.into(),
            deliver: Default::default(),
            encryption: Default::default(),
            send_as: Vec::new(),
            migrate_from: from.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn whose_mailbox_command_line_then_configuration_then_the_login() {
        let configured = [
            mailbox("*@example-law.dk", &["everyone"]),
            mailbox("sikkermail@example-law.dk", &["sikkermail", "archive-2019"]),
        ];
        let path = Path::new("/srv/old/archive-2019");
        // The configuration names the login, and the folder by its own name.
        assert_eq!(
            address_for("sikkermail", None, &[], &configured).unwrap(),
            "sikkermail@example-law.dk"
        );
        assert_eq!(
            address_for("/srv/old/archive-2019", Some(path), &[], &configured).unwrap(),
            "sikkermail@example-law.dk"
        );
        // The command line wins over the configuration.
        let cli = ["archive-2019=alice@example-law.dk".to_string()];
        assert_eq!(
            address_for("/srv/old/archive-2019", Some(path), &cli, &configured).unwrap(),
            "alice@example-law.dk"
        );
        // A login that is an address names itself; a *@domain entry never
        // claims stored mail.
        assert_eq!(
            address_for("bob@example-law.dk", None, &[], &configured).unwrap(),
            "bob@example-law.dk"
        );
        assert!(matches!(
            address_for("everyone", None, &[], &configured),
            Err(OpsError::Usage(_))
        ));
        assert!(matches!(
            address_for("unknown", None, &[], &configured),
            Err(OpsError::Usage(_))
        ));
    }
}

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
use crate::pki::signer;
use crate::snapshot::Live;

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
    pub source: Where,
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

/// `migrate`: the report, and whether every message went well.
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
    let (name, path): (String, Option<&Path>) = match &args.source {
        Where::Maildir(p) | Where::Eml(p) | Where::Mbox(p) => (p.display().to_string(), Some(p)),
        // A master user's login (`user*master`) names the user's mailbox.
        Where::Imap(a) => (
            a.user.split('*').next().unwrap_or(&a.user).to_string(),
            None,
        ),
    };
    let snapshot = daemon::check(&args.config)?;
    let address = address_for(&name, path, &args.mailboxes, &snapshot.settings.mailboxes)?;
    let now = unix_now();
    let mut source: Box<dyn Source> = match &args.source {
        Where::Maildir(p) => Box::new(Maildir::open(p).map_err(cmd)?),
        Where::Eml(p) => Box::new(EmlDir::open(p).map_err(cmd)?),
        Where::Mbox(p) => Box::new(migrate::mbox::Mbox::open(p).map_err(cmd)?),
        Where::Imap(a) => Box::new(ImapSource::open(a).map_err(cmd)?),
    };
    let known = signer::known_certificates(&snapshot.keys, &snapshot.certs);
    let live = Live::new(snapshot);
    let snapshot = live.current();
    let rekeyer = Rekeyer {
        snapshot: &snapshot,
        live: &live,
        known,
        chosen,
        now,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let pause = std::env::var("SMIMEGW_MIGRATE_TEST_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let opts = Options {
        originals: originals.clone(),
        dry_run: args.dry_run,
        folders: args.folders.clone(),
        jobs,
        pause,
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
    let target = rekeyer.mailbox(&address).target.map(|t| {
        format!(
            "{} ({}, expires {})",
            t.info.subject_cn,
            t.info.generation,
            rfc3339(t.info.not_after).get(..10).unwrap_or_default()
        )
    });
    let head = format!(
        "source {name}: mailbox {address}, re-encrypted to {}; originals {originals}\n",
        target
            .as_deref()
            .unwrap_or("nothing (no valid OCES3 certificate)")
    );
    if args.json {
        text.push_str(
            &serde_json::json!({"type": "mailbox", "source": name, "mailbox": address,
                "target": target, "originals": originals.to_string(), "dry_run": args.dry_run})
            .to_string(),
        );
        text.push('\n');
    } else {
        text.push_str(&head);
    }
    let mut lines: Vec<MessageLine> = Vec::new();
    let reports = migrate::run(
        source.as_mut(),
        &rekeyer,
        &address,
        &opts,
        &progress,
        &mut |l: &MessageLine| lines.push(l.clone()),
    )
    .map_err(|e| OpsError::Migrate(e.into()))?;
    progress.0.finish_and_clear();
    let failed: Vec<&MessageLine> = lines
        .iter()
        .filter(|l| matches!(l.done, report::Done::Failed(_)))
        .collect();
    if args.json {
        for l in &lines {
            if l.outcome != "plain" && l.outcome != "migrated-copy" && l.outcome != "current" {
                text.push_str(&report::message_json(l));
                text.push('\n');
            }
        }
        text.push_str(&report::folders_json(&reports, args.dry_run));
    } else {
        text.push_str(&report::table(&reports, args.dry_run));
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

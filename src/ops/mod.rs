//! The operator's commands, apart from the running daemon: `check-config`,
//! `keys list|usage`, `explain`, `cutoff report`, `certs …`, `queue …` and
//! the demo PKI generator
//! (TEST ONLY). Each returns the text to print, or an [`OpsError`] that
//! says what went wrong and which exit status it deserves.

pub mod cutoff;
pub mod demo;
pub mod explain;
pub mod listing;
pub mod migrate;
pub mod queue;
pub mod usage;

use crate::config::{self, Instant};
use crate::daemon::{self, DaemonError};
use crate::pki::crl_history::CrlHistory;
use crate::pki::revocation;
use crate::snapshot::Live;
use crate::spool::{SpoolError, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The command line was wrong (exit status 2).
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Daemon(#[from] DaemonError),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Demo(#[from] demo::DemoError),
    #[error("{0}")]
    Import(#[from] listing::ImportError),
    #[error("{0}")]
    Migrate(#[from] migrate::MigrateCommandError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The cutoff report could not be made (exit status 2).
    #[error("{0}")]
    Cutoff(#[from] cutoff::CutoffError),
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
}

impl OpsError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            OpsError::Usage(_) | OpsError::Cutoff(_) => 2,
            _ => 1,
        }
    }
}

/// What `queue` does.
pub enum QueueCommand {
    List,
    Show(String),
    Retry(String),
    Delete(String),
    Quarantined,
    Release(String),
}

/// What `certs` does.
pub enum CertsCommand {
    List,
    Show(String),
    Import(PathBuf),
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn runtime() -> Result<tokio::runtime::Runtime, OpsError> {
    tokio::runtime::Runtime::new().map_err(OpsError::Runtime)
}

/// `serve`: runs the daemon until SIGTERM/SIGINT.
pub fn serve(config: &Path) -> Result<(), OpsError> {
    Ok(runtime()?.block_on(daemon::serve(config))?)
}

/// `check-config`: validates as `serve` would.
pub fn check_config(config: &Path) -> Result<String, OpsError> {
    let snapshot = daemon::check(config)?;
    let mut out = format!("{}: configuration is valid\n", config.display());
    for caution in snapshot.settings.cautions() {
        out.push_str(&format!("caution: {caution}\n"));
    }
    Ok(out)
}

/// `keys list`: the identities, with their revocation state now.
pub fn keys_list(config: &Path) -> Result<String, OpsError> {
    let snapshot = daemon::check(config)?;
    let now = unix_now();
    let history = Arc::new(CrlHistory::read_from_spool(&snapshot.settings.spool.dir));
    let revoked = revocation::revoked_identities(&snapshot.keys, &snapshot.settings, history, now);
    Ok(listing::keys_table(&snapshot.keys, now, &revoked))
}

/// `keys usage`: who still encrypts to which of the organisation's keys,
/// from the journal.
pub fn keys_usage(config: &Path, since: &str) -> Result<String, OpsError> {
    let window =
        config::parse_duration(since).map_err(|e| OpsError::Usage(format!("--since {e}")))?;
    let snapshot = daemon::check(config)?;
    let target = crate::journal::Target::of(&snapshot.settings)
        .ok_or(crate::journal::JournalError::Disabled)?;
    let since = unix_now() - window.as_secs() as i64;
    let rows = runtime()?.block_on(async {
        let store = crate::journal::Store::open_for_reading(&target).await?;
        store.inbound(since).await
    })?;
    Ok(usage::table(&snapshot.keys, &rows, since))
}

/// `cutoff report`: the text, and whether nothing is at risk.
pub fn cutoff_report(request: &cutoff::Request) -> Result<(String, bool), OpsError> {
    Ok(cutoff::run(request)?)
}

/// `explain`: the report, and whether mail would leave; for `message`
/// (a file) as it is, when given: mail its sender encrypted is decided
/// from the certificates it is encrypted to.
pub fn explain(
    config: &Path,
    rcpt: &str,
    from: &str,
    at: Option<&str>,
    message: Option<&Path>,
) -> Result<(String, bool), OpsError> {
    let at = match at.map(Instant::parse_when) {
        None => unix_now(),
        Some(Ok(i)) => i.unix,
        Some(Err(e)) => return Err(OpsError::Usage(format!("--at {e}"))),
    };
    let message = match message {
        None => explain::Message::NotGiven,
        Some(path) => {
            let raw = std::fs::read(path)
                .map_err(|e| OpsError::Usage(format!("--message {}: {e}", path.display())))?;
            let shape = crate::smime::mime::shape(&raw);
            match crate::pipeline::decide::arrived_encrypted(&shape, &raw) {
                Some(ids) => explain::Message::Sealed(ids),
                None => explain::Message::Plain,
            }
        }
    };
    let snapshot = daemon::check(config).map_err(|e| OpsError::Usage(e.to_string()))?;
    let live = Live::for_command(snapshot);
    Ok(runtime()?.block_on(explain::explain(&live, from, rcpt, at, &message)))
}

/// `certs list|show|import`.
pub fn certs(config: &Path, command: CertsCommand) -> Result<String, OpsError> {
    let live = Live::for_command(daemon::check(config)?);
    let settings = live.current().settings.clone();
    match command {
        CertsCommand::List => Ok(listing::certs_table(&live.current().certs)),
        CertsCommand::Show(address) => {
            let (text, _) = runtime()?.block_on(explain::explain(
                &live,
                "",
                &address,
                unix_now(),
                &explain::Message::NotGiven,
            ));
            Ok(text)
        }
        CertsCommand::Import(file) => {
            let Some(dir) = settings.certificates.dirs.first() else {
                return Err(listing::ImportError::NoFolder.into());
            };
            let (n, new) = listing::import(&file, dir)?;
            Ok(format!(
                "{}: {n} certificate(s), {new} new, written to {} (the daemon reads them at its next reload)\n",
                file.display(),
                dir.display()
            ))
        }
    }
}

/// `pki demo`: writes the look-alike test PKI.
pub fn pki_demo(out: &Path, urls: &demo::Urls) -> Result<String, OpsError> {
    let w = demo::generate(out, unix_now(), urls)?;
    Ok(format!(
        "demo PKI (TEST ONLY) written to {}: {} files\n",
        w.dir.display(),
        w.files.len()
    ))
}

/// `queue …`: works on the spool files, whether or not the daemon runs.
/// It needs the configuration's spool folder, not the keys.
pub fn queue(config: &Path, command: QueueCommand) -> Result<String, OpsError> {
    let settings = config::load(config)?;
    let store = Store::open_shared(&settings.spool.dir)?;
    let text = match command {
        QueueCommand::List => queue::list(&store),
        QueueCommand::Show(id) => queue::show(&store, &id),
        QueueCommand::Retry(id) => queue::retry(&store, &id),
        QueueCommand::Delete(id) => queue::delete(&store, &id),
        QueueCommand::Quarantined => queue::quarantined(&store),
        QueueCommand::Release(id) => queue::release(&store, &id),
    }?;
    Ok(text)
}

//! The journal: what the daemon decided for each outside recipient
//! (rule, outcome, generation and certificates used) and which of the
//! organisation's keys incoming mail was encrypted to, by sender. One row
//! per message and recipient (or message and key), so a retried delivery
//! is counted once; reports count rows per day. `cutoff report` and `keys
//! usage` read it.
//!
//! Written off the delivery path: the queue hands records to [`Journal`]
//! (a bounded channel, never waiting); one writer task stores them in
//! batches. A full channel drops the record (counted and logged); a
//! database that is locked, missing or down is logged and retried, the
//! batch kept meanwhile. Mail never waits for the journal.
//!
//! - [`sqlite`]: an SQLite file under the spool folder (the default).
//! - [`postgres`]: a PostgreSQL shared by several gateways
//!   (`[journal] database = "postgres://…"`).
//!
//! Both speak the same SQL through [`Store`].

pub mod postgres;
mod sql;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{JournalSettings, Settings};

/// Records waiting for the writer at most; more are dropped (counted).
const CHANNEL: usize = 10_000;
/// Records written in one transaction at most.
const BATCH: usize = 500;
/// How long the writer gathers records after the first of a batch: one
/// transaction per moment rather than per message (the file locks, WAL
/// writes and wake-ups of a transaction cost more than its rows).
const GATHER: Duration = Duration::from_millis(200);
/// The longest wait between two tries of a database that fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the journal could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("SQLite journal {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("SQLite journal {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PostgreSQL journal: {}", causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL journal TLS: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
    #[error("no journal at {0} yet (the daemon writes it once it has delivered mail with [journal] enabled)")]
    Missing(PathBuf),
    #[error("the journal is switched off ([journal] enabled = false)")]
    Disabled,
    #[error("journal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// An error with its causes ("error performing TLS handshake: …
/// certificate verify failed").
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        next = cause.source();
    }
    text
}

/// One outside recipient of one message, as decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The queue id.
    pub message: String,
    /// Lower case.
    pub recipient: String,
    /// Empty when no rule applied.
    pub rule: String,
    /// `readiness::Outcome::token`.
    pub outcome: String,
    /// `OCES2`, `OCES3`, `other`; empty when not encrypted.
    pub generation: String,
    /// SHA-256 fingerprints of the recipient's certificates used, `,`-joined.
    pub certificates: String,
    /// Unix seconds.
    pub at: i64,
}

/// One message that arrived encrypted to one of the organisation's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub message: String,
    /// Lower case: the header From, else the envelope sender.
    pub sender: String,
    /// SHA-256 fingerprint of the identity's certificate.
    pub identity: String,
    /// Its subject's common name.
    pub subject: String,
    /// `OCES2`, `OCES3`, `other`.
    pub generation: String,
    pub at: i64,
}

/// What the queue hands to the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Outbound(Outbound),
    Inbound(Inbound),
}

/// Outbound rows summed: one per recipient, rule, outcome, generation,
/// certificates and day (Danish time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundUse {
    pub recipient: String,
    pub rule: String,
    pub outcome: String,
    pub generation: String,
    pub certificates: String,
    pub day: String,
    pub count: u64,
    pub last_seen: i64,
}

/// Inbound rows summed: one per sender and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundUse {
    pub sender: String,
    pub identity: String,
    pub subject: String,
    pub generation: String,
    pub count: u64,
    pub last_seen: i64,
}

/// Where the journal lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sqlite(PathBuf),
    /// The URL, and CA certificates its TLS certificate may chain to.
    Postgres(String, Option<PathBuf>),
}

impl Target {
    /// The journal `settings` name, or `None` when it is switched off.
    pub fn of(settings: &Settings) -> Option<Target> {
        let j: &JournalSettings = &settings.journal;
        if !j.enabled {
            return None;
        }
        Some(match &j.database {
            Some(url) if j.is_postgres() => Target::Postgres(url.clone(), j.tls_ca.clone()),
            Some(path) => Target::Sqlite(PathBuf::from(path)),
            None => Target::Sqlite(settings.spool.dir.join("journal").join("journal.db")),
        })
    }

    /// For logs: the file, or the server as `postgres://user@host:port/db`
    /// built from what tokio-postgres reads in the URL (hosts, ports,
    /// database, user), so that no password, in whatever form the URL
    /// carries it (`user:pass@`, `?password=`), reaches the log.
    pub fn describe(&self) -> String {
        match self {
            Target::Sqlite(p) => p.display().to_string(),
            Target::Postgres(url, _) => describe_postgres(url),
        }
    }
}

fn describe_postgres(url: &str) -> String {
    use tokio_postgres::config::Host;
    let Ok(cfg) = url.parse::<tokio_postgres::Config>() else {
        return "postgres://(unreadable URL)".into();
    };
    let ports = cfg.get_ports();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = cfg.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = cfg
        .get_dbname()
        .map(|d| format!("/{d}"))
        .unwrap_or_default();
    format!("postgres://{user}{}{db}", hosts.join(","))
}

/// The store interface: one journal database, SQLite or PostgreSQL, with
/// the same tables and queries.
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl Store {
    /// Opens (and creates the tables of) the journal at `target`.
    pub async fn open(target: &Target) -> Result<Store, JournalError> {
        Ok(match target {
            Target::Sqlite(path) => Store::Sqlite(sqlite::Sqlite::open(path.clone()).await?),
            Target::Postgres(url, ca) => {
                Store::Postgres(postgres::Postgres::open(url, ca.as_deref()).await?)
            }
        })
    }

    /// Opens the journal at `target` for reading (reports): nothing is
    /// created; a missing SQLite file is an error.
    pub async fn open_for_reading(target: &Target) -> Result<Store, JournalError> {
        Ok(match target {
            Target::Sqlite(path) => {
                if !path.is_file() {
                    return Err(JournalError::Missing(path.clone()));
                }
                Store::Sqlite(sqlite::Sqlite::open_existing(path.clone()).await?)
            }
            Target::Postgres(url, ca) => {
                Store::Postgres(postgres::Postgres::connect(url, ca.as_deref()).await?)
            }
        })
    }

    /// Stores `records` from gateway `gateway` in one transaction: a
    /// record for a (message, recipient) or (message, key) already there
    /// updates it instead of counting again.
    pub async fn write(&mut self, gateway: &str, records: &[Record]) -> Result<(), JournalError> {
        match self {
            Store::Sqlite(s) => s.write(gateway, records).await,
            Store::Postgres(p) => p.write(gateway, records).await,
        }
    }

    /// Deletes rows last seen before `before`; returns how many.
    pub async fn prune(&mut self, before: i64) -> Result<u64, JournalError> {
        match self {
            Store::Sqlite(s) => s.prune(before).await,
            Store::Postgres(p) => p.prune(before).await,
        }
    }

    /// Outbound use since `since` (Unix seconds), summed per day.
    pub async fn outbound(&self, since: i64) -> Result<Vec<OutboundUse>, JournalError> {
        match self {
            Store::Sqlite(s) => s.outbound(since).await,
            Store::Postgres(p) => p.outbound(since).await,
        }
    }

    /// Inbound key use since `since`, summed per sender and identity.
    pub async fn inbound(&self, since: i64) -> Result<Vec<InboundUse>, JournalError> {
        match self {
            Store::Sqlite(s) => s.inbound(since).await,
            Store::Postgres(p) => p.inbound(since).await,
        }
    }

    /// True when the connection is gone and must be opened again.
    fn is_closed(&self) -> bool {
        match self {
            Store::Sqlite(_) => false,
            Store::Postgres(p) => p.is_closed(),
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The day (Danish time) of a Unix time, `YYYY-MM-DD`.
pub fn day(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| {
            t.with_timezone(&chrono_tz::Europe::Copenhagen)
                .format("%Y-%m-%d")
                .to_string()
        })
        .unwrap_or_default()
}

/// The queue's handle: hands records to the writer without waiting.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    tx: Option<mpsc::Sender<Record>>,
    dropped: Arc<AtomicU64>,
    /// Failed writes so far (each retried).
    errors: Arc<AtomicU64>,
}

impl Journal {
    /// A journal that keeps nothing (switched off, and for tests).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Hands `record` to the writer; when its channel is full the record
    /// is dropped and counted, never waited for.
    pub fn record(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(record) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            crate::metrics::journal_dropped();
            // The first and then every power of two: a stuck writer does
            // not flood the log.
            if n.is_power_of_two() {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the writer is behind",
                    mpsc::error::TrySendError::Closed(_) => "the writer has stopped",
                };
                warn!(
                    event = "journal-dropped",
                    dropped = n,
                    "journal record dropped ({why}); mail is not affected"
                );
            }
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes that failed so far (their records were kept and retried).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Starts the writer for the journal `settings` name (none when it is
    /// switched off). The writer ends when every handle is dropped and
    /// what it holds is written, or when told to stop.
    pub fn start(settings: &Settings) -> (Journal, Option<tokio::task::JoinHandle<()>>) {
        let Some(target) = Target::of(settings) else {
            return (Journal::disabled(), None);
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let journal = Journal {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(AtomicU64::new(0)),
        };
        let writer = Writer {
            errors: Arc::clone(&journal.errors),
            target,
            gateway: settings.server.hostname.clone(),
            keep: settings.journal.keep,
        };
        (journal, Some(tokio::spawn(writer.run(rx))))
    }
}

/// The writer task's settings.
struct Writer {
    errors: Arc<AtomicU64>,
    target: Target,
    gateway: String,
    keep: Duration,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Record>) {
        let mut store: Option<Store> = None;
        let mut pending: Vec<Record> = Vec::new();
        let mut backoff = Duration::from_secs(1);
        let mut failing = false;
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(r) => pending.push(r),
                    None => break,
                }
                // The store opened (its tables made) at the first record,
                // as before the gathering: readers find the tables as soon
                // as mail has been decided (a failure is retried below).
                if store.is_none() {
                    if let Ok(s) = Store::open(&self.target).await {
                        info!(event = "journal-open", journal = %self.target.describe(), "journal opened");
                        store = Some(s);
                    }
                }
                // The records of the next moment join this one's
                // transaction (the channel holds them meanwhile).
                if !rx.is_closed() {
                    tokio::time::sleep(GATHER).await;
                }
            }
            while pending.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => pending.push(r),
                    Err(_) => break,
                }
            }
            let result = match &mut store {
                Some(s) => s.write(&self.gateway, &pending).await,
                None => match Store::open(&self.target).await {
                    Ok(mut s) => {
                        info!(event = "journal-open", journal = %self.target.describe(), "journal opened");
                        let r = s.write(&self.gateway, &pending).await;
                        store = Some(s);
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => {
                    crate::metrics::journal_written(pending.len());
                    pending.clear();
                    backoff = Duration::from_secs(1);
                    if failing {
                        info!(event = "journal-recovered", journal = %self.target.describe(),
                              "journal written again");
                        failing = false;
                    }
                }
                Err(e) => {
                    crate::metrics::journal_error();
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(event = "journal-error", journal = %self.target.describe(), error = %e,
                          records = pending.len(), retry_in = ?backoff,
                          "journal not written; kept and tried again (mail is not affected)");
                    failing = true;
                    if store.as_ref().is_some_and(Store::is_closed) {
                        store = None;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            let due = pruned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(3600));
            if let (true, Some(s)) = (due, &mut store) {
                pruned_at = Some(tokio::time::Instant::now());
                let before = now() - self.keep.as_secs() as i64;
                match s.prune(before).await {
                    Ok(0) => {}
                    Ok(n) => info!(
                        event = "journal-pruned",
                        rows = n,
                        "old journal rows deleted"
                    ),
                    Err(e) => warn!(event = "journal-error", error = %e, "journal not pruned"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

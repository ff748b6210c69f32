//! `smime-gateway cutoff report`: for every counterparty the journal saw
//! in a window and every address in the certificate directory, what plain
//! mail to it gets now and at a date (through `readiness::assess`, the
//! daemon's own `decide`), why that changes, its readiness and how much
//! mail it received; a summary per rule and per domain. With `--set` or
//! `--proposed` the date's answer comes from a configuration that is not
//! in force (the live file is only read).
//!
//! Exit status: 0 nothing breaks, 1 a counterparty that received
//! encrypted mail in the window would be bounced, held or sent plain at
//! the date, 2 the report could not be made.

mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::{self, ConfigError, Instant, Settings, ValueError};
use crate::journal::{JournalError, OutboundUse, Store, Target};
use crate::mail::address::domain_of;
use crate::pipeline::decide::is_internal;
use crate::pki::directory::Directory;
use crate::readiness::{self, Assessment};
use crate::snapshot::{Live, Snapshot, SnapshotError};

/// Why the report could not be made (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CutoffError {
    #[error("{0}")]
    Usage(String),
    #[error("--at {0}")]
    When(ValueError),
    #[error("--since {0}")]
    Since(ValueError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// What the operator asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub config: PathBuf,
    pub at: String,
    pub since: String,
    pub rule: Option<String>,
    pub format: Format,
    /// `key=value` overrides, as typed.
    pub set: Vec<String>,
    pub proposed: Option<PathBuf>,
}

/// The journal's volume for one recipient in the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// Messages (counted once per message and recipient).
    pub mail: u64,
    /// Of which left encrypted.
    pub encrypted: u64,
    /// Unix seconds; 0: never.
    pub last_seen: i64,
    /// Rules that decided its mail.
    pub rules: BTreeSet<String>,
}

/// Sums the journal's rows per recipient.
pub fn volumes(rows: &[OutboundUse]) -> BTreeMap<String, Volume> {
    let mut out: BTreeMap<String, Volume> = BTreeMap::new();
    for r in rows {
        let v = out.entry(r.recipient.clone()).or_default();
        v.mail += r.count;
        if r.outcome.starts_with("encrypted-") {
            v.encrypted += r.count;
        }
        v.last_seen = v.last_seen.max(r.last_seen);
        if !r.rule.is_empty() {
            v.rules.insert(r.rule.clone());
        }
    }
    out
}

/// One counterparty's line.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub address: String,
    pub domain: String,
    pub rule_today: Option<String>,
    pub rule: Option<String>,
    pub today: String,
    pub at_date: String,
    pub reason: Option<String>,
    pub readiness: String,
    pub changes: bool,
    pub turns_plain: bool,
    /// Received encrypted mail in the window and would be bounced, held
    /// or sent plain at the date.
    pub at_risk: bool,
    pub mail: u64,
    pub encrypted_mail: u64,
    pub last_seen: Option<String>,
}

impl Row {
    fn new(a: &Assessment, v: &Volume) -> Self {
        Row {
            address: a.address.clone(),
            domain: domain_of(&a.address).unwrap_or_default(),
            rule_today: a.today.rule.clone(),
            rule: a.rule.clone(),
            today: a.today.outcome.token().to_string(),
            at_date: a.at_date.outcome.token().to_string(),
            reason: a.reason.clone(),
            readiness: a.readiness.token().to_string(),
            changes: a.changes(),
            turns_plain: a.turns_plain,
            at_risk: a.at_risk(v.encrypted > 0),
            mail: v.mail,
            encrypted_mail: v.encrypted,
            last_seen: (v.last_seen > 0).then(|| crate::journal::day(v.last_seen)),
        }
    }
}

/// Counterparties, changes, those at risk and mail, per rule or domain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub name: String,
    pub counterparties: u64,
    pub changes: u64,
    pub at_risk: u64,
    pub turns_plain: u64,
    pub mail: u64,
    pub encrypted_mail: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub now: String,
    pub at: String,
    pub since: String,
    pub configuration: String,
    pub counterparties: Vec<Row>,
    pub rules: Vec<Summary>,
    pub domains: Vec<Summary>,
    pub at_risk: u64,
}

fn summarise(rows: &[Row], key: impl Fn(&Row) -> String) -> Vec<Summary> {
    let mut by: BTreeMap<String, Summary> = BTreeMap::new();
    for r in rows {
        let name = key(r);
        let s = by.entry(name.clone()).or_insert_with(|| Summary {
            name,
            ..Summary::default()
        });
        s.counterparties += 1;
        s.changes += u64::from(r.changes);
        s.at_risk += u64::from(r.at_risk);
        s.turns_plain += u64::from(r.turns_plain);
        s.mail += r.mail;
        s.encrypted_mail += r.encrypted_mail;
    }
    by.into_values().collect()
}

/// The outside addresses the directory holds certificates for (as they
/// are looked up: a harvested certificate only under addresses it is
/// bound to).
pub fn directory_addresses(settings: &Settings, certs: &Directory) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in certs.all() {
        for email in &e.info.emails {
            let a = crate::mail::address::key(email);
            if !is_internal(settings, &a) && !certs.lookup(&a).is_empty() {
                out.insert(a);
            }
        }
    }
    out
}

/// Builds the report: every address of `journal` (the window's volumes)
/// and of the directory, assessed with `snapshot` at `now` and `at`.
pub async fn build(
    snapshot: &Snapshot,
    live: &Live,
    journal: &BTreeMap<String, Volume>,
    rule: Option<&str>,
    now: i64,
    at: i64,
) -> Vec<Row> {
    let settings = &snapshot.settings;
    let mut addresses = directory_addresses(settings, &snapshot.certs);
    addresses.extend(
        journal
            .keys()
            .filter(|a| !is_internal(settings, a))
            .cloned(),
    );
    let none = Volume::default();
    let mut rows = Vec::new();
    for address in addresses {
        let a = readiness::assess(snapshot, live, &address, now, at).await;
        let v = journal.get(&address).unwrap_or(&none);
        if let Some(name) = rule {
            let named = a.today.rule.as_deref() == Some(name)
                || a.rule.as_deref() == Some(name)
                || v.rules.contains(name);
            if !named {
                continue;
            }
        }
        rows.push(Row::new(&a, v));
    }
    // What needs attention first.
    rows.sort_by(|x, y| {
        (y.at_risk, y.turns_plain, y.changes, &x.domain, &x.address).cmp(&(
            x.at_risk,
            x.turns_plain,
            x.changes,
            &y.domain,
            &y.address,
        ))
    });
    rows
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Splits `key=value` arguments.
pub fn overrides(set: &[String]) -> Result<Vec<(String, String)>, CutoffError> {
    set.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(CutoffError::Usage(format!(
                "--set {s:?}: write key=value, e.g. policy.oces2_cutoff=2027-03-01"
            ))),
        })
        .collect()
}

/// Runs the report: the text, and whether nothing is at risk.
pub fn run(req: &Request) -> Result<(String, bool), CutoffError> {
    let now = unix_now();
    let at = Instant::parse_when(&req.at)
        .map_err(CutoffError::When)?
        .unix;
    let since: Duration = config::parse_duration(&req.since).map_err(CutoffError::Since)?;
    let since_unix = now - since.as_secs() as i64;
    // The live configuration names the journal; the proposed one (or the
    // live one with --set) decides.
    let live_settings = config::load(&req.config)?;
    let target = Target::of(&live_settings).ok_or(JournalError::Disabled)?;
    let sets = overrides(&req.set)?;
    let decider = req.proposed.as_deref().unwrap_or(&req.config);
    let settings = if sets.is_empty() {
        config::load(decider)?
    } else {
        config::load::load_with_overrides(decider, &sets)?
    };
    let snapshot = Snapshot::from_settings(settings)?;
    let configuration = describe(&req.config, req.proposed.as_deref(), &req.set);
    let runtime = tokio::runtime::Runtime::new().map_err(CutoffError::Runtime)?;
    let report = runtime.block_on(async {
        let store = Store::open_for_reading(&target).await?;
        let volumes = volumes(&store.outbound(since_unix).await?);
        let live = Live::for_command(snapshot);
        let snapshot = live.current();
        let rows = build(&snapshot, &live, &volumes, req.rule.as_deref(), now, at).await;
        Ok::<_, CutoffError>(Report {
            now: Instant { unix: now }.to_string(),
            at: Instant { unix: at }.to_string(),
            since: Instant { unix: since_unix }.to_string(),
            configuration,
            rules: summarise(&rows, |r| r.rule.clone().unwrap_or_else(|| "-".into())),
            domains: summarise(&rows, |r| r.domain.clone()),
            at_risk: rows.iter().filter(|r| r.at_risk).count() as u64,
            counterparties: rows,
        })
    })?;
    let ok = report.at_risk == 0;
    let text = match req.format {
        Format::Table => render::table(&report, &req.at),
        Format::Csv => render::csv_text(&report)?,
        Format::Json => serde_json::to_string_pretty(&report)
            .map(|mut t| {
                t.push('\n');
                t
            })
            .map_err(|e| CutoffError::Usage(format!("cannot write JSON: {e}")))?,
    };
    Ok((text, ok))
}

fn describe(config: &Path, proposed: Option<&Path>, set: &[String]) -> String {
    let mut out = match proposed {
        Some(p) => format!("proposed {} (journal of {})", p.display(), config.display()),
        None => config.display().to_string(),
    };
    for s in set {
        let _ = write!(out, " --set {s}");
    }
    out
}

#[cfg(test)]
mod tests;

//! What migration found and did, per mailbox and folder: messages and
//! octets, encrypted mail per key (subject, generation, expiry), what is
//! (or would be) re-keyed, what is left and why, and the extra space the
//! new copies take while the originals are kept or moved. Written as a
//! table for people or as JSON lines (`--format json`): one `message`
//! line per message that is or would be re-keyed, or that failed or was
//! left unopened, one `folder` line per folder.

use std::collections::BTreeMap;

use serde::Serialize;

use super::plan::{Decision, KeyFacts};
use super::rekey::rfc3339;

/// What was done with one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Done {
    /// Left alone (see the decision).
    Left,
    /// `--dry-run`: it would be re-keyed.
    WouldMigrate,
    /// A new copy was written and checked; the original kept, moved or
    /// removed as asked.
    Migrated,
    /// An earlier run's copy was found and checked; the original was then
    /// dealt with.
    CopyFound,
    /// Something failed: the original is untouched.
    Failed(String),
}

/// One message in the report.
#[derive(Debug, Clone, Serialize)]
pub struct MessageLine {
    pub mailbox: String,
    pub folder: String,
    pub id: String,
    pub subject: String,
    pub size: u64,
    pub outcome: String,
    pub reason: Option<String>,
    pub key: Option<String>,
    pub generation: Option<String>,
    pub lost_signatures: usize,
    pub done: Done,
}

impl MessageLine {
    pub fn new(
        mailbox: &str,
        folder: &str,
        id: &str,
        subject: &str,
        size: u64,
        decision: &Decision,
        done: Done,
    ) -> Self {
        let (outcome, reason, key, generation, lost) = match decision {
            Decision::Migrate {
                from,
                lost_signatures,
            } => (
                "migrate".to_string(),
                (*lost_signatures > 0).then(|| {
                    format!(
                        "{lost_signatures} signature(s) over the old ciphertext cannot survive re-keying"
                    )
                }),
                Some(from.subject_cn.clone()),
                Some(from.generation.to_string()),
                *lost_signatures,
            ),
            Decision::Leave(l) => (l.label().to_string(), Some(l.reason()), None, None, 0),
        };
        Self {
            mailbox: mailbox.to_string(),
            folder: folder.to_string(),
            id: id.to_string(),
            subject: subject.to_string(),
            size,
            outcome,
            reason,
            key,
            generation,
            lost_signatures: lost,
            done,
        }
    }
}

/// One folder's counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FolderReport {
    pub mailbox: String,
    pub folder: String,
    pub messages: u64,
    pub bytes: u64,
    /// `subject (generation, expires …)` → messages.
    pub encrypted_per_key: BTreeMap<String, u64>,
    /// Outcome label (`migrate`, `plain`, `current`, `unopenable`, …) →
    /// messages.
    pub outcomes: BTreeMap<String, u64>,
    /// Why messages were left unopened → messages.
    pub unopenable: BTreeMap<String, u64>,
    pub to_migrate: u64,
    pub to_migrate_bytes: u64,
    /// The new copies' space while originals are kept or moved.
    pub extra_bytes: u64,
    pub lost_signatures: u64,
    pub migrated: u64,
    pub copies_found: u64,
    pub failed: u64,
}

impl FolderReport {
    pub fn new(mailbox: &str, folder: &str) -> Self {
        Self {
            mailbox: mailbox.to_string(),
            folder: folder.to_string(),
            ..Self::default()
        }
    }

    /// Counts one message; `copy_size` is the new copy's size when one is
    /// (or would be) made, `keeps_originals` whether originals stay.
    pub fn add(
        &mut self,
        line: &MessageLine,
        key: Option<&KeyFacts>,
        copy_size: u64,
        keeps_originals: bool,
    ) {
        self.messages += 1;
        self.bytes += line.size;
        *self.outcomes.entry(line.outcome.clone()).or_default() += 1;
        if let Some(k) = key {
            let name = format!(
                "{} ({}, expires {})",
                k.subject_cn,
                k.generation,
                rfc3339(k.not_after).get(..10).unwrap_or_default()
            );
            *self.encrypted_per_key.entry(name).or_default() += 1;
        }
        if line.outcome == "unopenable" {
            let r = line.reason.clone().unwrap_or_default();
            *self.unopenable.entry(r).or_default() += 1;
        }
        if line.outcome == "migrate" {
            self.to_migrate += 1;
            self.to_migrate_bytes += line.size;
            if keeps_originals {
                self.extra_bytes += copy_size;
            }
            self.lost_signatures += line.lost_signatures as u64;
        }
        match &line.done {
            Done::Migrated => self.migrated += 1,
            Done::CopyFound => self.copies_found += 1,
            Done::Failed(_) => self.failed += 1,
            Done::Left | Done::WouldMigrate => {}
        }
    }
}

/// The report as a table.
pub fn table(folders: &[FolderReport], dry_run: bool) -> String {
    let mut out = String::new();
    out.push_str(if dry_run {
        "DRY RUN: nothing was changed\n"
    } else {
        ""
    });
    for f in folders {
        out.push_str(&format!(
            "\nmailbox {}  folder {}\n  messages      {} ({} octets)\n",
            f.mailbox, f.folder, f.messages, f.bytes
        ));
        for (k, n) in &f.encrypted_per_key {
            out.push_str(&format!("  key           {n:>6}  {k}\n"));
        }
        for (o, n) in &f.outcomes {
            out.push_str(&format!("  {o:<13} {n:>6}\n"));
        }
        for (r, n) in &f.unopenable {
            out.push_str(&format!("  unopenable    {n:>6}  {r}\n"));
        }
        out.push_str(&format!(
            "  to migrate    {:>6}  ({} octets; extra space for new copies: {} octets)\n",
            f.to_migrate, f.to_migrate_bytes, f.extra_bytes
        ));
        if f.lost_signatures > 0 {
            out.push_str(&format!(
                "  signatures over the old ciphertext that cannot survive re-keying: {}\n",
                f.lost_signatures
            ));
        }
        if !dry_run {
            out.push_str(&format!(
                "  migrated      {:>6}\n  copy found    {:>6}\n  failed        {:>6}\n",
                f.migrated, f.copies_found, f.failed
            ));
        }
    }
    out
}

/// A message line as JSON.
pub fn message_json(line: &MessageLine) -> String {
    let mut v = serde_json::to_value(line).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), "message".into());
    }
    v.to_string()
}

/// The folder lines as JSON.
pub fn folders_json(folders: &[FolderReport], dry_run: bool) -> String {
    let mut out = String::new();
    for f in folders {
        let mut v = serde_json::to_value(f).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), "folder".into());
            o.insert("dry_run".into(), dry_run.into());
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::plan::Leave;
    use crate::pki::oces::Generation;

    #[test]
    fn counts_add_up() {
        let key = KeyFacts {
            subject_cn: "Org OCES2".into(),
            generation: Generation::Oces2,
            not_after: 1_700_000_000,
            fingerprint: "x".into(),
        };
        let mut f = FolderReport::new("a@x", "INBOX");
        let m = Decision::Migrate {
            from: key.clone(),
            lost_signatures: 1,
        };
        f.add(
            &MessageLine::new("a@x", "INBOX", "1", "s", 100, &m, Done::Migrated),
            Some(&key),
            120,
            true,
        );
        let l = Decision::Leave(Leave::Unopenable("no key".into()));
        f.add(
            &MessageLine::new("a@x", "INBOX", "2", "s", 50, &l, Done::Left),
            None,
            0,
            true,
        );
        assert_eq!(
            (f.messages, f.bytes, f.to_migrate, f.extra_bytes),
            (2, 150, 1, 120)
        );
        assert_eq!(f.unopenable.get("no key"), Some(&1));
        assert_eq!(
            f.encrypted_per_key
                .get("Org OCES2 (OCES2, expires 2023-11-14)"),
            Some(&1)
        );
        let t = table(&[f.clone()], false);
        assert!(t.contains("migrated           1"), "{t}");
        assert!(t.contains("cannot survive re-keying: 1"), "{t}");
        let j = folders_json(&[f], true);
        assert!(
            j.contains("\"type\":\"folder\"") && j.contains("\"to_migrate\":1"),
            "{j}"
        );
    }
}

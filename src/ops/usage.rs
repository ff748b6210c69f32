//! `smime-gateway keys usage`: per key of the organisation (OCES2 first),
//! the senders whose mail arrived encrypted to it in a window, how many
//! messages and when last, and whether they used an OCES3 key too; what
//! an operator needs before retiring an OCES2 key. From the journal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::journal::{day, InboundUse};
use crate::pki::oces::Generation;
use crate::pki::Keyring;

/// One key: its name, generation, whether it is configured, its senders.
struct Key<'a> {
    subject: String,
    generation: String,
    fingerprint: String,
    not_after: Option<i64>,
    configured: bool,
    senders: Vec<&'a InboundUse>,
}

/// The table for the window that started at `since` (Unix seconds).
pub fn table(keys: &Keyring, rows: &[InboundUse], since: i64) -> String {
    let mut by_key: BTreeMap<String, Key<'_>> = BTreeMap::new();
    for id in &keys.identities {
        by_key.insert(
            id.fingerprint(),
            Key {
                subject: id.info.subject_cn.clone(),
                generation: id.info.generation.to_string(),
                fingerprint: id.fingerprint(),
                not_after: Some(id.info.not_after),
                configured: true,
                senders: Vec::new(),
            },
        );
    }
    for r in rows {
        by_key
            .entry(r.identity.clone())
            .or_insert_with(|| Key {
                subject: r.subject.clone(),
                generation: r.generation.clone(),
                fingerprint: r.identity.clone(),
                not_after: None,
                configured: false,
                senders: Vec::new(),
            })
            .senders
            .push(r);
    }
    let oces3 = Generation::Oces3.to_string();
    let uses_oces3 = |sender: &str| {
        rows.iter()
            .any(|r| r.sender == sender && r.generation == oces3)
    };
    let mut list: Vec<Key<'_>> = by_key.into_values().collect();
    let oces2 = Generation::Oces2.to_string();
    list.sort_by(|a, b| {
        (b.generation == oces2, &a.subject, &a.fingerprint).cmp(&(
            a.generation == oces2,
            &b.subject,
            &b.fingerprint,
        ))
    });

    let mut out = String::new();
    let _ = writeln!(
        out,
        "keys usage: mail that arrived encrypted since {}\n",
        day(since)
    );
    let mut still: Vec<&str> = Vec::new();
    for k in &list {
        let fp: String = k.fingerprint.chars().take(23).collect();
        let _ = writeln!(
            out,
            "\"{}\" {} (SHA-256 {fp}…{}{})",
            k.subject,
            k.generation,
            k.not_after
                .map(|t| format!(", not after {}", day(t)))
                .unwrap_or_default(),
            if k.configured {
                ""
            } else {
                "; no longer configured"
            }
        );
        if k.senders.is_empty() {
            let _ = writeln!(out, "  no mail encrypted to it in the window\n");
            continue;
        }
        let width = k
            .senders
            .iter()
            .map(|s| s.sender.chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>8}  {:<10}  ALSO OCES3",
            "SENDER", "MESSAGES", "LAST SEEN"
        );
        for s in &k.senders {
            let also = if k.generation == oces3 {
                "-"
            } else if uses_oces3(&s.sender) {
                "yes"
            } else {
                "no"
            };
            let _ = writeln!(
                out,
                "  {:<width$}  {:>8}  {:<10}  {also}",
                s.sender,
                s.count,
                day(s.last_seen)
            );
            if k.generation == oces2 && !still.contains(&s.sender.as_str()) {
                still.push(&s.sender);
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "{} sender{} still encrypt{} to an OCES2 key",
        still.len(),
        if still.len() == 1 { "" } else { "s" },
        if still.len() == 1 { "s" } else { "" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(sender: &str, identity: &str, generation: &str, count: u64) -> InboundUse {
        InboundUse {
            sender: sender.into(),
            identity: identity.into(),
            subject: format!("Key {identity}"),
            generation: generation.into(),
            count,
            last_seen: 1_798_761_600,
        }
    }

    #[test]
    fn oces2_keys_come_first_with_their_senders() {
        let rows = [
            used("post@domstol.dk", "FP3", "OCES3", 1),
            used("post@domstol.dk", "FP2", "OCES2", 2),
            used("old@firm.dk", "FP2", "OCES2", 5),
        ];
        let text = table(&Keyring::default(), &rows, 0);
        let two = text.find("\"Key FP2\" OCES2").expect(&text);
        let three = text.find("\"Key FP3\" OCES3").expect(&text);
        assert!(two < three, "{text}");
        assert!(text.contains("no longer configured"));
        let court = text
            .lines()
            .find(|l| l.contains("post@domstol.dk") && l.contains(" 2 "))
            .expect(&text);
        assert!(court.ends_with("yes"), "{court}");
        let old = text
            .lines()
            .find(|l| l.contains("old@firm.dk"))
            .expect(&text);
        assert!(old.ends_with("no"), "{old}");
        assert!(
            text.contains("2 senders still encrypt to an OCES2 key"),
            "{text}"
        );
    }
}

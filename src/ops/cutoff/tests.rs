//! Unit tests of the cutoff report: volumes, --set arguments, columns,
//! CSV cells a spreadsheet does not run.

use super::render::{columns, csv_text};
use super::*;

fn row(recipient: &str, rule: &str, outcome: &str, count: u64, last: i64) -> OutboundUse {
    OutboundUse {
        recipient: recipient.into(),
        rule: rule.into(),
        outcome: outcome.into(),
        generation: String::new(),
        certificates: String::new(),
        day: "2026-11-29".into(),
        count,
        last_seen: last,
    }
}

#[test]
fn volumes_sum_per_recipient_and_count_encrypted_mail() {
    let v = volumes(&[
        row("a@x.dk", "default", "encrypted-oces2", 3, 10),
        row("a@x.dk", "default", "hold", 1, 30),
        row("b@y.dk", "", "unchanged", 2, 5),
    ]);
    let a = &v["a@x.dk"];
    assert_eq!((a.mail, a.encrypted, a.last_seen), (4, 3, 30));
    assert!(a.rules.contains("default"));
    let b = &v["b@y.dk"];
    assert_eq!((b.mail, b.encrypted), (2, 0));
    assert!(b.rules.is_empty());
}

#[test]
fn set_arguments_are_key_value() {
    let o = overrides(&["policy.oces2_cutoff=2027-03-01".into(), "a.b=x=y".into()]).unwrap();
    assert_eq!(o[0], ("policy.oces2_cutoff".into(), "2027-03-01".into()));
    assert_eq!(o[1].1, "x=y");
    assert!(overrides(&["nothing".into()]).is_err());
    assert!(overrides(&["=x".into()]).is_err());
}

#[test]
fn columns_line_up() {
    let text = columns(&[
        vec!["A".into(), "BB".into(), "x".into()],
        vec!["AAA".into(), "B".into(), "y".into()],
    ]);
    assert_eq!(text, "A    BB  x\nAAA  B   y\n");
}

#[test]
fn csv_cells_that_start_like_a_formula_are_text() {
    let row = |address: &str| Row {
        address: address.into(),
        domain: "evil.example".into(),
        rule_today: None,
        rule: Some("-default".into()),
        today: "plain".into(),
        at_date: "plain".into(),
        reason: Some("@reason".into()),
        readiness: "none".into(),
        changes: false,
        turns_plain: false,
        at_risk: false,
        mail: 1,
        encrypted_mail: 0,
        last_seen: None,
    };
    let report = Report {
        now: String::new(),
        at: String::new(),
        since: String::new(),
        configuration: String::new(),
        counterparties: vec![
            row("=cmd|'/C calc'!A0@evil.example"),
            row("+sum(1)@evil.example"),
            row("plain@evil.example"),
        ],
        rules: Vec::new(),
        domains: Vec::new(),
        at_risk: 0,
    };
    let text = csv_text(&report).unwrap();
    let cells: Vec<Vec<String>> = csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    assert_eq!(cells[0][0], "'=cmd|'/C calc'!A0@evil.example");
    assert_eq!(cells[1][0], "'+sum(1)@evil.example");
    assert_eq!(cells[2][0], "plain@evil.example", "control: left as it is");
    assert_eq!(cells[0][3], "'-default");
    assert_eq!(cells[0][6], "'@reason");
}

//! Unit tests of the cutoff report: volumes, --set arguments, columns.

use super::render::columns;
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

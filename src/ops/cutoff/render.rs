//! The cutoff report for people (aligned columns, flags, the summaries)
//! and for spreadsheets (CSV). JSON is the report's own serialisation.

use std::fmt::Write as _;

use super::{CutoffError, Report};

pub(super) fn csv_text(report: &Report) -> Result<String, CutoffError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| CutoffError::Usage(format!("cannot write CSV: {e}"));
    w.write_record([
        "address",
        "domain",
        "rule_today",
        "rule",
        "today",
        "at_date",
        "reason",
        "readiness",
        "changes",
        "turns_plain",
        "at_risk",
        "mail",
        "encrypted_mail",
        "last_seen",
    ])
    .map_err(fail)?;
    for r in &report.counterparties {
        w.write_record([
            inert_cell(&r.address).as_ref(),
            &inert_cell(&r.domain),
            &inert_cell(r.rule_today.as_deref().unwrap_or("")),
            &inert_cell(r.rule.as_deref().unwrap_or("")),
            &inert_cell(&r.today),
            &inert_cell(&r.at_date),
            &inert_cell(r.reason.as_deref().unwrap_or("")),
            &r.readiness,
            if r.changes { "yes" } else { "no" },
            if r.turns_plain { "yes" } else { "no" },
            if r.at_risk { "yes" } else { "no" },
            &r.mail.to_string(),
            &r.encrypted_mail.to_string(),
            r.last_seen.as_deref().unwrap_or(""),
        ])
        .map_err(fail)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| CutoffError::Usage(format!("cannot write CSV: {e}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A cell a spreadsheet shows as text: one that starts like a formula
/// (`=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`.
/// Addresses come from anyone's envelope (`=cmd|'/C calc'!A0@evil.example`).
fn inert_cell(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// Left-aligned columns as wide as their widest cell.
pub(super) fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(super) fn table(report: &Report, at_text: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cutoff report: at {at_text} ({}), now {}, mail since {}",
        report.at, report.now, report.since
    );
    let _ = writeln!(out, "configuration: {}", report.configuration);
    let _ = writeln!(out);
    let at_head = format!("AT {at_text}").to_uppercase();
    let mut rows = vec![[
        "",
        "ADDRESS",
        "RULE",
        "TODAY",
        &at_head,
        "READINESS",
        "MAIL",
        "ENCRYPTED",
        "LAST SEEN",
        "REASON",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for r in &report.counterparties {
        let flag = match (r.at_risk, r.turns_plain, r.changes) {
            (_, true, _) => "PLAIN",
            (true, _, _) => "!",
            (_, _, true) => "~",
            _ => "",
        };
        rows.push(vec![
            flag.to_string(),
            r.address.clone(),
            r.rule.clone().unwrap_or_else(|| "-".into()),
            r.today.clone(),
            r.at_date.clone(),
            r.readiness.clone(),
            r.mail.to_string(),
            r.encrypted_mail.to_string(),
            r.last_seen.clone().unwrap_or_else(|| "-".into()),
            r.reason.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&columns(&rows));
    let _ = writeln!(
        out,
        "\n!: received encrypted mail in the window and would be bounced, held or sent plain;\n\
         PLAIN: encrypted today, plain at the date; ~: changes at the date"
    );
    for (title, list) in [("rule", &report.rules), ("domain", &report.domains)] {
        let _ = writeln!(out, "\nper {title}:");
        let mut rows = vec![[
            title.to_uppercase().as_str(),
            "COUNTERPARTIES",
            "CHANGE",
            "AT RISK",
            "TO PLAIN",
            "MAIL",
            "ENCRYPTED",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
        for s in list.iter() {
            rows.push(vec![
                s.name.clone(),
                s.counterparties.to_string(),
                s.changes.to_string(),
                s.at_risk.to_string(),
                s.turns_plain.to_string(),
                s.mail.to_string(),
                s.encrypted_mail.to_string(),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    let changes = report.counterparties.iter().filter(|r| r.changes).count();
    let _ = writeln!(
        out,
        "\n{} counterpart{}, {changes} change at {at_text}, {} at risk",
        report.counterparties.len(),
        if report.counterparties.len() == 1 {
            "y"
        } else {
            "ies"
        },
        report.at_risk
    );
    out
}

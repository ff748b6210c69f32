//! Reading delivery status notifications (RFC 3464) that come back to
//! the gateway: the `message/delivery-status` part of a
//! `multipart/report`, its per-message fields and one group of fields per
//! recipient. The MIME is mail-parser's; only the field groups are read
//! here. Nothing of the returned message itself is kept.

use mail_parser::MimeHeaders;

/// Most recipient groups read from one report.
const MAX_RECIPIENTS: usize = 100;
/// Longest field value kept (the rest is cut).
const MAX_VALUE: usize = 500;

/// What a report says about one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientStatus {
    pub final_recipient: String,
    pub original_recipient: Option<String>,
    pub action: String,
    pub status: String,
    pub remote_mta: Option<String>,
    pub diagnostic: Option<String>,
}

/// A delivery status notification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub reporting_mta: Option<String>,
    pub recipients: Vec<RecipientStatus>,
}

/// The report in `raw`, or `None` when it holds no delivery status (or is
/// nested too deep to be read: [`super::nesting`]).
pub fn parse(raw: &[u8]) -> Option<Report> {
    let msg = super::nesting::parse(raw).ok()??;
    let part = msg.parts.iter().find(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("delivery-status")
                        || s.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    })?;
    Some(parse_status(part.contents()))
}

/// The field groups of a `message/delivery-status` body.
pub fn parse_status(body: &[u8]) -> Report {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut groups = text.split("\n\n").map(fields).filter(|g| !g.is_empty());
    let mut report = Report::default();
    let Some(first) = groups.next() else {
        return report;
    };
    // The per-message group comes first; a report without one starts
    // with a recipient group.
    let recipient_groups: Vec<Vec<(String, String)>> = if get(&first, "final-recipient").is_some() {
        std::iter::once(first).chain(groups).collect()
    } else {
        report.reporting_mta = get(&first, "reporting-mta").map(typed);
        groups.collect()
    };
    for g in recipient_groups.into_iter().take(MAX_RECIPIENTS) {
        let Some(final_recipient) = get(&g, "final-recipient").map(typed) else {
            continue;
        };
        report.recipients.push(RecipientStatus {
            final_recipient,
            original_recipient: get(&g, "original-recipient").map(typed),
            action: get(&g, "action").unwrap_or_default().to_ascii_lowercase(),
            status: get(&g, "status").unwrap_or_default(),
            remote_mta: get(&g, "remote-mta").map(typed),
            diagnostic: get(&g, "diagnostic-code").map(typed),
        });
    }
    report
}

/// Unfolded `name: value` fields of one group, names in lower case.
fn fields(group: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in group.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

fn get(group: &[(String, String)], name: &str) -> Option<String> {
    group.iter().find(|(n, _)| n == name).map(|(_, v)| {
        let mut v = v.clone();
        if v.len() > MAX_VALUE {
            let mut cut = MAX_VALUE;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v.truncate(cut);
        }
        v
    })
}

/// `rfc822; bob@example.dk` → `bob@example.dk` (the type is dropped).
fn typed(value: String) -> String {
    match value.split_once(';') {
        Some((_, rest)) => rest.trim().to_string(),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@mx.example-law.dk\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"R\"\r\n\r\n\
--R\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
--R\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx.example-law.dk\r\n\
X-Postfix-Queue-ID: 4AB\r\n\r\n\
Final-Recipient: rfc822; gone@example-law.dk\r\n\
Original-Recipient: rfc822;gone@example-law.dk\r\n\
Action: failed\r\n\
Status: 5.2.2\r\n\
Diagnostic-Code: x-unix; mailbox\r\n\
\x20is full\r\n\r\n\
--R\r\nContent-Type: message/rfc822\r\n\r\nSubject: secret\r\n\r\nthe plaintext\r\n\
--R--\r\n";

    #[test]
    fn reads_the_fields_of_a_report() {
        let r = parse(DSN.as_bytes()).unwrap();
        assert_eq!(r.reporting_mta.as_deref(), Some("mx.example-law.dk"));
        assert_eq!(
            r.recipients,
            vec![RecipientStatus {
                final_recipient: "gone@example-law.dk".into(),
                original_recipient: Some("gone@example-law.dk".into()),
                action: "failed".into(),
                status: "5.2.2".into(),
                remote_mta: None,
                diagnostic: Some("mailbox is full".into()),
            }]
        );
    }

    #[test]
    fn other_mail_is_no_report() {
        assert_eq!(parse(b"Subject: Out of office\r\n\r\nI am away\r\n"), None);
    }

    #[test]
    fn a_report_nested_too_deep_is_not_read() {
        let mut deep = b"Subject: x\r\n".to_vec();
        deep.extend(
            b"Content-Type: message/rfc822\r\n\r\n".repeat(super::super::nesting::MAX_DEPTH + 1),
        );
        deep.extend_from_slice(DSN.as_bytes());
        assert_eq!(parse(&deep), None);
        // Positive control: the report itself is read.
        assert!(parse(DSN.as_bytes()).is_some());
    }
}

//! Delivery status notifications (RFC 3464) from the null sender to a
//! message's envelope sender: the bounce, naming each recipient that failed
//! and the reply that made it fail; and the notice that a message went out
//! unsigned because it could not be signed.

use std::time::{SystemTime, UNIX_EPOCH};

use super::envelope::Envelope;
use super::time;

/// One recipient that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub rcpt: String,
    /// What went wrong: the remote reply, or why the gateway gave up.
    pub reply: String,
    /// The next hop that gave the reply, if one did.
    pub remote_mta: Option<String>,
    /// The message outlived `queue.max_lifetime` (the last reply was
    /// temporary).
    pub expired: bool,
}

impl Failure {
    /// The RFC 3463 status: the enhanced code in the reply when present,
    /// otherwise derived from the basic code.
    pub fn status(&self) -> String {
        if self.expired {
            return "4.4.7".into();
        }
        let enhanced = self.reply.split_whitespace().take(3).find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        });
        match enhanced {
            Some(code) => code.to_string(),
            None if self.reply.starts_with('4') => "4.0.0".into(),
            None => "5.0.0".into(),
        }
    }
}

/// RFC 5322 date, e.g. `Sun, 29 Nov 2026 15:17:12 +0000`. Never panics:
/// a time before 1970 or after 9999 is shown as invalid.
pub fn rfc5322_date(t: SystemTime) -> String {
    time::rfc5322_at(t)
}

/// Builds the bounce for `failures` of the message (`envelope`, `body`).
/// Returns the bounce's own envelope and bytes, ready to be queued.
pub fn build(
    hostname: &str,
    queue_id: &str,
    envelope: &Envelope,
    body: &[u8],
    failures: &[Failure],
    now: SystemTime,
) -> (Envelope, Vec<u8>) {
    let arrival = time::rfc5322(envelope.received);
    let mut human = String::new();
    human.push_str(&format!(
        "This is the mail gateway at {hostname}.\r\n\r\n\
         Your message (queue id {queue_id}) could not be delivered to one or\r\n\
         more recipients. It has been returned below; each recipient is\r\n\
         listed with the reason.\r\n\r\n"
    ));
    for f in failures {
        let why = if f.expired {
            format!(
                "gave up after the maximum queue lifetime; last error: {}",
                one_line(&f.reply)
            )
        } else {
            one_line(&f.reply)
        };
        match &f.remote_mta {
            Some(hop) => human.push_str(&format!("<{}>: host {hop} said: {why}\r\n", f.rcpt)),
            None => human.push_str(&format!("<{}>: {why}\r\n", f.rcpt)),
        }
    }

    let mut status = format!(
        "Reporting-MTA: dns; {hostname}\r\nX-Queue-ID: {queue_id}\r\nArrival-Date: {arrival}\r\n"
    );
    for f in failures {
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            f.rcpt,
            f.status()
        ));
        if let Some(hop) = &f.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {hop}\r\n"));
        }
        status.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&f.reply)
        ));
    }

    let report = Report {
        hostname,
        queue_id,
        subject: "Undelivered Mail Returned to Sender",
        human: &human,
        status: &status,
        headers_title: "Undelivered message headers",
    };
    report.assemble(envelope, body, now)
}

/// A multipart/report (RFC 3464) from the null sender to a message's
/// envelope sender: a text part, the delivery status, the message's
/// header section.
struct Report<'a> {
    hostname: &'a str,
    queue_id: &'a str,
    subject: &'a str,
    human: &'a str,
    status: &'a str,
    headers_title: &'a str,
}

impl Report<'_> {
    fn assemble(&self, envelope: &Envelope, body: &[u8], now: SystemTime) -> (Envelope, Vec<u8>) {
        let Report {
            hostname,
            queue_id,
            subject,
            human,
            status,
            headers_title,
        } = self;
        let date = rfc5322_date(now);
        let headers = header_block(body);
        let boundary = boundary_for(headers);
        let stamp = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let mut out = Vec::new();
        out.extend_from_slice(
            format!(
                "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
                 To: <{to}>\r\n\
                 Subject: {subject}\r\n\
                 Date: {date}\r\n\
                 Message-ID: <{stamp}.{queue_id}.dsn@{hostname}>\r\n\
                 Auto-Submitted: auto-replied\r\n\
                 MIME-Version: 1.0\r\n\
                 Content-Type: multipart/report; report-type=delivery-status;\r\n\
                 \tboundary=\"{boundary}\"\r\n\
                 \r\n\
                 This is a MIME-encapsulated message.\r\n\
                 \r\n\
                 --{boundary}\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\
                 Content-Description: Notification\r\n\
                 \r\n\
                 {human}\r\n\
                 --{boundary}\r\n\
                 Content-Type: message/delivery-status\r\n\
                 Content-Description: Delivery report\r\n\
                 \r\n\
                 {status}\r\n\
                 --{boundary}\r\n\
                 Content-Type: text/rfc822-headers\r\n\
                 Content-Description: {headers_title}\r\n\
                 \r\n",
                to = crate::mail::address::smtp_path(&envelope.mail_from),
            )
            .as_bytes(),
        );
        out.extend_from_slice(headers);
        if !headers.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

        let report = Envelope {
            mail_from: String::new(),
            rcpts: vec![envelope.mail_from.clone()],
            received: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            client: "127.0.0.1".into(),
            helo: hostname.to_string(),
            eight_bit: envelope.eight_bit,
            smtputf8: envelope.smtputf8,
            released: false,
            submission: false,
        };
        (report, out)
    }
}

/// The notice to an internal sender that their message went out without
/// the organisation's signature (a rule's `sign = true` when the message
/// may not be signed): each recipient with the reason, as a DSN whose
/// action is "relayed".
pub fn build_unsigned(
    hostname: &str,
    queue_id: &str,
    envelope: &Envelope,
    body: &[u8],
    unsigned: &[(String, String)],
    now: SystemTime,
) -> (Envelope, Vec<u8>) {
    let arrival = time::rfc5322(envelope.received);
    let mut human = format!(
        "This is the mail gateway at {hostname}.\r\n\r\n\
         Your message (queue id {queue_id}) was sent WITHOUT the organisation's\r\n\
         signature to the recipients below, because it may not be signed:\r\n\r\n"
    );
    let mut status = format!(
        "Reporting-MTA: dns; {hostname}\r\nX-Queue-ID: {queue_id}\r\nArrival-Date: {arrival}\r\n"
    );
    for (rcpt, why) in unsigned {
        human.push_str(&format!("<{rcpt}>: sent unsigned: {}\r\n", one_line(why)));
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: relayed\r\nStatus: 2.0.0\r\n\
             Diagnostic-Code: x-smime-gateway; sent unsigned: {}\r\n",
            one_line(why)
        ));
    }
    human.push_str(
        "\r\nSend it from your own address (header From equal to your login) on the\r\n\
         submission service, or ask for send_as on a shared mailbox, to have it signed.\r\n",
    );
    let report = Report {
        hostname,
        queue_id,
        subject: "Message sent without signature",
        human: &human,
        status: &status,
        headers_title: "Headers of the message sent unsigned",
    };
    report.assemble(envelope, body, now)
}

/// The most of a message's header section a report returns (Postfix's
/// `bounce_size_limit`): a report to a forged sender must not carry a
/// whole message to a third party.
const MAX_RETURNED: usize = 50_000;

/// The header section of a message as a report returns it: its fields
/// (each with its continuation lines) up to the first line that is not
/// one, at most [`MAX_RETURNED`] bytes, whole fields only. A message with
/// no empty line is not returned whole.
fn header_block(body: &[u8]) -> &[u8] {
    let (section, _) = crate::mail::section::split(body);
    let mut end = 0;
    let mut in_field = false;
    let mut at = 0;
    while at < section.len() {
        let line_end = memchr::memmem::find(&section[at..], b"\r\n")
            .map(|p| at + p + 2)
            .unwrap_or(section.len());
        let line = &section[at..line_end];
        let continues = in_field && line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        let starts = is_field_start(line);
        if !continues && !starts {
            break;
        }
        if line_end > MAX_RETURNED {
            break;
        }
        // A field counts once it is whole: its next line does not continue it.
        let next = section.get(line_end);
        if !next.is_some_and(|b| *b == b' ' || *b == b'\t') {
            end = line_end;
        }
        in_field = true;
        at = line_end;
    }
    &section[..end]
}

/// Whether `line` starts a header field: a name of printable ASCII
/// without spaces, then a colon.
fn is_field_start(line: &[u8]) -> bool {
    match memchr::memchr(b':', line) {
        Some(colon) if colon > 0 => line[..colon].iter().all(|b| (33..=126).contains(b)),
        _ => false,
    }
}

/// A MIME boundary no one can guess (a sender who could would end the
/// returned headers' part and add one of their own), and that `content`
/// does not hold.
fn boundary_for(content: &[u8]) -> String {
    loop {
        let mut random = [0u8; 16];
        if openssl::rand::rand_bytes(&mut random).is_err() {
            // Never seen; a report still goes out, its boundary drawn from
            // the clock and the content (no sender knows both).
            let seed = format!("{:?}{}", SystemTime::now(), content.len());
            random
                .copy_from_slice(&openssl::sha::sha256(&[seed.as_bytes(), content].concat())[..16]);
        }
        let boundary = format!("=_report_{}", crate::ossl::lower_hex(&random));
        if memchr::memmem::find(content, boundary.as_bytes()).is_none() {
            return boundary;
        }
    }
}

/// A reply on one line, without control characters, at most 900 bytes.
fn one_line(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 900 {
        let mut cut = 900;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_names_recipient_and_reply() {
        let env = Envelope {
            mail_from: "alice@example.org".into(),
            rcpts: vec!["bob@example.dk".into()],
            received: 1_700_000_000,
            client: "127.0.0.1".into(),
            helo: "c".into(),
            eight_bit: false,
            smtputf8: false,
            released: false,
            submission: false,
        };
        let failures = [Failure {
            rcpt: "bob@example.dk".into(),
            reply: "550 5.1.1 no such user".into(),
            remote_mta: Some("127.0.0.1:10026".into()),
            expired: false,
        }];
        let (benv, bytes) = build(
            "gw.example.dk",
            "0001",
            &env,
            b"Subject: hi\r\n\r\nbody\r\n",
            &failures,
            SystemTime::now(),
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(benv.mail_from.is_empty());
        assert_eq!(benv.rcpts, vec!["alice@example.org".to_string()]);
        assert!(text.contains("Final-Recipient: rfc822; bob@example.dk\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(text.contains("Subject: hi\r\n"));
        assert!(!text.contains("body"));
    }

    #[test]
    fn a_report_returns_header_fields_only_and_no_more_than_the_limit() {
        // No empty line: the filler after the fields is not returned.
        let m = b"Subject: hi\r\nX-A: 1\r\n  folded\r\nfiller line\r\nY: after\r\n";
        assert_eq!(header_block(m), b"Subject: hi\r\nX-A: 1\r\n  folded\r\n");
        assert_eq!(
            header_block(b"Subject: hi\r\n\r\nbody: x\r\n"),
            b"Subject: hi\r\n"
        );
        assert_eq!(header_block(b"\r\nbody\r\n"), b"");
        assert_eq!(header_block(b"not a field\r\nSubject: x\r\n"), b"");
        assert_eq!(header_block(b": empty name\r\n"), b"");
        // Whole fields up to the limit, never part of one.
        let mut big = Vec::new();
        for i in 0..5000 {
            big.extend_from_slice(format!("X-F{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        let kept = header_block(&big);
        assert!(kept.len() <= MAX_RETURNED && kept.len() > MAX_RETURNED - 40);
        assert!(kept.ends_with(b"\r\n"));
    }

    #[test]
    fn the_report_boundary_is_random_and_not_in_what_it_returns() {
        let a = boundary_for(b"x");
        let b = boundary_for(b"x");
        assert_ne!(a, b);
        assert!(a.starts_with("=_report_") && a.len() == "=_report_".len() + 32);
    }

    #[test]
    fn out_of_range_arrival_does_not_panic() {
        for received in [super::time::MAX_SECS + 1, i64::MAX as u64 + 1, u64::MAX] {
            let env = Envelope {
                mail_from: "alice@example.org".into(),
                rcpts: vec!["bob@example.dk".into()],
                received,
                client: "127.0.0.1".into(),
                helo: "c".into(),
                eight_bit: false,
                smtputf8: false,
                released: false,
                submission: false,
            };
            let failures = [Failure {
                rcpt: "bob@example.dk".into(),
                reply: "550 5.1.1 no".into(),
                remote_mta: None,
                expired: false,
            }];
            let (_, bytes) = build("gw", "0001", &env, b"", &failures, SystemTime::now());
            let text = String::from_utf8(bytes).unwrap();
            assert!(
                text.contains(&format!("Arrival-Date: (invalid time {received})\r\n")),
                "{text}"
            );
        }
        assert_eq!(
            rfc5322_date(UNIX_EPOCH - std::time::Duration::from_secs(1)),
            "(invalid time before 1970)"
        );
    }

    #[test]
    fn the_unsigned_notice_names_recipient_and_reason() {
        let env = Envelope {
            mail_from: "bob@example-law.dk".into(),
            rcpts: vec!["x@example.org".into()],
            received: 1_700_000_000,
            client: "127.0.0.1".into(),
            helo: "c".into(),
            eight_bit: false,
            smtputf8: false,
            released: false,
            submission: false,
        };
        let (e, b) = build_unsigned(
            "gw.test",
            "Q1",
            &env,
            b"Subject: hi\r\n\r\nbody\r\n",
            &[(
                "x@example.org".into(),
                "the header From <d@court.dk> is not internal".into(),
            )],
            UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_100),
        );
        assert_eq!(e.rcpts, vec!["bob@example-law.dk".to_string()]);
        assert!(e.is_null_sender());
        let t = String::from_utf8(b).unwrap();
        assert!(t.contains(
            "Final-Recipient: rfc822; x@example.org\r\nAction: relayed\r\nStatus: 2.0.0"
        ));
        assert!(t.contains("<d@court.dk> is not internal"));
        assert!(t.contains("Subject: hi"));
        assert!(!t.contains("body"), "only the headers are returned");
    }
}

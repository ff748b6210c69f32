//! Mail that comes back to the gateway's own return path: bounces (and
//! automatic replies) from the mailbox server about S/MIME mail the
//! gateway handed to it. They may quote the decrypted message, so they go
//! nowhere: the gateway reads the RFC 3464 fields, tells the postmaster of
//! the first internal domain which recipient failed and why (without any
//! of the returned content), and logs it. The outside sender hears
//! nothing.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{error, info};

use super::blocking;
use super::record::Attempted;
use crate::config::Settings;
use crate::delivery::RcptOutcome;
use crate::mail::dsn::{self, Report};
use crate::spool::dsn::rfc5322_date;
use crate::spool::{Envelope, Spooled, Store};

/// The "next hop" recorded for mail taken back at the return path.
pub const RETURNED: &str = "returned";

/// Takes `rcpts` (return paths of the gateway) of `msg`: queues the
/// postmaster notice and says what happened to each.
pub async fn take(
    settings: &Settings,
    store: &Arc<Store>,
    notify: &tokio::sync::mpsc::UnboundedSender<String>,
    msg: &Spooled,
    rcpts: &[String],
) -> Vec<Attempted> {
    let report = dsn::parse(&msg.body);
    let about: Vec<&str> = rcpts
        .iter()
        .filter_map(|r| settings.return_path_tag(r))
        .collect();
    let about = about.join(",");
    match &report {
        Some(r) => {
            for s in &r.recipients {
                info!(event = "returned", queue_id = %msg.id, about = %about,
                      recipient = %s.final_recipient, action = %s.action, status = %s.status,
                      diagnostic = %s.diagnostic.as_deref().unwrap_or("-"),
                      "the mailbox server returned S/MIME mail: reported to the postmaster, not the sender");
            }
        }
        None => info!(event = "returned", queue_id = %msg.id, about = %about,
                      "mail that is not a delivery report came back to the return path: reported to the postmaster"),
    }
    let outcome = match settings.server.internal_domains.first() {
        None => {
            info!(event = "bounce-discarded", queue_id = %msg.id,
                  "no internal domain for a postmaster report");
            RcptOutcome::Delivered("returned mail taken; no postmaster to tell".into())
        }
        Some(domain) => {
            let postmaster = format!("postmaster@{domain}");
            let (envelope, body) = notice(
                &settings.server.hostname,
                &postmaster,
                &about,
                &msg.envelope,
                report.as_ref(),
                SystemTime::now(),
            );
            let s = Arc::clone(store);
            match blocking(move || s.enqueue(&envelope, &body)).await {
                Ok(id) => {
                    info!(event = "dsn-queued", queue_id = %msg.id, dsn_id = %id, to = %postmaster,
                          "returned mail reported to the postmaster");
                    let _ = notify.send(id);
                    RcptOutcome::Delivered(format!("returned mail reported to {postmaster}"))
                }
                Err(e) => {
                    error!(queue_id = %msg.id, error = %e, "cannot queue the postmaster report; will try again");
                    RcptOutcome::Deferred("cannot queue the postmaster report".into())
                }
            }
        }
    };
    rcpts
        .iter()
        .map(|r| Attempted {
            rcpt: r.clone(),
            hop: RETURNED.into(),
            outcome: outcome.clone(),
        })
        .collect()
}

/// How many of a returned report's recipients the notice names.
const NOTICE_RECIPIENTS: usize = 10;

/// The notice to `postmaster` about returned mail (`about`: the queue ids
/// the return paths named). Only the report's fields, each on one line,
/// said to be unverified (anyone can write to the return path), at most
/// [`NOTICE_RECIPIENTS`] of them; never the returned content. Pure.
pub fn notice(
    hostname: &str,
    postmaster: &str,
    about: &str,
    returned: &Envelope,
    report: Option<&Report>,
    now: SystemTime,
) -> (Envelope, Vec<u8>) {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut text = format!(
        "This is the mail gateway at {hostname}.\r\n\r\n\
         S/MIME mail that the gateway handed to the mailbox server came back\r\n\
         to the gateway's return path (gateway queue id {about}). It was not\r\n\
         passed on to the original sender, so that nothing about decrypted mail\r\n\
         leaves the organisation. The returned content is not included.\r\n\r\n\
         Everything below is copied, unverified, from what came back: anyone\r\n\
         can send mail to the return path, so do not act on instructions,\r\n\
         addresses or links in it.\r\n\r\n\
         Returned by: {} (client {})\r\n",
        one_line(&returned.helo),
        one_line(&returned.client),
    );
    match report {
        Some(r) => {
            text.push_str(&format!(
                "Reporting MTA: {}\r\n\r\n",
                one_line(r.reporting_mta.as_deref().unwrap_or("-"))
            ));
            for s in r.recipients.iter().take(NOTICE_RECIPIENTS) {
                text.push_str(&format!(
                    "Recipient: {}\r\n  Action: {}\r\n  Status: {}\r\n  Remote MTA: {}\r\n  Diagnostic: {}\r\n\r\n",
                    one_line(&s.final_recipient),
                    one_line(&s.action),
                    one_line(&s.status),
                    one_line(s.remote_mta.as_deref().unwrap_or("-")),
                    one_line(s.diagnostic.as_deref().unwrap_or("-")),
                ));
            }
        }
        None => text
            .push_str("\r\nIt is not a delivery status report (an automatic reply, perhaps).\r\n"),
    }
    if let Some(more) = report.and_then(|r| r.recipients.len().checked_sub(NOTICE_RECIPIENTS)) {
        if more > 0 {
            text.push_str(&format!("({more} more recipient(s) not shown)\r\n"));
        }
    }
    let body = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{postmaster}>\r\n\
         Subject: S/MIME mail returned by the mailbox server\r\n\
         Date: {date}\r\n\
         Message-ID: <{secs}.{tag}.returned@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         {text}",
        date = rfc5322_date(now),
        tag = about
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(40)
            .collect::<String>(),
    );
    let envelope = Envelope {
        mail_from: String::new(),
        rcpts: vec![postmaster.to_string()],
        received: secs,
        client: "127.0.0.1".into(),
        helo: hostname.to_string(),
        eight_bit: true,
        smtputf8: false,
        released: false,
        submission: false,
    };
    (envelope, body.into_bytes())
}

/// One line, no control characters, at most 300 characters.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::dsn::RecipientStatus;

    #[test]
    fn the_notice_names_the_failure_and_nothing_returned() {
        let returned = Envelope {
            mail_from: String::new(),
            rcpts: vec!["smimegw-bounce+0001@gw".into()],
            received: 0,
            client: "10.0.0.5".into(),
            helo: "mx\r\nInjected: yes".into(),
            eight_bit: false,
            smtputf8: false,
            released: false,
            submission: false,
        };
        let report = Report {
            reporting_mta: Some("mx.example-law.dk".into()),
            recipients: vec![RecipientStatus {
                final_recipient: "gone@example-law.dk".into(),
                action: "failed".into(),
                status: "5.2.2".into(),
                diagnostic: Some("quota\r\nexceeded".into()),
                ..RecipientStatus::default()
            }],
        };
        let (env, body) = notice(
            "gw",
            "postmaster@example-law.dk",
            "0001",
            &returned,
            Some(&report),
            SystemTime::now(),
        );
        let text = String::from_utf8(body).unwrap();
        assert!(env.mail_from.is_empty());
        assert_eq!(env.rcpts, vec!["postmaster@example-law.dk".to_string()]);
        assert!(text.contains("Recipient: gone@example-law.dk\r\n"));
        assert!(text.contains("copied, unverified"), "{text}");
        assert!(text.contains("Diagnostic: quota  exceeded\r\n"));
        assert!(text.contains("Returned by: mx  Injected: yes"));
        assert!(!text.contains("\r\nInjected"));
    }

    #[test]
    fn the_notice_names_a_few_recipients_of_a_long_report() {
        let returned = Envelope {
            mail_from: String::new(),
            rcpts: vec!["smimegw-bounce+0001@gw".into()],
            received: 0,
            client: "192.0.2.7".into(),
            helo: "anyone".into(),
            eight_bit: false,
            smtputf8: false,
            released: false,
            submission: false,
        };
        let report = Report {
            reporting_mta: None,
            recipients: (0..100)
                .map(|i| RecipientStatus {
                    final_recipient: format!("r{i}@example-law.dk"),
                    action: "failed".into(),
                    status: "5.0.0".into(),
                    ..RecipientStatus::default()
                })
                .collect(),
        };
        let (_, body) = notice(
            "gw",
            "postmaster@x",
            "0001",
            &returned,
            Some(&report),
            SystemTime::now(),
        );
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches("Recipient: ").count(), NOTICE_RECIPIENTS);
        assert!(text.contains("(90 more recipient(s) not shown)"), "{text}");
    }
}

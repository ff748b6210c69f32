//! Operator commands on the queue (`smime-gateway queue ...`): list, show,
//! retry now, delete. They work on the spool files directly, so they can
//! be used whether or not the daemon runs.

use std::fmt::Write as _;

use crate::logging::escape_controls;
use crate::mail::headers;

/// A value from a message or a peer, on one line with nothing raw.
fn one(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(text, false)
}
use crate::spool::{RcptStatus, SpoolError, Store};

/// Never panics, whatever a spool file says.
fn date(secs: u64) -> String {
    crate::spool::time::rfc5322(secs)
}

/// One line per queued message.
pub fn list(store: &Store) -> Result<String, SpoolError> {
    let mut out = String::new();
    let ids = store.list()?;
    let _ = writeln!(
        out,
        "{:<14}  {:>9}  {:<31}  {:<7}  {:<30}  next attempt",
        "ID", "SIZE", "ARRIVED", "PENDING", "SENDER"
    );
    for id in &ids {
        match store.load(id) {
            Ok(m) => {
                let pending = m.state.pending().count();
                let next = if m.state.attempts == 0 {
                    "now".to_string()
                } else {
                    date(m.state.next_attempt)
                };
                let sender = if m.envelope.mail_from.is_empty() {
                    "<>".into()
                } else {
                    one(&m.envelope.mail_from)
                };
                let _ = writeln!(
                    out,
                    "{id:<14}  {:>9}  {:<31}  {:>3}/{:<3}  {sender:<30}  {next}",
                    m.body.len(),
                    date(m.envelope.received),
                    pending,
                    m.state.rcpts.len()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "{id:<14}  unreadable: {e}");
            }
        }
    }
    let _ = writeln!(out, "{} message(s) in the queue", ids.len());
    Ok(out)
}

/// Envelope, per-recipient state and headers of one message.
pub fn show(store: &Store, id: &str) -> Result<String, SpoolError> {
    let m = store.load(id)?;
    let mut out = String::new();
    let e = &m.envelope;
    let _ = writeln!(out, "Queue-ID:    {id}");
    let _ = writeln!(out, "Message-ID:  {}", one(&headers::message_id(&m.body)));
    let _ = writeln!(out, "Arrived:     {}", date(e.received));
    let _ = writeln!(out, "Client:      {} ({})", one(&e.client), one(&e.helo));
    let _ = writeln!(out, "Sender:      <{}>", one(&e.mail_from));
    let _ = writeln!(out, "Size:        {} octets", m.body.len());
    let _ = writeln!(out, "Attempts:    {}", m.state.attempts);
    if m.state.attempts > 0 {
        let _ = writeln!(out, "Next:        {}", date(m.state.next_attempt));
    }
    for r in &m.state.rcpts {
        let status = match r.status {
            RcptStatus::Pending => "pending",
            RcptStatus::Delivered => "delivered",
            RcptStatus::Failed => "failed",
            RcptStatus::Quarantined => "quarantined",
        };
        let _ = write!(out, "Recipient:   <{}> {status}", one(&r.addr));
        if let Some(reply) = &r.reply {
            let hop = r.hop.as_deref().unwrap_or("-");
            let _ = write!(out, " ({}: {})", one(hop), one(reply));
        }
        out.push('\n');
    }
    let head_end = m
        .body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(m.body.len());
    out.push('\n');
    let head = String::from_utf8_lossy(&m.body[..head_end]).replace("\r\n", "\n");
    out.push_str(&escape_controls(&head, true));
    Ok(out)
}

/// Makes message `id` due now; the daemon picks it up at its next queue
/// scan (`queue.scan_interval`).
pub fn retry(store: &Store, id: &str) -> Result<String, SpoolError> {
    store.request_retry(id)?;
    Ok(format!(
        "{id}: will be tried at the daemon's next queue scan"
    ))
}

/// Removes message `id` from the queue without delivering it.
pub fn delete(store: &Store, id: &str) -> Result<String, SpoolError> {
    store.remove(id)?;
    Ok(format!("{id}: deleted"))
}

/// The quarantine: one line per message with its reason.
pub fn quarantined(store: &Store) -> Result<String, SpoolError> {
    let mut out = String::new();
    let list = store.quarantined()?;
    for (id, e, reason) in &list {
        let _ = writeln!(
            out,
            "{id:<14}  {}  <{}> -> {}  {}",
            date(e.received),
            one(&e.mail_from),
            one(&e.rcpts.join(",")),
            one(reason)
        );
    }
    let _ = writeln!(out, "{} message(s) in quarantine", list.len());
    Ok(out)
}

/// Releases a quarantined message into the queue.
pub fn release(store: &Store, id: &str) -> Result<String, SpoolError> {
    store.release(id)?;
    Ok(format!(
        "{id}: released into the queue (delivered unchanged, with the reason)"
    ))
}

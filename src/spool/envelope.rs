//! What the spool records about a message besides its bytes: the envelope
//! fixed at acceptance, and the delivery state of each recipient, which
//! changes as attempts are made.

use serde::{Deserialize, Serialize};

/// The SMTP envelope and facts about the session that delivered the mail.
/// Immutable once the message is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `MAIL FROM` address; empty for the null sender `<>`.
    pub mail_from: String,
    /// `RCPT TO` addresses in the order given.
    pub rcpts: Vec<String>,
    /// Seconds since the Unix epoch when the message was accepted.
    pub received: u64,
    /// Address of the SMTP client.
    pub client: String,
    /// Name the client gave in EHLO/HELO.
    pub helo: String,
    /// The client declared `BODY=8BITMIME`.
    #[serde(default)]
    pub eight_bit: bool,
    /// The client declared `SMTPUTF8`.
    #[serde(default)]
    pub smtputf8: bool,
    /// Released from quarantine by an operator: deliver, never quarantine
    /// again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// Taken by a `server.submission_listen` listener: the only mail that
    /// may be signed when such listeners are configured. Spools written
    /// before the field existed read as not submitted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub submission: bool,
}

impl Envelope {
    /// True for the null sender: such mail is never bounced.
    pub fn is_null_sender(&self) -> bool {
        self.mail_from.is_empty()
    }
}

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not yet accepted by a next hop; will be tried (again).
    Pending,
    /// Accepted by a next hop: never sent again.
    Delivered,
    /// Failed for good; the sender has been told (or was the null sender).
    Failed,
    /// Set aside in the quarantine for an operator (undecryptable mail).
    Quarantined,
}

/// The delivery state of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptState {
    pub addr: String,
    pub status: RcptStatus,
    /// The last reply or error seen for this recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Next hop that gave `reply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<String>,
}

/// The mutable part of a queued message, rewritten atomically after each
/// delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Seconds since the Unix epoch before which no attempt is made.
    pub next_attempt: u64,
    pub rcpts: Vec<RcptState>,
}

impl QueueState {
    /// The state of a message that has not been tried yet.
    pub fn fresh(envelope: &Envelope) -> Self {
        Self {
            attempts: 0,
            next_attempt: envelope.received,
            rcpts: envelope
                .rcpts
                .iter()
                .map(|addr| RcptState {
                    addr: addr.clone(),
                    status: RcptStatus::Pending,
                    reply: None,
                    hop: None,
                })
                .collect(),
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = &RcptState> {
        self.rcpts
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
    }

    pub fn is_done(&self) -> bool {
        self.pending().next().is_none()
    }
}

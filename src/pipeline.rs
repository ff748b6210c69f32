//! unwrap → decide → wrap for one spooled message: turns the message and
//! its pending recipients into the copies to deliver, one per group of
//! recipients that share an outcome.
//!
//! The relay core passes mail through unchanged: one copy, the exact bytes
//! received, for every pending recipient. The S/MIME steps fill this in.

use std::borrow::Cow;

use crate::spool::Envelope;

/// One outgoing copy and the recipients it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy<'a> {
    pub rcpts: Vec<String>,
    pub body: Cow<'a, [u8]>,
}

/// The copies to send for `pending` recipients of the message.
pub fn process<'a>(_envelope: &Envelope, body: &'a [u8], pending: Vec<String>) -> Vec<Copy<'a>> {
    if pending.is_empty() {
        return Vec::new();
    }
    vec![Copy {
        rcpts: pending,
        body: Cow::Borrowed(body),
    }]
}

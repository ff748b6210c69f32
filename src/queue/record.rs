//! Applying the outcome of one delivery attempt to a message's
//! per-recipient state: who was delivered (never sent again), who failed
//! for good (bounced), who stays pending and until when, and when the
//! message has outlived its lifetime. Pure: the state, the outcomes and
//! the time in; the new state and what to report out. The caller makes
//! the state durable before it logs or bounces anything.

use std::time::Duration;

use crate::delivery::RcptOutcome;
use crate::spool::dsn::Failure;
use crate::spool::{retry, QueueState, RcptStatus};

/// The "next hop" recorded for recipients the policy bounced or held.
pub const POLICY: &str = "policy";
/// The "next hop" recorded for recipients set aside in the quarantine.
pub const QUARANTINE: &str = "quarantine";
/// The "next hop" recorded for recipients handed on to a message of
/// their own.
pub const HANDED_OFF: &str = "handed-off";

/// What happened to one recipient in this attempt, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    pub rcpt: String,
    pub hop: String,
    pub outcome: RcptOutcome,
}

/// A line for the log, written once the state is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    Delivered {
        rcpt: String,
        hop: String,
        reply: String,
    },
    Deferred {
        rcpt: String,
        hop: String,
        reply: String,
    },
    Quarantined {
        rcpt: String,
    },
}

/// What one attempt changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub logged: Vec<Logged>,
    /// Recipients to bounce (still pending until the bounce is queued).
    pub failures: Vec<Failure>,
}

/// Applies `attempted` to `state`: delivered and quarantined recipients
/// leave the pending set; permanent failures, and every recipient still
/// pending once the message has outlived `lifetime`, become failures to
/// bounce. Outcomes for recipients not pending are ignored (a recipient a
/// next hop accepted is never touched again).
pub fn apply(
    state: &mut QueueState,
    attempted: Vec<Attempted>,
    received: u64,
    now: u64,
    lifetime: Duration,
) -> Recorded {
    let mut out = settle(state, attempted);
    state.attempts += 1;
    if retry::expired(received, now, lifetime) {
        for r in state.pending() {
            if out.failures.iter().any(|f| f.rcpt == r.addr) {
                continue;
            }
            out.failures.push(Failure {
                rcpt: r.addr.clone(),
                reply: r.reply.clone().unwrap_or_else(|| "not delivered".into()),
                remote_mta: r.hop.clone().filter(|h| h != POLICY),
                expired: true,
            });
        }
    }
    out
}

/// Applies the outcomes of part of an attempt, before the rest of it
/// runs: as [`apply`], but the attempt is not counted and no recipient
/// expires (those not yet tried in this attempt must not bounce for want
/// of a try).
pub fn settle(state: &mut QueueState, attempted: Vec<Attempted>) -> Recorded {
    let mut out = Recorded::default();
    for Attempted { rcpt, hop, outcome } in attempted {
        let Some(r) = state
            .rcpts
            .iter_mut()
            .find(|r| r.addr == rcpt && r.status == RcptStatus::Pending)
        else {
            continue;
        };
        r.hop = Some(hop.clone());
        match outcome {
            RcptOutcome::Delivered(reply) => {
                r.status = RcptStatus::Delivered;
                r.reply = Some(reply.clone());
                out.logged.push(Logged::Delivered { rcpt, hop, reply });
            }
            RcptOutcome::Deferred(reply) => {
                r.reply = Some(reply.clone());
                out.logged.push(Logged::Deferred { rcpt, hop, reply });
            }
            RcptOutcome::Quarantined => {
                r.status = RcptStatus::Quarantined;
                r.reply = Some("quarantined: undecryptable".into());
                out.logged.push(Logged::Quarantined { rcpt });
            }
            RcptOutcome::Failed(reply) => {
                r.reply = Some(reply.clone());
                out.failures.push(Failure {
                    rcpt,
                    reply,
                    remote_mta: (hop != POLICY).then_some(hop),
                    expired: false,
                });
            }
        }
    }
    out
}

/// Marks the recipients of `failures` failed, once their bounce is queued.
pub fn bounced(state: &mut QueueState, failures: &[Failure]) {
    for f in failures {
        if let Some(r) = state
            .rcpts
            .iter_mut()
            .find(|r| r.addr == f.rcpt && r.status == RcptStatus::Pending)
        {
            r.status = RcptStatus::Failed;
        }
    }
}

/// When the message is tried next: `None` when no recipient is pending
/// (it leaves the queue), otherwise the time, also written into `state`.
pub fn next_attempt(state: &mut QueueState, now: u64, intervals: &[Duration]) -> Option<u64> {
    if state.is_done() {
        return None;
    }
    let next = now.saturating_add(retry::delay_after(state.attempts, intervals).as_secs());
    state.next_attempt = next;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RcptState;

    const DAY: Duration = Duration::from_secs(86_400);

    fn state(rcpts: &[&str]) -> QueueState {
        QueueState {
            attempts: 0,
            next_attempt: 0,
            rcpts: rcpts
                .iter()
                .map(|a| RcptState {
                    addr: a.to_string(),
                    status: RcptStatus::Pending,
                    reply: None,
                    hop: None,
                })
                .collect(),
        }
    }

    fn at(rcpt: &str, hop: &str, outcome: RcptOutcome) -> Attempted {
        Attempted {
            rcpt: rcpt.into(),
            hop: hop.into(),
            outcome,
        }
    }

    fn status(s: &QueueState, rcpt: &str) -> RcptStatus {
        s.rcpts.iter().find(|r| r.addr == rcpt).unwrap().status
    }

    #[test]
    fn every_outcome_moves_its_recipient_once() {
        let mut s = state(&["a@x", "b@x", "c@x", "d@x"]);
        let r = apply(
            &mut s,
            vec![
                at("a@x", "hop:25", RcptOutcome::Delivered("250 ok".into())),
                at("b@x", "hop:25", RcptOutcome::Deferred("451 later".into())),
                at("c@x", "hop:25", RcptOutcome::Failed("550 no".into())),
                at("d@x", QUARANTINE, RcptOutcome::Quarantined),
            ],
            1000,
            1000,
            DAY,
        );
        assert_eq!(status(&s, "a@x"), RcptStatus::Delivered);
        assert_eq!(status(&s, "b@x"), RcptStatus::Pending);
        // Failed stays pending until its bounce is queued.
        assert_eq!(status(&s, "c@x"), RcptStatus::Pending);
        assert_eq!(status(&s, "d@x"), RcptStatus::Quarantined);
        assert_eq!(s.attempts, 1);
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.failures[0].remote_mta.as_deref(), Some("hop:25"));
        assert!(!r.failures[0].expired);
        assert_eq!(r.logged.len(), 3);
        bounced(&mut s, &r.failures);
        assert_eq!(status(&s, "c@x"), RcptStatus::Failed);
        assert_eq!(
            next_attempt(&mut s, 1000, &[Duration::from_secs(60)]),
            Some(1060)
        );
        assert_eq!(s.next_attempt, 1060);
    }

    #[test]
    fn a_delivered_recipient_is_never_touched_again() {
        let mut s = state(&["a@x"]);
        apply(
            &mut s,
            vec![at("a@x", "h", RcptOutcome::Delivered("250".into()))],
            0,
            0,
            DAY,
        );
        let r = apply(
            &mut s,
            vec![at("a@x", "h", RcptOutcome::Failed("550".into()))],
            0,
            10,
            DAY,
        );
        assert!(r.failures.is_empty());
        assert_eq!(status(&s, "a@x"), RcptStatus::Delivered);
        assert_eq!(next_attempt(&mut s, 10, &[DAY]), None);
    }

    #[test]
    fn policy_failures_name_no_remote_mta() {
        let mut s = state(&["a@x"]);
        let r = apply(
            &mut s,
            vec![at(
                "a@x",
                POLICY,
                RcptOutcome::Failed("550 5.7.1 rule".into()),
            )],
            0,
            0,
            DAY,
        );
        assert_eq!(r.failures[0].remote_mta, None);
    }

    #[test]
    fn expiry_bounces_every_pending_recipient_with_its_last_reply() {
        let mut s = state(&["a@x", "b@x", "c@x"]);
        let r = apply(
            &mut s,
            vec![
                at("a@x", "h", RcptOutcome::Deferred("451 busy".into())),
                at("b@x", "h", RcptOutcome::Delivered("250".into())),
            ],
            0,
            DAY.as_secs(),
            DAY,
        );
        let mut got: Vec<_> = r
            .failures
            .iter()
            .map(|f| (f.rcpt.as_str(), f.reply.as_str(), f.expired))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("a@x", "451 busy", true), ("c@x", "not delivered", true)]
        );
        bounced(&mut s, &r.failures);
        assert_eq!(next_attempt(&mut s, DAY.as_secs(), &[DAY]), None);
    }

    #[test]
    fn before_expiry_pending_recipients_wait_with_growing_delays() {
        let intervals = [Duration::from_secs(60), Duration::from_secs(600)];
        let mut s = state(&["a@x"]);
        for (n, want) in [(1, 60), (2, 600), (3, 600)] {
            let r = apply(
                &mut s,
                vec![at("a@x", "h", RcptOutcome::Deferred("421".into()))],
                0,
                100,
                DAY,
            );
            assert!(r.failures.is_empty());
            assert_eq!(s.attempts, n);
            assert_eq!(next_attempt(&mut s, 100, &intervals), Some(100 + want));
        }
    }

    #[test]
    fn settling_part_of_an_expired_attempt_bounces_only_its_own_failures() {
        let mut s = state(&["out@y", "box@x"]);
        let early = settle(
            &mut s,
            vec![at("out@y", "hop:25", RcptOutcome::Failed("550 no".into()))],
        );
        assert_eq!(early.failures.len(), 1);
        assert_eq!(early.failures[0].rcpt, "out@y");
        assert!(!early.failures[0].expired);
        assert_eq!(s.attempts, 0, "the attempt is counted once, at its end");
        assert_eq!(status(&s, "box@x"), RcptStatus::Pending);
        bounced(&mut s, &early.failures);
        // The rest of the attempt, past the lifetime: the mailbox expires,
        // the outside recipient (bounced already) is not bounced again.
        let rest = apply(&mut s, vec![], 0, 10 * 86_400, DAY);
        assert_eq!(rest.failures.len(), 1);
        assert_eq!(rest.failures[0].rcpt, "box@x");
        assert!(rest.failures[0].expired);
        assert_eq!(s.attempts, 1);
    }

    #[test]
    fn outcomes_for_unknown_recipients_are_ignored() {
        let mut s = state(&["a@x"]);
        let r = apply(
            &mut s,
            vec![at("zz@x", "h", RcptOutcome::Delivered("250".into()))],
            0,
            0,
            DAY,
        );
        assert_eq!(r, Recorded::default());
        assert_eq!(status(&s, "a@x"), RcptStatus::Pending);
    }
}

//! Every metric the gateway exports, named in one place, and the calls
//! that record them (the `metrics` facade; Prometheus text format via
//! `metrics-exporter-prometheus`, served by `observe`).

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

const DELIVERY_SECONDS: &str = "smimegw_delivery_seconds";

/// Installs the Prometheus recorder (once per process).
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(DELIVERY_SECONDS.into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        )?
        .install_recorder()
}

pub fn accepted() {
    counter!("smimegw_messages_accepted_total").increment(1);
}

pub fn delivered() {
    counter!("smimegw_recipients_delivered_total").increment(1);
}

pub fn deferred() {
    counter!("smimegw_recipients_deferred_total").increment(1);
}

pub fn bounced() {
    counter!("smimegw_recipients_bounced_total").increment(1);
}

pub fn quarantined() {
    counter!("smimegw_recipients_quarantined_total").increment(1);
}

pub fn delivery_time(hop: &str, seconds: f64) {
    histogram!(DELIVERY_SECONDS, "hop" => hop.to_string()).record(seconds);
}

pub fn rule_hit(rule: &str) {
    counter!("smimegw_rule_hits_total", "rule" => rule.to_string()).increment(1);
}

tokio::task_local! {
    /// Set while the gateway asks questions for its own reports.
    static UNCOUNTED: ();
}

/// Runs `work` with certificate lookups not counted: what the gateway
/// asks for its own reports (the readiness table) is not mail traffic.
pub async fn uncounted<F: std::future::Future>(work: F) -> F::Output {
    UNCOUNTED.scope((), work).await
}

/// A certificate lookup answered from `source`: `local`, `harvested`,
/// `ldap`, `ldap-cache` (not counted inside [`uncounted`]).
pub fn lookup(source: &'static str) {
    if UNCOUNTED.try_with(|_| ()).is_ok() {
        return;
    }
    counter!("smimegw_certificate_lookups_total", "source" => source).increment(1);
}

/// What the pipeline did with a message, for counting. Generations are
/// their labels (`OCES2`, `OCES3`, `other`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Decrypted(String),
    /// [`crate::smime::SmimeError::label`]: `no-key`, `not-enveloped`,
    /// `corrupt`, `too-complex`, `scratch` or `failed`.
    Undecryptable(&'static str),
    Signed(String),
    Encrypted(String),
    /// An incoming signature, by verdict (`valid`, `signer-differs`,
    /// `invalid`, `unknown-signer`, `untrusted`, `revoked`, `expired`).
    Verified(&'static str),
}

pub fn pipeline(event: &Event) {
    match event {
        Event::Decrypted(g) => {
            counter!("smimegw_decrypted_total", "generation" => g.clone()).increment(1)
        }
        Event::Undecryptable(reason) => {
            counter!("smimegw_undecryptable_total", "reason" => *reason).increment(1)
        }
        Event::Signed(g) => {
            counter!("smimegw_signed_total", "generation" => g.clone()).increment(1)
        }
        Event::Verified(verdict) => {
            counter!("smimegw_signatures_total", "verdict" => *verdict).increment(1)
        }
        Event::Encrypted(g) => {
            counter!("smimegw_encrypted_total", "generation" => g.clone()).increment(1)
        }
    }
}

/// Messages in the queue and the age of the oldest, in seconds.
pub fn queue(size: usize, oldest_seconds: u64) {
    gauge!("smimegw_queue_messages").set(size as f64);
    gauge!("smimegw_queue_oldest_seconds").set(oldest_seconds as f64);
}

/// Days until the earliest expiry among the identities valid now.
pub fn identity_expiry(days: Option<f64>) {
    if let Some(d) = days {
        gauge!("smimegw_identity_expiry_days").set(d);
    }
}

/// Counterparties by readiness (`oces3`, `oces2-only`, `none`) at the
/// configured cutoff.
pub fn readiness(census: &[(&'static str, usize)]) {
    for (class, n) in census {
        gauge!("smimegw_cutoff_readiness_counterparties", "readiness" => *class).set(*n as f64);
    }
}

/// Journal records written, dropped (the writer was behind) and failed
/// writes (retried).
pub fn journal_written(n: usize) {
    counter!("smimegw_journal_records_written_total").increment(n as u64);
}

pub fn journal_dropped() {
    counter!("smimegw_journal_records_dropped_total").increment(1);
}

pub fn journal_error() {
    counter!("smimegw_journal_write_errors_total").increment(1);
}

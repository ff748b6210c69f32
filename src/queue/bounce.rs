//! Where the report about failed recipients goes. Mail from the null
//! sender is never bounced. Failures of S/MIME mail (encrypted content at
//! any depth: opened or not, quarantined or refused by the mailbox server)
//! for internal recipients go to the postmaster of the first internal
//! domain, never to the sender: what happens to encrypted mail inside must
//! not be observable outside (no decryption oracle). Everything else goes
//! to the envelope sender, as RFC 3464 bounces from the null sender.
//! (What the mailbox server itself sends back comes to the gateway's
//! return path: `returned`.)

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{error, info};

use super::blocking;
use crate::config::Settings;
use crate::spool::dsn::{self, Failure};
use crate::spool::{Spooled, Store};

/// Who is told about which failures.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// To the envelope sender.
    pub sender: Vec<Failure>,
    /// To the postmaster (address), about encrypted mail.
    pub postmaster: Option<(String, Vec<Failure>)>,
    /// Nobody is told (null sender, or no postmaster to tell), and why.
    pub discarded: Option<(&'static str, Vec<Failure>)>,
}

/// Routes `failures` of a message from `sender`; `smime` says whether it
/// holds encrypted content at any depth, `internal` which recipients are
/// internal. Pure.
pub fn route(
    settings: &Settings,
    sender_is_null: bool,
    smime: bool,
    internal: impl Fn(&str) -> bool,
    failures: &[Failure],
) -> Routes {
    if sender_is_null {
        return Routes {
            discarded: Some((
                "the failed message had the null sender: no bounce is sent",
                failures.to_vec(),
            )),
            ..Routes::default()
        };
    }
    let (hidden, visible): (Vec<Failure>, Vec<Failure>) = failures
        .iter()
        .cloned()
        .partition(|f| smime && internal(&f.rcpt));
    let mut routes = Routes {
        sender: visible,
        ..Routes::default()
    };
    if !hidden.is_empty() {
        match settings.server.internal_domains.first() {
            Some(domain) => routes.postmaster = Some((format!("postmaster@{domain}"), hidden)),
            None => routes.discarded = Some(("no internal domain for a postmaster report", hidden)),
        }
    }
    routes
}

/// Queues the reports for `failures` of `msg`. Returns false when one
/// could not be queued: those recipients then stay pending, so nothing is
/// lost. Each queued report is announced on `notify`.
pub async fn send(
    settings: &Settings,
    store: &Arc<Store>,
    notify: &tokio::sync::mpsc::UnboundedSender<String>,
    msg: &Spooled,
    smime: bool,
    failures: &[Failure],
) -> bool {
    let internal = |rcpt: &str| crate::pipeline::decide::is_internal(settings, rcpt);
    let routes = route(
        settings,
        msg.envelope.is_null_sender(),
        smime,
        internal,
        failures,
    );
    let mut ok = true;
    if !routes.sender.is_empty() {
        let to = msg.envelope.mail_from.clone();
        ok &= queue_dsn(settings, store, notify, msg, &to, &routes.sender).await;
    }
    if let Some((postmaster, hidden)) = &routes.postmaster {
        info!(event = "bounce-redirected", queue_id = %msg.id, to = %postmaster,
              "S/MIME mail failed for internal recipients: reported to the postmaster, not the sender");
        ok &= queue_dsn(settings, store, notify, msg, postmaster, hidden).await;
    }
    if let Some((why, _)) = &routes.discarded {
        info!(event = "bounce-discarded", queue_id = %msg.id, "{why}");
    }
    ok
}

/// Tells the internal envelope sender of `msg` that it went out unsigned
/// to `unsigned` (recipient, reason). Nobody else is told: an outside or
/// null sender has no standing to ask for the organisation's signature.
/// Sent after the delivery is recorded, so at most once (a crash in
/// between loses the notice, never mail).
pub async fn tell_unsigned(
    settings: &Settings,
    store: &Arc<Store>,
    notify: &tokio::sync::mpsc::UnboundedSender<String>,
    msg: &Spooled,
    unsigned: &[(String, String)],
) {
    let sender = &msg.envelope.mail_from;
    if msg.envelope.is_null_sender() || !crate::pipeline::decide::is_internal(settings, sender) {
        return;
    }
    let (envelope, body) = dsn::build_unsigned(
        &settings.server.hostname,
        &msg.id,
        &msg.envelope,
        &msg.body,
        unsigned,
        SystemTime::now(),
    );
    let s = Arc::clone(store);
    match blocking(move || s.enqueue(&envelope, &body)).await {
        Ok(dsn_id) => {
            info!(event = "unsigned-notice", queue_id = %msg.id, dsn_id = %dsn_id, to = %sender,
                  "sender told the message went out unsigned");
            let _ = notify.send(dsn_id);
        }
        Err(e) => error!(queue_id = %msg.id, error = %e, "cannot queue the unsigned notice"),
    }
}

/// Queues a delivery status notification about `failures` to `to`.
async fn queue_dsn(
    settings: &Settings,
    store: &Arc<Store>,
    notify: &tokio::sync::mpsc::UnboundedSender<String>,
    msg: &Spooled,
    to: &str,
    failures: &[Failure],
) -> bool {
    let mut about = msg.envelope.clone();
    about.mail_from = to.to_string();
    let (envelope, body) = dsn::build(
        &settings.server.hostname,
        &msg.id,
        &about,
        &msg.body,
        failures,
        SystemTime::now(),
    );
    let s = Arc::clone(store);
    match blocking(move || s.enqueue(&envelope, &body)).await {
        Ok(dsn_id) => {
            info!(event = "dsn-queued", queue_id = %msg.id, dsn_id = %dsn_id, to = %to, "bounce queued");
            let _ = notify.send(dsn_id);
            true
        }
        Err(e) => {
            error!(queue_id = %msg.id, error = %e, "cannot queue the bounce; will try again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        crate::config::load::test_settings("")
    }

    fn failure(rcpt: &str) -> Failure {
        Failure {
            rcpt: rcpt.into(),
            reply: "550 no".into(),
            remote_mta: None,
            expired: false,
        }
    }

    fn internal(rcpt: &str) -> bool {
        rcpt.ends_with("@example-law.dk")
    }

    #[test]
    fn encrypted_mail_failing_inside_is_reported_to_the_postmaster_only() {
        let f = [failure("bob@example-law.dk"), failure("ext@example.org")];
        let r = route(&settings(), false, true, internal, &f);
        assert_eq!(r.sender, vec![failure("ext@example.org")]);
        assert_eq!(
            r.postmaster,
            Some((
                "postmaster@example-law.dk".to_string(),
                vec![failure("bob@example-law.dk")]
            ))
        );
        assert_eq!(r.discarded, None);
    }

    #[test]
    fn plain_mail_failures_go_to_the_sender() {
        let f = [failure("bob@example-law.dk")];
        let r = route(&settings(), false, false, internal, &f);
        assert_eq!(r.sender, f.to_vec());
        assert_eq!(r.postmaster, None);
    }

    #[test]
    fn the_null_sender_is_never_bounced() {
        let f = [failure("bob@example-law.dk")];
        for encrypted in [false, true] {
            let r = route(&settings(), true, encrypted, internal, &f);
            assert!(r.sender.is_empty() && r.postmaster.is_none());
            assert!(r.discarded.is_some());
        }
    }
}

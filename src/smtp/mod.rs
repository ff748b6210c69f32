//! The inbound ESMTP server: listeners, connection limits, the session
//! state machine, the DATA decoder and STARTTLS. Only this room talks SMTP
//! to clients; it hands accepted mail to the spool and nothing else.

pub mod address;
mod conn;
pub mod data;
mod listener;
mod session;
pub mod tls;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{Settings, SettingsSource};
use crate::spool::Store;

pub use listener::{bind, serve, Listener};

/// Whether an internal recipient exists, asked at RCPT time of untrusted
/// clients when `server.verify_recipients` is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptCheck {
    Exists,
    /// The mailbox server refused it (its reply).
    Unknown(String),
    /// Could not tell now (its reply or why).
    TryLater(String),
}

/// Answers recipient checks (the daemon plugs in the outbound side).
pub trait RecipientVerifier: Send + Sync {
    /// Whether `rcpt` exists, asked on behalf of the client at `client`.
    fn check<'a>(
        &'a self,
        client: std::net::IpAddr,
        rcpt: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = RcptCheck> + Send + 'a>>;
}

/// What every session shares.
pub struct Context {
    settings: Arc<dyn SettingsSource>,
    pub store: Arc<Store>,
    pub tls: Option<TlsAcceptor>,
    pub shutdown: watch::Receiver<bool>,
    queued: mpsc::UnboundedSender<String>,
    pub verifier: Option<Arc<dyn RecipientVerifier>>,
}

impl Context {
    pub fn new(
        settings: Arc<dyn SettingsSource>,
        store: Arc<Store>,
        tls: Option<TlsAcceptor>,
        shutdown: watch::Receiver<bool>,
        queued: mpsc::UnboundedSender<String>,
    ) -> Self {
        Self {
            settings,
            store,
            tls,
            shutdown,
            queued,
            verifier: None,
        }
    }

    /// Plugs in recipient verification.
    pub fn with_verifier(mut self, verifier: Arc<dyn RecipientVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// The configuration in force now (a session keeps the one it started with).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.settings()
    }

    /// Tells the queue runner a message is ready.
    fn notify_queued(&self, id: String) {
        // The runner also scans the spool, so a closed channel loses nothing.
        let _ = self.queued.send(id);
    }
}

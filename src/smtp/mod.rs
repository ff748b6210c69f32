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

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Settings;
use crate::spool::Store;

pub use listener::{bind, serve};

/// What every session shares.
pub struct Context {
    settings: Arc<ArcSwap<Settings>>,
    pub store: Arc<Store>,
    pub tls: Option<TlsAcceptor>,
    pub shutdown: watch::Receiver<bool>,
    queued: mpsc::UnboundedSender<String>,
}

impl Context {
    pub fn new(
        settings: Arc<ArcSwap<Settings>>,
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
        }
    }

    /// The configuration in force now (a session keeps the one it started with).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Tells the queue runner a message is ready.
    fn notify_queued(&self, id: String) {
        // The runner also scans the spool, so a closed channel loses nothing.
        let _ = self.queued.send(id);
    }
}

//! The running gateway: loads the configuration, opens the spool, starts
//! the SMTP listeners and the queue runner, and handles signals (SIGTERM
//! and SIGINT stop it, SIGHUP reloads the configuration).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::config::{self, ConfigError, Settings};
use crate::pki::{Keyring, KeyringError};
use crate::runner::Runner;
use crate::smtp;
use crate::spool::{SpoolError, Store};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Tls(#[from] smtp::tls::TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Keys(#[from] KeyringError),
}

/// Loads the identities and trust anchors the configuration names.
pub fn load_keys(settings: &Settings) -> Result<Keyring, DaemonError> {
    Ok(Keyring::load(settings)?)
}

/// Runs the gateway with the configuration at `path` until SIGTERM/SIGINT.
pub async fn serve(path: &Path) -> Result<(), DaemonError> {
    let settings = config::load(path)?;
    let keys = Keyring::load(&settings)?;
    for id in &keys.identities {
        info!(subject = %id.info.subject_cn, generation = %id.info.generation,
              kind = %id.info.kind, source = %id.source.display(), "identity loaded");
    }
    let store = Arc::new(Store::open(&settings.spool.dir)?);
    let tls = match &settings.server.tls {
        Some(t) => Some(smtp::tls::acceptor(t)?),
        None => None,
    };
    let listeners = smtp::bind(&settings.server.listen).await?;
    for l in &listeners {
        if let Ok(addr) = l.local_addr() {
            info!(address = %addr, tls = tls.is_some(), "listening");
        }
    }

    let settings = Arc::new(ArcSwap::from_pointee(settings));
    let keys = Arc::new(ArcSwap::from_pointee(keys));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (queued_tx, queued_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(smtp::Context::new(
        Arc::clone(&settings),
        Arc::clone(&store),
        tls,
        stop_rx.clone(),
        queued_tx.clone(),
    ));
    let runner = Runner::new(
        Arc::clone(&settings),
        Arc::clone(&keys),
        Arc::clone(&store),
        queued_rx,
        queued_tx,
        stop_rx,
    );
    let runner = tokio::spawn(runner.run());
    let server = tokio::spawn(smtp::serve(listeners, ctx));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    info!(config = %path.display(), "smime-gateway started");
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { info!("SIGINT: stopping"); break; }
            _ = hup.recv() => reload(path, &settings, &keys),
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = runner.await;
    info!("stopped; the spool keeps every message not yet delivered");
    Ok(())
}

/// Loads the configuration again and swaps it in when valid; an invalid
/// one is logged and the running one kept. Listen addresses and the spool
/// directory take effect only at the next start.
fn reload(path: &Path, settings: &ArcSwap<Settings>, keys: &ArcSwap<Keyring>) {
    let loaded = config::load(path)
        .map_err(DaemonError::from)
        .and_then(|s| Ok((Keyring::load(&s)?, s)));
    match loaded {
        Ok((new_keys, new)) => {
            keys.store(Arc::new(new_keys));
            settings.store(Arc::new(new));
            info!(config = %path.display(), "configuration reloaded");
        }
        Err(e) => error!(error = %e, "configuration not reloaded; the previous one stays in force"),
    }
}

/// Checks the configuration as `serve` would, without starting anything.
pub fn check(path: &Path) -> Result<Settings, DaemonError> {
    let settings = config::load(path)?;
    if let Some(t) = &settings.server.tls {
        smtp::tls::acceptor(t)?;
    }
    Keyring::load(&settings)?;
    Ok(settings)
}

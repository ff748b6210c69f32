//! The running gateway: loads the configuration, opens the spool, starts
//! the SMTP listeners and the queue runner, and handles signals (SIGTERM
//! and SIGINT stop it, SIGHUP reloads the configuration).

use std::path::Path;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::SettingsSource;
use crate::queue::Runner;
use crate::smtp;
use crate::snapshot::{Live, Snapshot, SnapshotError};
use crate::spool::{SpoolError, Store};
use crate::systemd;
use crate::{http_stack, metrics, observe, status};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Tls(#[from] smtp::tls::TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
}

/// Runs the gateway with the configuration at `path` until SIGTERM/SIGINT.
pub async fn serve(path: &Path) -> Result<(), DaemonError> {
    crate::ossl::tune_allocator();
    let open_files = crate::open_files::raise();
    let snapshot = Snapshot::load(path)?;
    let settings = Arc::clone(&snapshot.settings);
    for id in &snapshot.keys.identities {
        info!(subject = %id.info.subject_cn, generation = %id.info.generation,
              kind = %id.info.kind, source = %id.source.display(), "identity loaded");
    }
    let store = Arc::new(Store::open(&settings.spool.dir)?);
    let tls = match &settings.server.tls {
        Some(t) => Some(smtp::tls::acceptor(t)?),
        None => None,
    };
    let mut listeners: Vec<smtp::Listener> = smtp::bind(&settings.server.listen)
        .await?
        .into_iter()
        .map(|socket| smtp::Listener {
            socket,
            submission: false,
        })
        .collect();
    listeners.extend(
        smtp::bind(&settings.server.submission_listen)
            .await?
            .into_iter()
            .map(|socket| smtp::Listener {
                socket,
                submission: true,
            }),
    );
    let metrics_listener = match settings.metrics.listen {
        Some(addr) => Some(observe::bind(addr).await?),
        None => None,
    };
    let health_listener = match settings.metrics.health_listen {
        Some(addr) => Some(observe::bind_health(addr).await?),
        None => None,
    };
    let status_listener = match settings.status.listen {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                warn!(address = %addr, "the status page shows addresses and is reachable beyond this host: let only operators reach it");
            }
            Some(http_stack::bind_named(addr, "status page").await?)
        }
        None => None,
    };
    if settings.server.submission_listen.is_empty()
        && !settings.server.sign_without_submission_path
        && settings.rules.iter().any(|r| r.sign.wanted())
    {
        warn!(
            reason = crate::policy::signing::NO_SUBMISSION_PATH,
            "outbound mail is not signed: set server.submission_listen (the submission path), \
             or server.sign_without_submission_path if the mail server ties every sender to its login"
        );
    }
    for l in &listeners {
        if let Ok(addr) = l.socket.local_addr() {
            info!(address = %addr, tls = tls.is_some(), submission = l.submission, "listening");
        }
    }

    let live = Arc::new(Live::new(snapshot));
    let settings: Arc<dyn SettingsSource> = live.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_metrics = stop_rx.clone();
    let stop_rx_status = stop_rx.clone();
    // Counts reloads, for what is computed from the configuration in force.
    let (reloaded_tx, reloaded_rx) = watch::channel(0u64);
    let (queued_tx, queued_rx) = mpsc::unbounded_channel();
    let verifier = Arc::new(crate::delivery::verify::Verifier::new(Arc::clone(
        &settings,
    )));
    let ctx = Arc::new(
        smtp::Context::new(
            Arc::clone(&settings),
            Arc::clone(&store),
            tls,
            stop_rx.clone(),
            queued_tx.clone(),
        )
        .with_verifier(verifier),
    );
    // The journal is fixed at start (like the spool): a reload does not
    // move it.
    let (journal, journal_writer) = {
        let first = live.current();
        if let Some(target) = crate::journal::Target::of(&first.settings) {
            info!(journal = %target.describe(), "journal of decisions and key use");
        }
        crate::journal::Journal::start(&first.settings)
    };
    // Connections kept to next hops: closed on reload, so none outlives
    // the TLS settings it was verified under.
    let pool = Arc::new(crate::delivery::Pool::new());
    let runner = Runner::new(
        Arc::clone(&live),
        Arc::clone(&pool),
        Arc::clone(&store),
        queued_rx,
        queued_tx,
        stop_rx,
    )
    .with_journal(journal);
    let runner = tokio::spawn(runner.run());
    // One readiness check (and its last answer) for both listeners.
    let ready = observe::Ready::new(Arc::clone(&settings));
    let observer = match metrics_listener {
        Some(listener) => {
            let handle = metrics::install().map_err(std::io::Error::other)?;
            let serve = observe::serve(
                listener,
                Some(handle),
                Arc::clone(&ready),
                stop_rx_metrics.clone(),
            );
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let health = health_listener
        .map(|listener| tokio::spawn(observe::serve(listener, None, ready, stop_rx_metrics)));
    // The readiness table (status page, gauges): kept when either shows it.
    let readiness = if status_listener.is_some() || observer.is_some() {
        let board = Arc::new(status::board::Board::new(Arc::clone(&live)));
        let refresher = tokio::spawn(Arc::clone(&board).run(reloaded_rx, stop_rx_status.clone()));
        let page = status_listener.map(|listener| {
            tokio::spawn(status::server::serve(
                listener,
                Arc::clone(&board),
                Arc::clone(&store),
                stop_rx_status,
            ))
        });
        Some((refresher, page))
    } else {
        None
    };
    let server = tokio::spawn(smtp::serve(listeners, ctx));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (changed_tx, mut changed) = mpsc::unbounded_channel();
    let _watcher = match watch(path, changed_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
            None
        }
    };
    match open_files {
        Ok(r) => info!(
            from = %r.from.map_or("unlimited".into(), |n| n.to_string()),
            to = %r.to.map_or("unlimited".into(), |n| n.to_string()),
            "limit on open files"
        ),
        Err(e) => warn!(error = %e, "cannot raise the limit on open files"),
    }
    info!(
        config = %path.display(),
        openssl = openssl::version::version(),
        "smime-gateway started"
    );
    warn_cautions(&live.current().settings);
    systemd::ready();
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { info!("SIGINT: stopping"); break; }
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                systemd::reloading();
                reload(path, &live, &pool);
                reloaded_tx.send_modify(|n| *n += 1);
                systemd::ready();
            }
            Some(()) = changed.recv() => {
                // Editors and Kubernetes write in several steps: let them finish.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                while changed.try_recv().is_ok() {}
                info!(config = %path.display(), "configuration file changed: reloading");
                systemd::reloading();
                reload(path, &live, &pool);
                reloaded_tx.send_modify(|n| *n += 1);
                systemd::ready();
            }
        }
    }
    systemd::stopping();
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = runner.await;
    // What the journal still holds gets a moment to be written; a
    // database that does not answer does not hold up the stop.
    if let Some(mut w) = journal_writer {
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut w)
            .await
            .is_err()
        {
            warn!("journal records not yet written are dropped at stop");
            w.abort();
        }
    }
    for o in [observer, health].into_iter().flatten() {
        let _ = o.await;
    }
    if let Some((refresher, page)) = readiness {
        let _ = refresher.await;
        if let Some(p) = page {
            let _ = p.await;
        }
    }
    info!("stopped; the spool keeps every message not yet delivered");
    Ok(())
}

/// Watches the folder of the configuration file (files there are replaced
/// by rename) and signals every change that touches the file.
fn watch(path: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        // A Kubernetes ConfigMap swaps a "..data" symlink: any change in
        // the folder may be the file's.
        let ours = event.paths.iter().any(|p| {
            p.file_name().map(|n| n.to_os_string()) == name
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".."))
        });
        if ours {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Says, at start and reload, what the configuration does that an
/// operator may not mean (`Settings::cautions`).
fn warn_cautions(settings: &crate::config::Settings) {
    for caution in settings.cautions() {
        warn!(event = "caution", "{caution}");
    }
}

/// Loads the configuration again and swaps it in when valid; an invalid
/// one is logged and the running one kept. Listen addresses and the spool
/// directory take effect only at the next start.
fn reload(path: &Path, live: &Live, pool: &crate::delivery::Pool) {
    match Snapshot::load(path).map(|s| live.replace(s)) {
        Ok(()) => {
            pool.clear();
            info!(config = %path.display(), "configuration reloaded");
            warn_cautions(&live.current().settings);
        }
        Err(e) => error!(error = %e, "configuration not reloaded; the previous one stays in force"),
    }
}

/// Checks the configuration as `serve` would, without starting anything.
/// Returns the snapshot it loaded.
pub fn check(path: &Path) -> Result<Snapshot, DaemonError> {
    let snapshot = Snapshot::load(path)?;
    if let Some(t) = &snapshot.settings.server.tls {
        smtp::tls::acceptor(t)?;
    }
    Ok(snapshot)
}

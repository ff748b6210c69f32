//! Accepting connections: binding the configured addresses, enforcing
//! `max_connections` and `max_connections_per_ip`, and stopping on
//! shutdown while sessions in flight finish within a bound.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{session, Context};
use crate::config::limit_key;

/// Binds every address; fails naming the first one that cannot be bound.
pub async fn bind(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        out.push(l);
    }
    Ok(out)
}

/// Open connections, in all and per client address, and the most open
/// at once since the last time none were.
#[derive(Default)]
struct Limits {
    /// Open in all, open per address, and the peak (one lock for all).
    counts: Mutex<(usize, HashMap<IpAddr, usize>, usize)>,
}

/// After this many connections at once, the heap their sessions freed is
/// given back to the system when the last one closes (glibc keeps it
/// otherwise, and a burst of connections would leave the daemon at its
/// peak size for the large message that comes next).
const RELEASE_AFTER_CONNECTIONS: usize = 64;

/// Whether the connection that left `open` open (after closing) ends a
/// burst that reached `peak`; the peak is reset when none are open.
fn ends_burst(open: usize, peak: &mut usize) -> bool {
    if open > 0 {
        return false;
    }
    let burst = *peak >= RELEASE_AFTER_CONNECTIONS;
    *peak = 0;
    burst
}

/// Holds one connection slot; gives it back when dropped.
struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    fn take(self: &Arc<Self>, ip: IpAddr, total_max: usize, per_ip_max: usize) -> Option<Slot> {
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip, peak) = &mut *guard;
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= total_max || mine >= per_ip_max {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, mine + 1);
        *peak = (*peak).max(*total);
        Some(Slot {
            limits: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip, peak) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        let burst_ended = ends_burst(*total, peak);
        drop(guard);
        if burst_ended {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                drop(rt.spawn_blocking(crate::ossl::release_free_memory));
            }
        }
    }
}

/// A bound listener and whether it is the submission path
/// (`server.submission_listen`), whose mail alone may be signed when one
/// is configured.
pub struct Listener {
    pub socket: TcpListener,
    pub submission: bool,
}

/// Accepts on every listener until shutdown, then waits up to
/// `server.shutdown_timeout` for sessions in flight.
pub async fn serve(listeners: Vec<Listener>, ctx: Arc<Context>) {
    let tracker = TaskTracker::new();
    let limits = Arc::new(Limits::default());
    let mut loops = Vec::new();
    for listener in listeners {
        let ctx = Arc::clone(&ctx);
        let tracker = tracker.clone();
        let limits = Arc::clone(&limits);
        loops.push(tokio::spawn(accept_loop(listener, ctx, tracker, limits)));
    }
    for l in loops {
        let _ = l.await;
    }
    tracker.close();
    let bound = ctx.settings().server.shutdown_timeout;
    if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
        warn!(
            sessions = tracker.len(),
            "sessions still open after {}s; closing them",
            bound.as_secs()
        );
    }
}

async fn accept_loop(
    listener: Listener,
    ctx: Arc<Context>,
    tracker: TaskTracker,
    limits: Arc<Limits>,
) {
    let Listener {
        socket: listener,
        submission,
    } = listener;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause, do not spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let settings = ctx.settings();
        let ip = limit_key(peer.ip(), settings.server.ipv6_prefix);
        let Some(slot) = limits.take(
            ip,
            settings.server.max_connections,
            settings.server.max_connections_per_ip,
        ) else {
            info!(event = "refused", client = %peer, "connection limit reached");
            tracker.spawn(refuse(stream));
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tracker.spawn(async move {
            session::serve(stream, peer, ctx, submission).await;
            drop(slot);
        });
    }
    info!(address = ?listener.local_addr().ok(), "listener closed");
}

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream
            .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
            .await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_given_back_when_a_burst_of_connections_ends() {
        let mut peak = RELEASE_AFTER_CONNECTIONS;
        // Connections still open: not yet.
        assert!(!ends_burst(3, &mut peak));
        assert_eq!(peak, RELEASE_AFTER_CONNECTIONS);
        // The last one closes after a burst: once.
        assert!(ends_burst(0, &mut peak));
        assert_eq!(peak, 0);
        assert!(!ends_burst(0, &mut peak));
        // A few connections are no burst.
        let mut small = RELEASE_AFTER_CONNECTIONS - 1;
        assert!(!ends_burst(0, &mut small));
    }
}

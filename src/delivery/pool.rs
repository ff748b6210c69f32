//! Connections to next hops kept for further messages (Postfix's
//! connection cache, in small): after a transaction that ended cleanly the
//! connection is put back, and the next message for the same hop under the
//! same settings takes it and sends on it: at once after a transaction that
//! ended with the reply to its final dot (the hop has reset it), after RSET
//! otherwise. A kept connection that is idle for `relay.reuse_idle`, has
//! carried [`MAX_TRANSACTIONS`], fails or refuses RSET is closed; a reload
//! closes them all.
//!
//! A connection is only ever reused for the hop it was made for and under
//! the very settings (the same `Arc<Settings>`) it was verified with, so a
//! kept connection never carries mail under a TLS policy other than the
//! one its handshake was checked against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::smtp::SmtpConnection;

use crate::config::Settings;

/// Transactions one connection carries at most before it is closed.
pub const MAX_TRANSACTIONS: u32 = 100;

/// Time allowed for the QUIT of a connection being closed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to a next hop, with how many transactions it carried.
pub struct Connection {
    pub(super) smtp: SmtpConnection,
    pub(super) transactions: u32,
    /// It came from the pool (it was used before).
    pub(super) reused: bool,
    /// Its last transaction ended with the reply to the final dot, so the
    /// hop has reset it: the next one needs no RSET (RFC 5321, 4.1.1.4).
    pub(super) clean: bool,
}

impl Connection {
    pub(super) fn fresh(smtp: SmtpConnection) -> Self {
        Self {
            smtp,
            transactions: 0,
            reused: false,
            clean: true,
        }
    }
}

/// Which connections may stand in for each other: the settings they were
/// made under (by identity) and the hop. The settings fix the TLS policy
/// of the hop (`relay.tls`, its pin, CA and name) and the EHLO name.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    settings: usize,
    hop: String,
}

impl Key {
    fn new(settings: &Arc<Settings>, hop: &str) -> Self {
        Self {
            settings: Arc::as_ptr(settings) as usize,
            hop: hop.to_string(),
        }
    }
}

struct Kept {
    conn: Connection,
    since: Instant,
    /// Keeps the settings alive, so the key's address is never reused by
    /// other settings while this connection is kept.
    settings: Arc<Settings>,
}

/// The kept connections of a running daemon.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<Kept>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Pool {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Kept>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections kept now, all hops together.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// A kept connection for `hop` made under `settings`, most recently
    /// used first, not yet idle too long. The caller checks one that is not
    /// clean with RSET.
    pub(super) fn take(&self, settings: &Arc<Settings>, hop: &str) -> Option<Connection> {
        if settings.relay.reuse_connections == 0 {
            return None;
        }
        let limit = settings.relay.reuse_idle;
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.lock();
            let list = idle.get_mut(&Key::new(settings, hop))?;
            let mut found = None;
            while let Some(mut k) = list.pop() {
                // Anything the hop said while the connection was kept (a
                // 421, a reply too many) would be read as the answer to
                // the next command: such a connection is closed instead.
                if k.since.elapsed() < limit && k.conn.smtp.in_step() {
                    found = Some(k.conn);
                    break;
                }
                stale.push(k.conn);
            }
            found
        };
        close_later(stale);
        found.map(|mut c| {
            c.reused = true;
            c
        })
    }

    /// Puts `conn` back after a transaction that ended cleanly, or closes
    /// it when it has done its share or the hop has enough kept.
    pub(super) async fn put(&self, settings: &Arc<Settings>, hop: &str, mut conn: Connection) {
        let in_step = conn.smtp.in_step();
        let room = {
            let mut idle = self.lock();
            let list = idle.entry(Key::new(settings, hop)).or_default();
            if conn.transactions < MAX_TRANSACTIONS
                && list.len() < settings.relay.reuse_connections
                && in_step
            {
                list.push(Kept {
                    conn,
                    since: Instant::now(),
                    settings: Arc::clone(settings),
                });
                None
            } else {
                Some(conn)
            }
        };
        if let Some(mut c) = room {
            quit(&mut c).await;
        }
    }

    /// Closes connections idle longer than their settings allow.
    pub async fn close_idle(&self) {
        let expired: Vec<Connection> = {
            let mut idle = self.lock();
            let mut out = Vec::new();
            for list in idle.values_mut() {
                let (old, young): (Vec<Kept>, Vec<Kept>) = list
                    .drain(..)
                    .partition(|k| k.since.elapsed() >= k.settings.relay.reuse_idle);
                *list = young;
                out.extend(old.into_iter().map(|k| k.conn));
            }
            idle.retain(|_, l| !l.is_empty());
            out
        };
        for mut c in expired {
            quit(&mut c).await;
        }
    }

    /// Closes every kept connection (a reload, the end of the daemon).
    pub async fn close_all(&self) {
        let all: Vec<Connection> = self
            .lock()
            .drain()
            .flat_map(|(_, l)| l.into_iter().map(|k| k.conn))
            .collect();
        for mut c in all {
            quit(&mut c).await;
        }
    }

    /// Takes every kept connection out now and closes them in the
    /// background (for callers outside async code, e.g. a reload).
    pub fn clear(&self) {
        let all: Vec<Connection> = self
            .lock()
            .drain()
            .flat_map(|(_, l)| l.into_iter().map(|k| k.conn))
            .collect();
        close_later(all);
    }
}

/// Closes `conns` in a task of its own (dropped, which closes the socket,
/// when there is no runtime).
fn close_later(conns: Vec<Connection>) {
    if conns.is_empty() {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            for mut c in conns {
                quit(&mut c).await;
            }
        });
    }
}

async fn quit(c: &mut Connection) {
    let _ = tokio::time::timeout(QUIT_TIMEOUT, c.smtp.quit()).await;
}

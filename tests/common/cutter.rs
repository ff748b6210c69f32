//! A TCP relay on 127.0.0.1 that breaks one connection in the middle: it
//! passes bytes both ways to a server until what the client has sent on a
//! connection satisfies a test's rule, lets through only as much as the
//! rule says, then either closes both sides or stalls (takes in what the
//! client sends, passes nothing on, keeps the connection open until the
//! client gives up). Once; later connections pass untouched. Plays a
//! network or a server that goes away, or hangs, mid-command.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// Given everything the client has sent on one connection so far, how many
/// of those bytes the server gets before the cut (`None`: no cut yet).
pub type CutRule = dyn Fn(&[u8]) -> Option<usize> + Send + Sync;

/// What happens at the cut.
#[derive(Clone, Copy)]
pub enum Then {
    /// Both sides closed.
    Close,
    /// Nothing passed on from then on; the connection held open.
    Stall,
}

pub struct Cutter {
    pub port: u16,
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
}

impl Cutter {
    /// Relays 127.0.0.1:`port` to 127.0.0.1:`server`, breaking the first
    /// connection on which `rule` answers as `then` says.
    pub fn start(server: u16, then: Then, rule: Box<CutRule>) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(AtomicBool::new(false));
        let rule: Arc<CutRule> = Arc::from(rule);
        let (a, c) = (armed.clone(), cut.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", server)) else {
                    continue;
                };
                let (a, c, rule) = (a.clone(), c.clone(), rule.clone());
                thread::spawn(move || relay(client, server, then, &a, &c, &*rule));
            }
        });
        Cutter { port, armed, cut }
    }

    /// Whether the cut has happened.
    pub fn has_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// No cut from now on.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

fn relay(
    client: TcpStream,
    server: TcpStream,
    then: Then,
    armed: &AtomicBool,
    cut: &AtomicBool,
    rule: &CutRule,
) {
    let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from_server.read(&mut buf) {
            if n == 0 || to_client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let (mut from_client, mut to_server) = (client, server);
    let mut seen = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = seen.len();
        seen.extend_from_slice(&buf[..n]);
        if armed.load(Ordering::SeqCst) {
            if let Some(limit) = rule(&seen) {
                if armed.swap(false, Ordering::SeqCst) {
                    let pass = limit.clamp(before, seen.len()) - before;
                    let _ = to_server.write_all(&buf[..pass]);
                    cut.store(true, Ordering::SeqCst);
                    if let Then::Stall = then {
                        // Until the client gives up.
                        while matches!(from_client.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    let _ = to_server.shutdown(Shutdown::Both);
                    let _ = from_client.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        if to_server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_server.shutdown(Shutdown::Write);
}

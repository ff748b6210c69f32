//! The gateway's one HTTP stack (hyper, HTTP/1.1), which the metrics
//! listener (`observe`) and the status page (`status::server`) share:
//! binding, and serving bounded so that whoever reaches the port cannot
//! take the descriptors, memory or log the SMTP side needs, nor keep a
//! probe out (connections at most 32, 4 per address or IPv6 /64, 10 s
//! each, the header within 2 s and 16 KiB; when all are taken, or the
//! address's four, an idle connection makes room: one kept open after an
//! answer first, then one that has had a second to ask, then one of an
//! address that keeps opening without asking, then the oldest).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::limit_key;

/// Binds an HTTP listener of the gateway (`what` names it in the log and
/// in the error).
pub async fn bind_named(addr: SocketAddr, what: &'static str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })?;
    info!(address = %addr, "{what} listening");
    Ok(listener)
}

/// Connections one HTTP listener serves at once; one more is closed as
/// soon as it is accepted. A scraper or a browser needs a few.
pub const MAX_HTTP_CONNECTIONS: usize = 32;
/// Of those, from one address at once.
pub const MAX_HTTP_CONNECTIONS_PER_PEER: usize = 4;
/// How long one connection may last, request and answer together.
const HTTP_CONNECTION_TIME: Duration = Duration::from_secs(10);
/// How long a request's header section may take to arrive.
const HTTP_HEADER_TIME: Duration = Duration::from_secs(2);
/// The most a request's header section may take (hyper's read buffer).
const HTTP_MAX_BUFFER: usize = 16 * 1024;

/// How long a new connection waits for the room an ended one leaves.
const HTTP_EVICTION_WAIT: Duration = Duration::from_millis(200);
/// How long a new connection has to send its request before it is ended
/// ahead of younger ones to make room (half the time it has for it).
const HTTP_YOUNG: Duration = Duration::from_secs(1);

/// The gateway's one HTTP stack (hyper, HTTP/1.1): accepts on `listener`
/// until shutdown and answers each request with `answer`. Bounded, so
/// that whoever reaches the port cannot take the descriptors, memory or
/// log the SMTP side needs, nor keep a probe out: at most
/// [`MAX_HTTP_CONNECTIONS`] at once and [`MAX_HTTP_CONNECTIONS_PER_PEER`]
/// from one address (an IPv6 /64 counting as one; more are closed at
/// once), each at most 10 seconds, its header within 2 seconds and
/// 16 KiB. When all are taken, a new connection ends an idle one
/// ([`to_end`]), so addresses holding every connection keep no probe
/// from elsewhere out. A failed accept (out of descriptors) is
/// logged and pauses the loop for 100 ms instead of spinning.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    answer: F,
) where
    F: Fn(Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    let peers: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let serving: Serving = Arc::default();
    let opening: Arc<Mutex<Openings>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let key = limit_key(peer.ip(), 64);
        let now = Instant::now();
        lock(&opening).note(key, now);
        // An address holding its four: one of its own idle connections
        // makes room (a probe is not kept out by connections opened from
        // its own address).
        let peer_slot = match PeerSlot::take(&peers, key) {
            Some(slot) => slot,
            None => {
                let room = match end_one(&serving, &opening, now, |e| e.peer == key) {
                    true => PeerSlot::given_back(&peers, key).await,
                    false => None,
                };
                match room {
                    Some(slot) => slot,
                    None => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !end_one(&serving, &opening, now, |_| true) {
                    // Every connection is answering a request.
                    drop(stream);
                    continue;
                }
                let room =
                    tokio::time::timeout(HTTP_EVICTION_WAIT, Arc::clone(&slots).acquire_owned())
                        .await;
                match room {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let answer = answer.clone();
        next_id += 1;
        let entry = Served {
            serving: Arc::clone(&serving),
            id: next_id,
        };
        let busy = Arc::new(AtomicUsize::new(0));
        let busy_here = Arc::clone(&busy);
        let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asked_here = Arc::clone(&asked);
        let opening_here = Arc::clone(&opening);
        // Held while the task is spawned, so that it is listed before it
        // can end and unlist itself.
        let mut list = lock(&serving);
        let task = tokio::spawn(async move {
            let _entry = entry;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                // Busy from the request until its answer is made.
                let mark = Busy::mark(&busy_here);
                // A connection that asks is not held idle: its opening
                // is taken back.
                if !asked_here.swap(true, Ordering::SeqCst) {
                    lock(&opening_here).asked(key, Instant::now());
                }
                let reply = answer(req, peer);
                async move {
                    let answer = reply.await;
                    drop(mark);
                    Ok::<_, Infallible>(answer)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HTTP_HEADER_TIME)
                .max_buf_size(HTTP_MAX_BUFFER)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(HTTP_CONNECTION_TIME, conn).await;
            drop((slot, peer_slot));
        });
        list.insert(
            next_id,
            Listed {
                task: task.abort_handle(),
                busy,
                asked,
                peer: key,
                opened: now,
            },
        );
    }
}

/// The connections being served, oldest first.
type Serving = Arc<Mutex<BTreeMap<u64, Listed>>>;

/// A connection being served: what ends it, how many of its requests are
/// being answered, whether it has asked anything, whose it is (the
/// address, an IPv6 /64) and when it was accepted.
struct Listed {
    task: tokio::task::AbortHandle,
    busy: Arc<AtomicUsize>,
    asked: Arc<std::sync::atomic::AtomicBool>,
    peer: IpAddr,
    opened: Instant,
}

/// Ends the connection [`to_end`] chooses among those `which` selects;
/// false when none may be ended (all are answering a request).
fn end_one(
    serving: &Serving,
    opening: &Mutex<Openings>,
    now: Instant,
    which: impl Fn(&Listed) -> bool,
) -> bool {
    let ended = {
        let mut list = lock(serving);
        let opening = lock(opening);
        let choice = to_end(
            list.iter()
                .filter(|(_, e)| which(e))
                .map(|(id, e)| Candidate {
                    id: *id,
                    busy: e.busy.load(Ordering::SeqCst) > 0,
                    asked: e.asked.load(Ordering::SeqCst),
                    young: now.saturating_duration_since(e.opened) < HTTP_YOUNG,
                    rate: opening.rate(e.peer, now),
                }),
        );
        choice.and_then(|id| list.remove(&id))
    };
    match ended {
        Some(e) => {
            e.task.abort();
            true
        }
        None => false,
    }
}

/// What [`to_end`] weighs of a connection.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Its place in [`Serving`] (larger: accepted later).
    id: u64,
    /// A request of it is being answered.
    busy: bool,
    /// It has asked something before (kept open after an answer).
    asked: bool,
    /// Accepted less than [`HTTP_YOUNG`] ago.
    young: bool,
    /// How many connections its address opened lately without asking
    /// anything ([`Openings::rate`]).
    rate: u64,
}

/// A request being answered on a connection, until dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn mark(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Unasked openings (in thousandths, [`Openings::rate`]) above which an
/// address counts as one that keeps opening without asking.
const OPENING_WITHOUT_ASKING: u64 = 2000;

/// Which connection ends to make room for a new one. Never one whose
/// request is being answered. First one kept open after an answer (its
/// client opens another when it wants more); then one that has had a
/// second to ask and has not; then a young one of an address that keeps
/// opening connections without asking (the one whose address did so the
/// most, its newest); then the oldest. A probe's new connection, which
/// asks at once, is never the one ended unless 32 connections were
/// opened, and not asked on, after it and before its request; a flood
/// that asks makes room with its own answered connections, one that does
/// not ask with its own unasked ones, and nobody can end a request being
/// answered.
fn to_end(listed: impl Iterator<Item = Candidate>) -> Option<u64> {
    listed
        .filter(|c| !c.busy)
        .max_by_key(|c| {
            let class = match () {
                _ if c.asked => 3,
                _ if !c.young => 2,
                _ if c.rate > OPENING_WITHOUT_ASKING => 1,
                _ => 0,
            };
            let within = if class == 0 {
                u128::from(u64::MAX - c.id)
            } else {
                (u128::from(c.rate) << 64) | u128::from(c.id)
            };
            (class, within)
        })
        .map(|c| c.id)
}

/// Addresses (IPv6 /64s) remembered for how many connections they opened
/// lately; beyond it the quietest are forgotten.
const OPENINGS_KEPT: usize = 4096;
/// How long an opening counts fully; its weight halves every such span.
const OPENINGS_HALF_LIFE: Duration = Duration::from_secs(10);

/// How many connections each address opened lately and asked nothing on
/// (yet), decaying by half every [`OPENINGS_HALF_LIFE`].
#[derive(Default)]
struct Openings {
    seen: HashMap<IpAddr, (f64, Instant)>,
}

impl Openings {
    fn decayed(count: f64, since: Instant, now: Instant) -> f64 {
        let halves =
            now.saturating_duration_since(since).as_secs_f64() / OPENINGS_HALF_LIFE.as_secs_f64();
        count * 0.5f64.powf(halves)
    }

    /// One more connection opened by `ip` at `now`.
    fn note(&mut self, ip: IpAddr, now: Instant) {
        let count = self
            .seen
            .get(&ip)
            .map_or(0.0, |(c, at)| Self::decayed(*c, *at, now));
        self.seen.insert(ip, (count + 1.0, now));
        if self.seen.len() > OPENINGS_KEPT {
            // The quietest half goes.
            let mut rates: Vec<f64> = self
                .seen
                .values()
                .map(|(c, at)| Self::decayed(*c, *at, now))
                .collect();
            rates.sort_by(f64::total_cmp);
            let median = rates[rates.len() / 2];
            self.seen
                .retain(|k, (c, at)| *k == ip || Self::decayed(*c, *at, now) > median);
        }
    }

    /// A connection `ip` opened asked something at `now`: its opening
    /// no longer counts.
    fn asked(&mut self, ip: IpAddr, now: Instant) {
        if let Some((count, at)) = self.seen.get_mut(&ip) {
            *count = (Self::decayed(*count, *at, now) - 1.0).max(0.0);
            *at = now;
        }
    }

    /// How many connections `ip` opened lately, in thousandths.
    fn rate(&self, ip: IpAddr, now: Instant) -> u64 {
        self.seen
            .get(&ip)
            .map_or(0, |(c, at)| (Self::decayed(*c, *at, now) * 1000.0) as u64)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection's place in [`Serving`], given up when its task ends
/// (served, timed out or ended to make room).
struct Served {
    serving: Serving,
    id: u64,
}

impl Drop for Served {
    fn drop(&mut self) {
        lock(&self.serving).remove(&self.id);
    }
}

/// One of the connections an address holds on an HTTP listener, given
/// back when dropped.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, unless it holds [`MAX_HTTP_CONNECTIONS_PER_PEER`].
    /// The place of `ip` that a connection just ended gives back: the
    /// ended task frees it when it is next run, so it is let run, then
    /// waited for a little at a time, at most [`HTTP_EVICTION_WAIT`].
    async fn given_back(peers: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let deadline = Instant::now() + HTTP_EVICTION_WAIT;
        let mut turns = 0u32;
        while Instant::now() < deadline {
            if turns < 16 {
                tokio::task::yield_now().await;
                turns += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if let Some(slot) = Self::take(peers, ip) {
                return Some(slot);
            }
        }
        None
    }

    fn take(peers: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let mut held = peers.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= MAX_HTTP_CONNECTIONS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            peers: Arc::clone(peers),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, busy: bool, young: bool, rate: u64) -> Candidate {
        Candidate {
            id,
            busy,
            asked: false,
            young,
            rate,
        }
    }

    #[test]
    fn room_is_made_by_an_idle_connection_of_whoever_opens_without_asking() {
        // The probe (1, one opening) is oldest; rate 40 is the flood's.
        let listed = [
            c(1, false, true, 1000),
            c(2, true, true, 40_000),
            c(3, false, true, 30_000),
            c(4, false, true, 40_000),
            c(5, false, true, 40_000),
        ];
        assert_eq!(to_end(listed.into_iter()), Some(5));
        // Answering a request: never.
        assert_eq!(
            to_end([c(1, true, false, 1000), c(2, true, false, 40_000)].into_iter()),
            None
        );
        // Equal rates above the mark: the newest.
        assert_eq!(
            to_end([c(7, false, true, 3000), c(9, false, true, 3000)].into_iter()),
            Some(9)
        );
    }

    #[test]
    fn a_connection_that_had_its_second_to_ask_goes_before_a_young_one() {
        // Review 17: a probe polling often opened the most; its young
        // connection, not yet asking, was ended for a flood's from many
        // addresses, each opening less.
        let listed = [
            c(1, false, false, 800),
            c(2, false, false, 900),
            c(3, false, true, 14_000),
        ];
        assert_eq!(to_end(listed.into_iter()), Some(2));
        // All young: by openings without asking, as before.
        let listed = [c(1, false, true, 800), c(3, false, true, 14_000)];
        assert_eq!(to_end(listed.into_iter()), Some(3));
    }

    #[test]
    fn an_answered_connection_kept_open_goes_first_then_the_oldest() {
        // Review 18: a flood from hundreds of addresses asked at once on
        // each connection (so its openings were taken back) and closed it
        // before a second; the probe's new connection, with one opening
        // not yet taken back, was ended.
        let mut answered = c(1, false, true, 0);
        answered.asked = true;
        let probe = c(40, false, true, 1000);
        assert_eq!(to_end([probe, answered].into_iter()), Some(1));
        // Young ones of addresses that do not keep opening without
        // asking: the oldest, never the newcomer.
        let listed = [c(38, false, true, 900), c(39, false, true, 0), probe];
        assert_eq!(to_end(listed.into_iter()), Some(38));
    }

    #[test]
    fn openings_are_counted_per_address_and_fade() {
        let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
        let t0 = Instant::now();
        let mut o = Openings::default();
        for _ in 0..40 {
            o.note(ip(9), t0);
        }
        o.note(ip(2), t0);
        assert_eq!(o.rate(ip(9), t0), 40_000);
        assert_eq!(o.rate(ip(2), t0), 1000);
        assert_eq!(o.rate(ip(3), t0), 0);
        assert_eq!(o.rate(ip(9), t0 + OPENINGS_HALF_LIFE), 20_000);
        assert!(o.rate(ip(9), t0 + OPENINGS_HALF_LIFE * 20) < 100);
        // Bounded: the quietest are forgotten, the one just noted kept.
        for i in 0..(OPENINGS_KEPT as u32 + 10) {
            o.note(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(o.seen.len() <= OPENINGS_KEPT + 1);
        assert_eq!(o.rate(ip(9), t0), 40_000);
    }

    #[test]
    fn an_opening_that_asked_no_longer_counts() {
        // A probe polling every second: each connection asks at once.
        let ip = IpAddr::from([127, 0, 0, 2]);
        let t0 = Instant::now();
        let mut o = Openings::default();
        for i in 0..30u32 {
            let at = t0 + Duration::from_secs(i.into());
            o.note(ip, at);
            o.asked(ip, at + Duration::from_millis(1));
        }
        assert!(o.rate(ip, t0 + Duration::from_secs(30)) < 10);
        // Never below nothing.
        o.asked(ip, t0 + Duration::from_secs(31));
        assert_eq!(o.rate(ip, t0 + Duration::from_secs(31)), 0);
    }
}

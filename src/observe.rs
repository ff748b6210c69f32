//! The metrics listener (`[metrics] listen`): `/metrics` in Prometheus text
//! format (to this host or the token's holder: `http_access`), `/healthz`
//! (the process answers) and `/readyz` (the spool is writable, the
//! configuration is loaded, the next hops accept connections; checked at
//! most every ten seconds). Its HTTP stack ([`serve_http`], bounded in
//! connections, time and header size) serves the status page too.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{limit_key, validate::parse_host_port, Settings, SettingsSource};
use crate::http_access::{self, Access};

struct Ready {
    settings: Arc<dyn SettingsSource>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Ready {
    async fn check(&self) -> Result<(), String> {
        if let Some((at, r)) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if at.elapsed() < Duration::from_secs(10) {
                return r.clone();
            }
        }
        let settings = self.settings.settings();
        let result = probe(&settings).await;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), result.clone()));
        result
    }
}

async fn probe(settings: &Settings) -> Result<(), String> {
    let mut problems = Vec::new();
    let probe = settings.spool.dir.join("tmp").join(".readyz");
    let writable = tokio::fs::write(&probe, b"ok").await;
    let _ = tokio::fs::remove_file(&probe).await;
    if let Err(e) = writable {
        problems.push(format!("spool not writable: {e}"));
    }
    for hop in [&settings.relay.internal, &settings.relay.external] {
        let Ok((host, port)) = parse_host_port(hop) else {
            continue;
        };
        let connect = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect((host.as_str(), port)),
        )
        .await;
        if !matches!(connect, Ok(Ok(_))) {
            problems.push(format!("next hop {hop} not reachable"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Binds the metrics listener (at start, so a taken port stops the daemon).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_named(addr, "metrics").await
}

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

/// How long a new connection waits for the room the oldest one leaves.
const HTTP_EVICTION_WAIT: Duration = Duration::from_millis(200);

/// The gateway's one HTTP stack (hyper, HTTP/1.1): accepts on `listener`
/// until shutdown and answers each request with `answer`. Bounded, so
/// that whoever reaches the port cannot take the descriptors, memory or
/// log the SMTP side needs, nor keep a probe out: at most
/// [`MAX_HTTP_CONNECTIONS`] at once and [`MAX_HTTP_CONNECTIONS_PER_PEER`]
/// from one address (an IPv6 /64 counting as one; more are closed at
/// once), each at most 10 seconds, its header within 2 seconds and
/// 16 KiB. When all are taken, a new connection ends the oldest one
/// (so a few addresses holding every connection keep no probe from
/// elsewhere out). A failed accept (out of descriptors) is logged and
/// pauses the loop for 100 ms instead of spinning.
pub async fn serve_http<F, Fut>(
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
        let Some(peer_slot) = PeerSlot::take(&peers, limit_key(peer.ip(), 64)) else {
            drop(stream);
            continue;
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let oldest = lock(&serving).pop_first();
                if let Some((_, task)) = oldest {
                    task.abort();
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
        // Held while the task is spawned, so that it is listed before it
        // can end and unlist itself.
        let mut list = lock(&serving);
        let task = tokio::spawn(async move {
            let _entry = entry;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let reply = answer(req, peer);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HTTP_HEADER_TIME)
                .max_buf_size(HTTP_MAX_BUFFER)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(HTTP_CONNECTION_TIME, conn).await;
            drop((slot, peer_slot));
        });
        list.insert(next_id, task.abort_handle());
    }
}

/// The connections being served, oldest first, each with what ends it.
type Serving = Arc<Mutex<BTreeMap<u64, tokio::task::AbortHandle>>>;

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

/// The answer to a request `http_access` does not let read, when it
/// does not; the token is read from `token_file` (its setting `key`) for
/// each request, so a new token needs no reload.
pub fn refused<B>(
    req: &Request<B>,
    peer: SocketAddr,
    token_file: Option<&std::path::Path>,
    key: &str,
) -> Option<Response<Full<Bytes>>> {
    let token_text = match token_file {
        Some(file) => match std::fs::read_to_string(file) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(file = %file.display(), error = %e, "{key}: cannot read the token");
                return Some(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the token cannot be read\n".into(),
                ));
            }
        },
        None => None,
    };
    let token = token_text.as_deref().and_then(http_access::token_of);
    if token_text.is_some() && token.is_none() {
        // Emptied or cut short (a rotation half done): no one, rather
        // than whoever is on this host without a token.
        warn!(%key, "the token file holds no token of 16 characters or more");
        return Some(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the token cannot be read\n".into(),
        ));
    }
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let host = req.headers().get(hyper::header::HOST).map(|v| v.as_bytes());
    match http_access::decide(peer.ip(), host, header, token) {
        Access::Allowed => None,
        Access::HostOnly => Some(text(
            StatusCode::FORBIDDEN,
            format!("served to this host only: set {key} to let other hosts in with a token\n"),
        )),
        Access::ForeignName => Some(text(
            StatusCode::FORBIDDEN,
            format!(
                "served without a token only as localhost or a loopback address: \
                 set {key} to use another name\n"
            ),
        )),
        Access::WrongToken => {
            let mut r = text(StatusCode::UNAUTHORIZED, "a token is needed\n".into());
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"smime-gateway\""),
            );
            Some(r)
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until shutdown.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    settings: Arc<dyn SettingsSource>,
    shutdown: watch::Receiver<bool>,
) {
    let ready = Arc::new(Ready {
        settings,
        last: Mutex::new(None),
    });
    serve_http(listener, "metrics", shutdown, move |req, peer| {
        let (handle, ready) = (handle.clone(), Arc::clone(&ready));
        async move {
            match req.uri().path() {
                "/metrics" => {
                    let token = ready.settings.settings().metrics.token_file.clone();
                    match refused(&req, peer, token.as_deref(), "metrics.token_file") {
                        Some(no) => no,
                        None => text(StatusCode::OK, handle.render()),
                    }
                }
                "/healthz" => text(StatusCode::OK, "ok\n".into()),
                "/readyz" => match ready.check().await {
                    Ok(()) => text(StatusCode::OK, "ready\n".into()),
                    Err(why) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                },
                _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
            }
        }
    })
    .await
}

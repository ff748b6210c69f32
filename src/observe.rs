//! The metrics listener (`[metrics] listen`): `/metrics` in Prometheus text
//! format (to this host or the token's holder: `http_access`), `/healthz`
//! (the process answers) and `/readyz` (the spool is writable, the
//! configuration is loaded, the next hops accept connections; checked at
//! most every ten seconds); and the health listener (`[metrics]
//! health_listen`), the last two only, for the prober, on a port whose
//! places no connection to the others takes. Both are served on the
//! gateway's HTTP stack (`http_stack`), which the status page shares;
//! each listener keeps its own count of connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::warn;

use crate::config::{validate::parse_host_port, Settings, SettingsSource};
use crate::http_access::{self, Access};
use crate::http_stack;

/// The readiness check, its last answer kept for ten seconds; shared by
/// the listeners that serve `/readyz`.
pub struct Ready {
    settings: Arc<dyn SettingsSource>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Ready {
    pub fn new(settings: Arc<dyn SettingsSource>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            last: Mutex::new(None),
        })
    }

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
    http_stack::bind_named(addr, "metrics").await
}

/// Binds the health listener, likewise.
pub async fn bind_health(addr: SocketAddr) -> std::io::Result<TcpListener> {
    http_stack::bind_named(addr, "health").await
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

/// Serves `/healthz`, `/readyz` and, given the exporter's `metrics`,
/// `/metrics` until shutdown.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    ready: Arc<Ready>,
    shutdown: watch::Receiver<bool>,
) {
    let what = if metrics.is_some() {
        "metrics"
    } else {
        "health"
    };
    http_stack::serve(listener, what, shutdown, move |req, peer| {
        let (metrics, ready) = (metrics.clone(), Arc::clone(&ready));
        async move {
            match (req.uri().path(), metrics) {
                ("/metrics", Some(handle)) => {
                    let token = ready.settings.settings().metrics.token_file.clone();
                    match refused(&req, peer, token.as_deref(), "metrics.token_file") {
                        Some(no) => no,
                        None => text(StatusCode::OK, handle.render()),
                    }
                }
                ("/healthz", _) => text(StatusCode::OK, "ok\n".into()),
                ("/readyz", _) => match ready.check().await {
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

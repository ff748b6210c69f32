//! Certificate lookup in an LDAP directory (e.g. the OCES2 public
//! directory): `(mail=<address>)` under a base, the certificate attribute
//! in binary. A server that cannot be reached is a temporary failure.
//!
//! An answer counts only for the address asked: a certificate is taken
//! when the certificate itself names that address, or, from a server
//! reached over verified TLS, when its entry's `mail` does; anything else
//! the server returns is ignored and logged. `ldaps://` and StartTLS
//! (`starttls = true`) verify the server against `tls_ca` or the system's
//! roots; plain `ldap://` is unauthenticated: anyone on the path can write
//! its entries, so their `mail` binds nothing (and `pki::resolve` does not
//! encrypt to its answers at all).

use std::sync::Arc;
use std::time::Duration;

use ldap3::{ldap_escape, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, StdStream};
use openssl::x509::X509;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::config::LdapSettings;

/// Why a directory could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("LDAP {url}: cannot connect: {message}")]
    Connect { url: String, message: String },
    #[error("LDAP {url}: search failed: {message}")]
    Search { url: String, message: String },
    #[error("LDAP {url}: timed out")]
    Timeout { url: String },
    #[error("LDAP {url}: tls_ca {file}: {message}")]
    Ca {
        url: String,
        file: String,
        message: String,
    },
}

/// Most octets one lookup takes from a server, TLS included: ldap3 holds
/// an answer whole in memory with no bound of its own (a hostile server,
/// or anyone on the path of plain `ldap://`, sent 1.5 GB in 3 s, review
/// 25), and an answer of empty values takes some 25 times its size once
/// read (review 26). An answer that goes on is cut there and counts as a
/// failed search. A directory's answer for one address is a few
/// certificates of 2 kB.
pub const MAX_ANSWER: u64 = 1 << 20;
/// Most lookups under way at once to one server, so that memory for
/// answers is bounded however many messages ask (each waits its turn
/// within its timeout). Per server: a slow or hostile directory holding
/// its turns keeps no other directory from being asked (review 27).
const MAX_LOOKUPS: usize = 4;

/// The turns of [`MAX_LOOKUPS`] for the server at `url`.
fn turns(url: &str) -> Arc<tokio::sync::Semaphore> {
    type Turns = std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>;
    static TURNS: std::sync::OnceLock<Turns> = std::sync::OnceLock::new();
    let mut turns = TURNS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(
        turns
            .entry(url.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS))),
    )
}

/// Certificates the directory holds for `address`.
pub async fn lookup(cfg: &LdapSettings, address: &str) -> Result<Vec<X509>, LdapError> {
    let url = cfg.url.clone();
    let filter = cfg.filter.replace("{address}", &ldap_escape(address));
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(cfg.timeout)
        .set_starttls(cfg.starttls);
    if let Some(config) = tls_config(cfg)? {
        settings = settings.set_config(config);
    }
    let work = async {
        // Held for the lookup: released when it ends or times out.
        let turns = turns(&cfg.url);
        let _turn = turns.acquire().await.map_err(|e| LdapError::Connect {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let connect = |message: String| LdapError::Connect {
            url: url.clone(),
            message,
        };
        let stream = capped(&cfg.url, MAX_ANSWER).await.map_err(connect)?;
        let settings = settings.set_std_stream(StdStream::Tcp(stream));
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
            .await
            .map_err(|e| connect(e.to_string()))?;
        ldap3::drive!(conn);
        let search = |e: ldap3::LdapError| LdapError::Search {
            url: url.clone(),
            message: e.to_string(),
        };
        let result = ldap
            .with_timeout(cfg.timeout)
            .search(
                &cfg.base,
                Scope::Subtree,
                &filter,
                vec![cfg.attribute.as_str(), "mail"],
            )
            .await
            .map_err(search)
            .and_then(|r| r.success().map_err(search));
        let _ = ldap.unbind().await;
        let (entries, _) = result?;
        let mut certs = Vec::new();
        for entry in entries {
            let entry = SearchEntry::construct(entry);
            let listed = cfg.authenticated()
                && entry
                    .attrs
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("mail"))
                    .flat_map(|(_, v)| v)
                    .any(|m| crate::mail::address::same(m.trim(), address));
            for der in entry.bin_attrs.values().flatten() {
                let Ok(cert) = X509::from_der(der) else {
                    continue;
                };
                if listed || names(&cert, address) {
                    certs.push(cert);
                } else {
                    tracing::warn!(event = "ldap-mismatch", url = %url, dn = %entry.dn,
                        address = %address,
                        "LDAP answer is for another address: certificate ignored");
                }
            }
        }
        Ok(certs)
    };
    match tokio::time::timeout(cfg.timeout + Duration::from_secs(1), work).await {
        Ok(r) => r,
        Err(_) => Err(LdapError::Timeout { url }),
    }
}

/// A connection to the server `url` names, through a relay on loopback
/// that passes at most `cap` octets from the server and then closes both
/// sides (what ldap3 reads is then bounded; TLS runs through it as it
/// would on the server's own connection).
async fn capped(url: &str, cap: u64) -> Result<std::net::TcpStream, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let port = parsed
        .port()
        .unwrap_or(if parsed.scheme() == "ldaps" { 636 } else { 389 });
    let host = match parsed.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => "localhost".to_string(),
    };
    let server = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| e.to_string())?;
    let ours = TcpStream::connect(listener.local_addr().map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let mine = ours.local_addr().map_err(|e| e.to_string())?;
    // Only the connection just made is taken (another process on this
    // host could connect to the port first).
    let relay_end = loop {
        let (s, from) = listener.accept().await.map_err(|e| e.to_string())?;
        if from == mine {
            break s;
        }
    };
    tokio::spawn(relay(relay_end, server, cap));
    ours.into_std().map_err(|e| e.to_string())
}

/// Passes octets both ways between ldap3's end and the server, at most
/// `cap` from the server; ends (closing both) when either side does.
async fn relay(ldap3_end: TcpStream, server: TcpStream, cap: u64) {
    let (mut from_ldap3, mut to_ldap3) = ldap3_end.into_split();
    let (from_server, mut to_server) = server.into_split();
    let mut from_server = from_server.take(cap);
    tokio::select! {
        _ = tokio::io::copy(&mut from_ldap3, &mut to_server) => {}
        _ = tokio::io::copy(&mut from_server, &mut to_ldap3) => {}
    }
}

/// True when `cert` names `address` (subjectAltName or emailAddress).
fn names(cert: &X509, address: &str) -> bool {
    cert.to_der()
        .ok()
        .and_then(|d| super::oces::classify(&d).ok())
        .is_some_and(|i| {
            i.emails
                .iter()
                .any(|e| crate::mail::address::same(e, address))
        })
}

/// The TLS configuration for `ldaps://` and StartTLS with `tls_ca`; none:
/// ldap3's default (the system's roots).
fn tls_config(cfg: &LdapSettings) -> Result<Option<Arc<ClientConfig>>, LdapError> {
    let Some(file) = &cfg.tls_ca else {
        return Ok(None);
    };
    let fail = |message: String| LdapError::Ca {
        url: cfg.url.clone(),
        file: file.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

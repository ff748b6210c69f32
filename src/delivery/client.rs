//! One SMTP transaction towards a next hop with lettre's connection API,
//! driven command by command so each recipient gets its own outcome: a
//! refused RCPT fails that recipient only, and a reply to DATA applies to
//! the recipients that were accepted. Connections are kept for further
//! messages to the same hop in a [`Pool`].

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::transport::smtp::Error as SmtpError;

use super::pool::{Connection, Pool};
use crate::config::{validate::parse_host_port, RelaySettings, RelayTls, Settings};
use crate::mail::address::smtp_path;

/// Octets of the message handed to the connection at a time.
const DATA_PIECE: usize = 256 * 1024;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The next hop accepted the message for this recipient (its reply).
    Delivered(String),
    /// Temporary failure: try again later (the reason).
    Deferred(String),
    /// Permanent failure: bounce (the reply).
    Failed(String),
    /// Not delivered but kept in the quarantine (never from a next hop).
    Quarantined,
}

/// One copy of a message for a group of recipients at one next hop.
pub struct Outbound<'a> {
    pub hop: &'a str,
    pub mail_from: &'a str,
    pub rcpts: &'a [String],
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub body: &'a [u8],
}

/// Sends `out` under `settings` (its `relay` and `server.hostname`) and
/// returns one outcome per recipient, in order, on a connection kept in
/// `pool` for the hop when there is one. Never fails as a whole: a
/// failure to connect defers every recipient.
pub async fn send(pool: &Pool, settings: &Arc<Settings>, out: &Outbound<'_>) -> Vec<RcptOutcome> {
    match transact(pool, settings, out).await {
        Ok(outcomes) => outcomes,
        Err(reason) => out
            .rcpts
            .iter()
            .map(|_| RcptOutcome::Deferred(reason.clone()))
            .collect(),
    }
}

/// The text of a failed command: the reply when there was one.
pub(super) fn describe(e: &SmtpError) -> String {
    match (e.status(), e.source()) {
        (Some(code), Some(text)) => format!("{code} {text}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

fn reply_text(r: &lettre::transport::smtp::response::Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    format!("{} {}", r.code(), lines.join(" "))
}

/// Error text for a failure that defers every recipient of the attempt.
type AllDeferred = String;

/// Connects to `hop`, greets it and starts TLS as `relay.tls` says:
/// "required" verifies the certificate (the hop's pinned fingerprint, or a
/// chain to its CA file or the system's roots and the expected name),
/// "opportunistic" takes any certificate.
pub(super) async fn connect(
    relay: &RelaySettings,
    helo: &str,
    hop: &str,
) -> Result<AsyncSmtpConnection, String> {
    let (host, port) = parse_host_port(hop).map_err(|e| e.to_string())?;
    let client_id = ClientId::Domain(helo.to_string());
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect to {hop} failed: {e}"))?;
        // Commands are written whole and answered before the next: without
        // this, the "." after a message waits for the hop's delayed ACK on
        // a connection that carries more than one transaction (Nagle).
        tcp.set_nodelay(true)
            .map_err(|e| format!("connect to {hop} failed: {e}"))?;
        AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &client_id)
            .await
            .map_err(|e| format!("connect to {hop} failed: {}", describe(&e)))
    };
    let mut conn = tokio::time::timeout(relay.connect_timeout, connect)
        .await
        .map_err(|_| format!("connect to {hop} timed out"))??;

    if relay.tls == RelayTls::None {
        return Ok(conn);
    }
    if !conn.can_starttls() {
        if relay.tls == RelayTls::Required {
            conn.abort().await;
            return Err(format!(
                "{hop} does not offer STARTTLS and relay.tls = \"required\""
            ));
        }
        return Ok(conn);
    }
    let expect = match relay.tls {
        RelayTls::Required => Expect::for_hop(relay, hop, &host),
        _ => Expect::Nothing,
    };
    let params = match tls_parameters(&expect, &host) {
        Ok(p) => p,
        Err(e) => {
            conn.abort().await;
            return Err(format!("TLS towards {hop}: {e}"));
        }
    };
    if let Err(e) = conn.starttls(params, &client_id).await {
        // A failed handshake leaves lettre's stream unusable (even abort
        // would panic): the connection is dropped, which closes it.
        return Err(format!("STARTTLS with {hop} failed: {}", tls_error(&e)));
    }
    if let Expect::Pinned(pin) = &expect {
        let seen = conn
            .peer_certificate()
            .map(|der| sha256_hex(&der))
            .unwrap_or_default();
        if seen != *pin {
            conn.abort().await;
            return Err(format!(
                "STARTTLS with {hop} refused: its certificate has SHA-256 {seen}, not the pinned {pin}"
            ));
        }
    }
    Ok(conn)
}

/// What a next hop's certificate must be.
enum Expect {
    /// Anything ("opportunistic": encryption against listening only).
    Nothing,
    /// This SHA-256 fingerprint (checked after the handshake, before any
    /// mail is sent; the handshake itself proves the key).
    Pinned(String),
    /// A chain to these CAs (PEM file) or, without one, the system's
    /// roots, for this name.
    Chain { ca: Option<PathBuf>, name: String },
}

impl Expect {
    fn for_hop(relay: &RelaySettings, hop: &str, host: &str) -> Self {
        let hop_tls = relay.hop_tls(hop);
        if let Some(pin) = hop_tls.pin() {
            return Expect::Pinned(pin);
        }
        Expect::Chain {
            ca: relay.hop_ca(hop).cloned(),
            name: hop_tls.name.clone().unwrap_or_else(|| host.to_string()),
        }
    }
}

/// Why TLS parameters could not be built.
#[derive(Debug, thiserror::Error)]
enum TlsSetupError {
    #[error("cannot read the CA file {0}: {1}")]
    CaFile(String, std::io::Error),
    #[error("the CA file {0} holds no usable certificate: {1}")]
    CaCerts(String, SmtpError),
    #[error("TLS setup failed: {0}")]
    Build(SmtpError),
}

fn tls_parameters(expect: &Expect, host: &str) -> Result<TlsParameters, TlsSetupError> {
    let builder = match expect {
        Expect::Nothing | Expect::Pinned(_) => TlsParameters::builder(host.to_string())
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true),
        Expect::Chain { ca: None, name } => TlsParameters::builder(name.clone()),
        Expect::Chain {
            ca: Some(file),
            name,
        } => {
            let shown = file.display().to_string();
            let pem = std::fs::read(file).map_err(|e| TlsSetupError::CaFile(shown.clone(), e))?;
            let certs =
                Certificate::from_pem(&pem).map_err(|e| TlsSetupError::CaCerts(shown, e))?;
            TlsParameters::builder(name.clone())
                .certificate_store(CertificateStore::None)
                .add_root_certificate(certs)
        }
    };
    builder.build_rustls().map_err(TlsSetupError::Build)
}

/// The innermost cause of a TLS failure (e.g. "invalid peer certificate:
/// UnknownIssuer"), which says what was wrong with the certificate.
fn tls_error(e: &SmtpError) -> String {
    let mut deepest: Option<&dyn std::error::Error> = e.source();
    while let Some(next) = deepest.and_then(|d| d.source()) {
        deepest = Some(next);
    }
    deepest.map_or_else(|| describe(e), |d| d.to_string())
}

fn sha256_hex(der: &[u8]) -> String {
    openssl::sha::sha256(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a step of a transaction failed: the hop's reply or a broken
/// connection, or no reply within `relay.timeout`.
enum Failed {
    Smtp(SmtpError),
    TimedOut,
}

impl Failed {
    fn permanent(&self) -> bool {
        matches!(self, Failed::Smtp(e) if e.is_permanent())
    }

    /// No reply at all (the connection broke or the hop fell silent).
    fn no_reply(&self) -> bool {
        match self {
            Failed::Smtp(e) => e.status().is_none(),
            Failed::TimedOut => true,
        }
    }

    fn text(&self, limit: Duration) -> String {
        match self {
            Failed::Smtp(e) => describe(e),
            Failed::TimedOut => format!("no reply within {}s (relay.timeout)", limit.as_secs()),
        }
    }
}

/// One command (or the message) and its reply, within `limit`.
async fn step<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, SmtpError>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(Failed::Smtp),
        Err(_) => Err(Failed::TimedOut),
    }
}

/// Closes a connection after a failed step: with QUIT when the hop still
/// answers, by dropping it when it fell silent (QUIT would wait as well).
async fn close(mut conn: Connection, why: &Failed) {
    if let Failed::Smtp(_) = why {
        conn.smtp.abort().await;
    }
}

/// A connection for `hop`: a kept one that answers RSET, else a new one.
/// A kept connection that has been closed by the hop, refuses RSET or
/// does not answer it within `relay.connect_timeout` is closed here; no
/// transaction was started on it, so nothing is lost.
async fn open(pool: &Pool, settings: &Arc<Settings>, hop: &str) -> Result<Connection, AllDeferred> {
    while let Some(mut c) = pool.take(settings, hop) {
        match step(settings.relay.connect_timeout, c.smtp.command("RSET\r\n")).await {
            Ok(_) => return Ok(c),
            Err(why) => close(c, &why).await,
        }
    }
    let conn = connect(&settings.relay, &settings.server.hostname, hop).await?;
    Ok(Connection::fresh(conn))
}

/// MAIL FROM with the parameters the hop supports.
async fn mail_from(conn: &mut AsyncSmtpConnection, out: &Outbound<'_>) -> Result<(), SmtpError> {
    let info = conn.server_info();
    let mut params = String::new();
    if out.eight_bit && info.supports_feature(Extension::EightBitMime) {
        params.push_str(" BODY=8BITMIME");
    }
    if out.smtputf8 && info.supports_feature(Extension::SmtpUtfEight) {
        params.push_str(" SMTPUTF8");
    }
    let mail = format!("MAIL FROM:<{}>{params}\r\n", smtp_path(out.mail_from));
    conn.command(mail).await.map(|_| ())
}

async fn transact(
    pool: &Pool,
    settings: &Arc<Settings>,
    out: &Outbound<'_>,
) -> Result<Vec<RcptOutcome>, AllDeferred> {
    let limit = settings.relay.timeout;
    let mut conn = open(pool, settings, out.hop).await?;
    let mut started = step(limit, mail_from(&mut conn.smtp, out)).await;
    if let Err(e) = &started {
        // A kept connection that died between RSET and MAIL (no reply at
        // all): nothing was sent, so once more on a new connection.
        if conn.reused && e.no_reply() {
            close(conn, e).await;
            let fresh = connect(&settings.relay, &settings.server.hostname, out.hop).await?;
            conn = Connection::fresh(fresh);
            started = step(limit, mail_from(&mut conn.smtp, out)).await;
        }
    }
    if let Err(e) = started {
        let text = e.text(limit);
        let permanent = e.permanent();
        close(conn, &e).await;
        return Ok(out
            .rcpts
            .iter()
            .map(|_| {
                if permanent {
                    RcptOutcome::Failed(text.clone())
                } else {
                    RcptOutcome::Deferred(text.clone())
                }
            })
            .collect());
    }
    conn.transactions += 1;

    let mut outcomes: Vec<Option<RcptOutcome>> = Vec::with_capacity(out.rcpts.len());
    for rcpt in out.rcpts {
        let rcpt_to = conn
            .smtp
            .command(format!("RCPT TO:<{}>\r\n", smtp_path(rcpt)));
        match step(limit, rcpt_to).await {
            Ok(_) => outcomes.push(None),
            Err(Failed::Smtp(e)) if e.is_permanent() => {
                outcomes.push(Some(RcptOutcome::Failed(describe(&e))))
            }
            Err(Failed::Smtp(e)) if e.is_transient() => {
                outcomes.push(Some(RcptOutcome::Deferred(describe(&e))))
            }
            Err(e) => {
                let text = e.text(limit);
                close(conn, &e).await;
                return Err(format!("{} during RCPT: {text}", out.hop));
            }
        }
    }
    if outcomes.iter().all(Option::is_some) {
        // No DATA: the next user of the connection resets it with RSET.
        pool.put(settings, out.hop, conn).await;
        return Ok(outcomes.into_iter().flatten().collect());
    }

    // lettre ends the data with CRLF "." CRLF of its own, so the CRLF that
    // ends the message's last line is left to it: the bytes arrive as kept.
    let body = out.body.strip_suffix(b"\r\n").unwrap_or(out.body);
    // Handed over in pieces, so lettre's dot-stuffed copy is one piece
    // at a time, not the whole message.
    let data_result = match step(limit, conn.smtp.command("DATA\r\n")).await {
        Ok(_) => step(limit, conn.smtp.message_iter(body.chunks(DATA_PIECE))).await,
        Err(e) => Err(e),
    };
    let for_accepted = match &data_result {
        Ok(r) => RcptOutcome::Delivered(reply_text(r)),
        Err(e) if e.permanent() => RcptOutcome::Failed(e.text(limit)),
        Err(e) => RcptOutcome::Deferred(e.text(limit)),
    };
    match data_result {
        Ok(_) => pool.put(settings, out.hop, conn).await,
        Err(e) => close(conn, &e).await,
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| for_accepted.clone()))
        .collect())
}

//! One SMTP transaction towards a next hop on our own client connection
//! ([`super::smtp`]), driven command by command so each recipient gets its
//! own outcome: a refused RCPT fails that recipient only, and a reply to
//! DATA applies to the recipients that were accepted. Connections are kept
//! for further messages to the same hop in a [`Pool`]. Every reply is
//! awaited for at most `relay.timeout`.

use std::sync::Arc;
use std::time::Duration;

use super::pool::{Connection, Pool};
use super::smtp::{DataFailed, Reply, SmtpConnection, SmtpError};
use super::tls::{client_config, sha256_hex, Expect};
use crate::config::{validate::parse_host_port, RelaySettings, RelayTls, Settings};
use crate::mail::address::smtp_path;

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
    e.to_string()
}

fn reply_text(r: &Reply) -> String {
    r.to_string()
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
) -> Result<SmtpConnection, String> {
    let (host, port) = parse_host_port(hop).map_err(|e| e.to_string())?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect to {hop} failed: {e}"))?;
        // Commands are written whole and answered before the next: without
        // this, the "." after a message waits for the hop's delayed ACK on
        // a connection that carries more than one transaction (Nagle).
        tcp.set_nodelay(true)
            .map_err(|e| format!("connect to {hop} failed: {e}"))?;
        SmtpConnection::open(tcp, helo)
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
    let (config, name) = match client_config(&expect, &host) {
        Ok(c) => c,
        Err(e) => {
            conn.abort().await;
            return Err(format!("TLS towards {hop}: {e}"));
        }
    };
    // The handshake and the second EHLO are bounded like the greeting.
    let conn = match tokio::time::timeout(relay.connect_timeout, conn.starttls(config, name, helo))
        .await
    {
        Ok(Ok(c)) => c,
        // A failed handshake leaves the connection unusable: it is
        // dropped, which closes it.
        Ok(Err(e)) => return Err(format!("STARTTLS with {hop} failed: {}", describe(&e))),
        Err(_) => return Err(format!("STARTTLS with {hop} timed out")),
    };
    if let Expect::Pinned(pin) = &expect {
        let seen = conn.peer_certificate().map(sha256_hex).unwrap_or_default();
        if seen != *pin {
            let mut conn = conn;
            conn.abort().await;
            return Err(format!(
                "STARTTLS with {hop} refused: its certificate has SHA-256 {seen}, not the pinned {pin}"
            ));
        }
    }
    Ok(conn)
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

    /// The hop said it is closing the connection (421).
    fn closing(&self) -> bool {
        matches!(self, Failed::Smtp(e) if e.status() == Some(421))
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

impl From<DataFailed> for Failed {
    fn from(f: DataFailed) -> Self {
        match f {
            DataFailed::Smtp(e) => Failed::Smtp(e),
            DataFailed::TimedOut => Failed::TimedOut,
        }
    }
}

/// One command and its reply, within `limit`.
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

/// A connection for `hop`: a kept one, else a new one. A kept connection
/// whose last transaction ended cleanly is used as it is (the reply to
/// MAIL tells whether the hop is still there, see [`transact`]); any
/// other must answer RSET. One that has been closed by the hop, refuses
/// RSET or does not answer it within `relay.connect_timeout` is closed
/// here; no transaction was started on it, so nothing is lost.
async fn open(pool: &Pool, settings: &Arc<Settings>, hop: &str) -> Result<Connection, AllDeferred> {
    while let Some(mut c) = pool.take(settings, hop) {
        if c.clean {
            return Ok(c);
        }
        match step(settings.relay.connect_timeout, c.smtp.command("RSET\r\n")).await {
            Ok(_) => return Ok(c),
            Err(why) => close(c, &why).await,
        }
    }
    let conn = connect(&settings.relay, &settings.server.hostname, hop).await?;
    Ok(Connection::fresh(conn))
}

/// MAIL FROM with the parameters the hop supports, and its reply.
async fn mail_from(conn: &mut SmtpConnection, out: &Outbound<'_>) -> Result<(), SmtpError> {
    let mail = mail_line(conn, out);
    conn.command(&mail).await.map(|_| ())
}

/// The MAIL command with the parameters the hop supports.
fn mail_line(conn: &SmtpConnection, out: &Outbound<'_>) -> String {
    let mut params = String::new();
    if out.eight_bit && conn.supports(smtp_proto::EXT_8BIT_MIME) {
        params.push_str(" BODY=8BITMIME");
    }
    if out.smtputf8 && conn.supports(smtp_proto::EXT_SMTP_UTF8) {
        params.push_str(" SMTPUTF8");
    }
    format!("MAIL FROM:<{}>{params}\r\n", smtp_path(out.mail_from))
}

fn rcpt_line(rcpt: &str) -> String {
    format!("RCPT TO:<{}>\r\n", smtp_path(rcpt))
}

/// Starts the transaction and returns MAIL's reply. On a hop that offers
/// PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in one write,
/// and their replies are then read in order (`pipelined` is true);
/// otherwise MAIL alone, and each further command waits for the reply to
/// the one before.
async fn begin(conn: &mut SmtpConnection, out: &Outbound<'_>) -> Result<bool, SmtpError> {
    let pipelined = conn.supports(smtp_proto::EXT_PIPELINING);
    if !pipelined {
        return mail_from(conn, out).await.map(|_| false);
    }
    let mut group = mail_line(conn, out);
    for rcpt in out.rcpts {
        group.push_str(&rcpt_line(rcpt));
    }
    group.push_str("DATA\r\n");
    conn.send_group(&group).await?;
    conn.reply().await.map(|_| true)
}

async fn transact(
    pool: &Pool,
    settings: &Arc<Settings>,
    out: &Outbound<'_>,
) -> Result<Vec<RcptOutcome>, AllDeferred> {
    let limit = settings.relay.timeout;
    let mut conn = open(pool, settings, out.hop).await?;
    // A kept connection must answer MAIL as soon as RSET would have been
    // (`relay.connect_timeout`): one dropped silently while kept (by a
    // firewall, say) costs that long, not `relay.timeout`.
    let first = if conn.reused {
        settings.relay.connect_timeout.min(limit)
    } else {
        limit
    };
    let mut started = step(first, begin(&mut conn.smtp, out)).await;
    if let Err(e) = &started {
        // A kept connection the hop has given up on while it was kept (no
        // reply at all, or its 421 sent then): no message text was sent
        // (that waits for 354), so once more on a new connection.
        if conn.reused && (e.no_reply() || e.closing()) {
            close(conn, e).await;
            let fresh = connect(&settings.relay, &settings.server.hostname, out.hop).await?;
            conn = Connection::fresh(fresh);
            started = step(limit, begin(&mut conn.smtp, out)).await;
        }
    }
    let pipelined = match started {
        Ok(p) => p,
        Err(e) => {
            let text = e.text(limit);
            let permanent = e.permanent();
            // Pipelined, the RCPTs and DATA are answered too (refused
            // after a refused MAIL): QUIT is read after them, or, should
            // the hop still say 354, as text of a message never ended.
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
    };
    conn.transactions += 1;

    let mut outcomes: Vec<Option<RcptOutcome>> = Vec::with_capacity(out.rcpts.len());
    for rcpt in out.rcpts {
        let reply = if pipelined {
            step(limit, conn.smtp.reply()).await
        } else {
            step(limit, conn.smtp.command(&rcpt_line(rcpt))).await
        };
        match reply {
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
        if pipelined {
            // DATA went out with the group; with no recipient it must be
            // refused. A hop that says 354 anyway gets no text and no
            // "." (nothing is delivered) and loses the connection.
            // The MAIL transaction is still open: RSET before reuse.
            conn.clean = false;
            match step(limit, conn.smtp.reply()).await {
                Err(Failed::Smtp(SmtpError::Refused(_))) => pool.put(settings, out.hop, conn).await,
                Ok(_) => conn.smtp.abandon().await,
                Err(e) => close(conn, &e).await,
            }
        } else {
            // No DATA: the next user of the connection resets it with RSET.
            conn.clean = false;
            pool.put(settings, out.hop, conn).await;
        }
        return Ok(outcomes.into_iter().flatten().collect());
    }

    // The message goes out from its slice (for a large message, the
    // mapped file) in pieces, dot-stuffed without a copy; it ends with
    // CRLF, so it arrives as it is.
    let data_reply = if pipelined {
        step(limit, conn.smtp.reply()).await
    } else {
        step(limit, conn.smtp.command("DATA\r\n")).await
    };
    let data_result = match data_reply {
        Ok(r) if r.code == 354 => conn.smtp.data(out.body, limit).await.map_err(Failed::from),
        // Anything else that is not a refusal (a 250 to DATA) is out of
        // step: no text is sent, and the connection is not kept.
        Ok(r) => Err(Failed::Smtp(SmtpError::OutOfStep(format!(
            "{} to DATA, not 354",
            r.code
        )))),
        Err(e) => Err(e),
    };
    let for_accepted = match &data_result {
        Ok(r) => RcptOutcome::Delivered(reply_text(r)),
        Err(e) if e.permanent() => RcptOutcome::Failed(e.text(limit)),
        Err(e) => RcptOutcome::Deferred(e.text(limit)),
    };
    match data_result {
        Ok(_) => {
            // The reply to the final dot ends the transaction.
            conn.clean = true;
            pool.put(settings, out.hop, conn).await
        }
        Err(e) => close(conn, &e).await,
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| for_accepted.clone()))
        .collect())
}

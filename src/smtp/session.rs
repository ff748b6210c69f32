//! The ESMTP session: one client, from greeting to QUIT. Each verb has its
//! own handler; the answer to the final "." depends only on the envelope,
//! the size, the content rules of `data` and whether the spool made the
//! message durable, never on what the message says.
//!
//! Why one long file: the verbs share one transaction's state, and the
//! state machine is easiest to check when every transition is in view.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use smtp_proto::{
    Error as ProtoError, Request, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::address::{self as relay, RelayDenied};
use super::conn::{Conn, Line, ReadError};
use super::data::{DataDecoder, Violation};
use super::{Context, RcptCheck};
use crate::config::Settings;
use crate::mail::address;
use crate::mail::headers;
use crate::spool::{Envelope, Incoming};

/// Errors after which the session is closed (a client in a loop).
const MAX_ERRORS: u32 = 20;
/// How much decoded message is collected before it is written to the spool.
const WRITE_CHUNK: usize = 64 * 1024;
/// How much of the message start is kept to find its Message-ID for logs.
const HEAD_KEEP: usize = 16 * 1024;

/// Octets of a message after which DATA is read in large pieces (a small
/// message keeps the small read buffer: no grow and shrink per message).
const LARGE_BODY: u64 = 64 * 1024;
/// A DATA read that waits this long is a stall: the session gives its
/// buffers back until more arrives.
const STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// How a pass over a stream ended.
enum End {
    Close,
    StartTls,
}

struct Transaction {
    mail_from: String,
    eight_bit: bool,
    smtputf8: bool,
    rcpts: Vec<String>,
}

struct Session {
    ctx: Arc<Context>,
    settings: Arc<Settings>,
    peer: SocketAddr,
    trusted: bool,
    helo: Option<String>,
    tls: bool,
    tx: Option<Transaction>,
    errors: u32,
    /// The original client a trusted MTA reported with XFORWARD.
    xforward: Option<String>,
    /// When the session must end, whatever the client is doing.
    deadline: tokio::time::Instant,
    /// Accepted on a `server.submission_listen` listener.
    submission: bool,
}

/// Serves one accepted connection until it ends.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Context>, submission: bool) {
    let settings = ctx.settings();
    let trusted = settings.server.is_trusted(peer.ip());
    let deadline = tokio::time::Instant::now() + settings.server.session_timeout;
    let mut session = Session {
        ctx,
        settings,
        peer,
        trusted,
        helo: None,
        tls: false,
        tx: None,
        errors: 0,
        xforward: None,
        deadline,
        submission,
    };
    let mut conn = Conn::new(tcp, session.settings.server.command_timeout);
    let greeting = format!("{} ESMTP smime-gateway", session.settings.server.hostname);
    conn.reply(220, &[&greeting]);
    match session.run(&mut conn).await {
        End::Close => {}
        End::StartTls => {
            let Some(acceptor) = session.ctx.tls.clone() else {
                return;
            };
            // Nothing the client sent before the handshake may be used after it.
            conn.discard_input();
            let timeout = session.settings.server.command_timeout;
            let tls = match tokio::time::timeout(timeout, acceptor.accept(conn.stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(client = %peer, "TLS handshake timed out");
                    return;
                }
            };
            session.tls = true;
            session.helo = None;
            session.tx = None;
            session.xforward = None;
            let mut conn = Conn::new(tls, session.settings.server.command_timeout);
            if let End::StartTls = session.run(&mut conn).await {
                debug!(client = %peer, "second STARTTLS refused");
            }
        }
    }
}

impl Session {
    /// `timeout`, cut short where the session's lifetime ends sooner.
    fn bounded(&self, timeout: std::time::Duration) -> std::time::Duration {
        timeout.min(
            self.deadline
                .saturating_duration_since(tokio::time::Instant::now()),
        )
    }

    /// The 421 text for a read that timed out: the session's lifetime, or
    /// the wait for the client.
    fn timeout_text(&self, waiting: &str) -> &'static str {
        if tokio::time::Instant::now() >= self.deadline {
            "4.4.2 Session time limit reached, closing"
        } else if waiting == "data" {
            "4.4.2 Timeout while receiving data, closing"
        } else {
            "4.4.2 Timeout waiting for a command, closing"
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> End {
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            // Checked before every command: a client that keeps its input
            // buffered never waits on a read.
            if tokio::time::Instant::now() >= self.deadline {
                conn.reply(421, &[self.timeout_text("a command")]);
                let _ = conn.flush().await;
                return End::Close;
            }
            let timeout = self.bounded(self.settings.server.command_timeout);
            let line = match conn.next_line(timeout, &mut shutdown).await {
                Ok(line) => line,
                Err(ReadError::Timeout) => {
                    conn.reply(421, &[self.timeout_text("waiting for a command")]);
                    let _ = conn.flush().await;
                    return End::Close;
                }
                Err(ReadError::Shutdown) => {
                    conn.reply(421, &["4.3.2 Service shutting down, try again later"]);
                    let _ = conn.flush().await;
                    return End::Close;
                }
                Err(ReadError::Closed) => return End::Close,
                Err(ReadError::Io(e)) => {
                    debug!(client = %self.peer, error = %e, "connection error");
                    return End::Close;
                }
            };
            let line = match line {
                Line::Command(l) => l,
                Line::TooLong => {
                    self.error(conn, 500, "5.5.2 Command line too long (limit 512 octets)");
                    if self.errors >= MAX_ERRORS {
                        return self.too_many_errors(conn).await;
                    }
                    continue;
                }
            };
            if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"XFORWARD ") {
                self.xforward(conn, &line);
                continue;
            }
            let request = Request::parse(&mut line.iter());
            match request {
                Ok(Request::Ehlo { host }) => self.hello(conn, &host, true),
                Ok(Request::Helo { host }) => self.hello(conn, &host, false),
                Ok(Request::Mail { from }) => self.mail(conn, from),
                Ok(Request::Rcpt { to }) => self.rcpt(conn, &line, &to.address).await,
                Ok(Request::Data) => {
                    if let Err(()) = self.data(conn).await {
                        return End::Close;
                    }
                }
                Ok(Request::Rset) => {
                    self.tx = None;
                    self.xforward = None;
                    conn.reply(250, &["2.0.0 Ok"]);
                }
                Ok(Request::Noop { .. }) => conn.reply(250, &["2.0.0 Ok"]),
                Ok(Request::Vrfy { .. }) => conn.reply(
                    252,
                    &["2.5.0 Cannot verify the user, but will accept the message"],
                ),
                Ok(Request::Help { .. }) => conn.reply(
                    214,
                    &["2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT STARTTLS"],
                ),
                Ok(Request::Quit) => {
                    conn.reply(221, &["2.0.0 Bye"]);
                    let _ = conn.flush().await;
                    return End::Close;
                }
                Ok(Request::StartTls) => {
                    if self.ctx.tls.is_none() || self.tls {
                        self.error(conn, 502, "5.5.1 STARTTLS not available");
                    } else if self.tx.is_some() {
                        self.error(
                            conn,
                            503,
                            "5.5.1 STARTTLS not allowed during a mail transaction",
                        );
                    } else {
                        conn.reply(220, &["2.0.0 Ready to start TLS"]);
                        if conn.flush().await.is_err() {
                            return End::Close;
                        }
                        return End::StartTls;
                    }
                }
                Ok(other) => {
                    let reply = format!("5.5.1 {} not implemented", other.name());
                    self.error(conn, 502, &reply);
                }
                Err(e) => {
                    let (code, text) = parse_error_reply(&e);
                    self.error(conn, code, &text);
                }
            }
            if self.errors >= MAX_ERRORS {
                return self.too_many_errors(conn).await;
            }
        }
    }

    fn error<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        code: u16,
        text: &str,
    ) {
        self.errors += 1;
        conn.reply(code, &[text]);
    }

    async fn too_many_errors<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> End {
        conn.reply(421, &["4.7.0 Too many errors, closing"]);
        let _ = conn.flush().await;
        End::Close
    }

    fn hello<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        host: &str,
        esmtp: bool,
    ) {
        self.tx = None;
        self.helo = Some(host.to_string());
        let name = &self.settings.server.hostname;
        if !esmtp {
            conn.reply(250, &[name]);
            return;
        }
        let size = format!("SIZE {}", self.settings.server.max_message_size);
        let mut lines = vec![
            name.as_str(),
            "PIPELINING",
            size.as_str(),
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
        ];
        if self.ctx.tls.is_some() && !self.tls {
            lines.push("STARTTLS");
        }
        if self.trusted {
            lines.push("XFORWARD NAME ADDR PROTO HELO SOURCE");
        }
        conn.reply(250, &lines);
    }

    /// XFORWARD (Postfix): the original client of the next transaction,
    /// for the log. Accepted from trusted clients only.
    fn xforward<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>, line: &[u8]) {
        if !self.trusted {
            return self.error(conn, 550, "5.7.0 XFORWARD is for trusted clients only");
        }
        let text = String::from_utf8_lossy(line);
        let mut name = None;
        let mut addr = None;
        for attr in text.split_whitespace().skip(1) {
            let Some((k, v)) = attr.split_once('=') else {
                return self.error(conn, 501, "5.5.4 Syntax: XFORWARD attribute=value ...");
            };
            let v = v
                .chars()
                .filter(|c| !c.is_control())
                .take(255)
                .collect::<String>();
            if v.eq_ignore_ascii_case("[UNAVAILABLE]") || v.eq_ignore_ascii_case("[TEMPUNAVAIL]") {
                continue;
            }
            match k.to_ascii_uppercase().as_str() {
                "NAME" => name = Some(v),
                "ADDR" => addr = Some(v),
                _ => {}
            }
        }
        let merged = match (name, addr, self.xforward.take()) {
            (Some(n), Some(a), _) => Some(format!("{n}[{a}]")),
            (None, Some(a), _) => Some(format!("[{a}]")),
            (Some(n), None, _) => Some(n),
            (None, None, old) => old,
        };
        self.xforward = merged;
        conn.reply(250, &["2.0.0 Ok"]);
    }

    fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        from: smtp_proto::MailFrom<std::borrow::Cow<'_, str>>,
    ) {
        if self.helo.is_none() {
            return self.error(conn, 503, "5.5.1 Send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return self.error(conn, 503, "5.5.1 Nested MAIL command");
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return self.error(conn, 555, "5.5.4 BODY=BINARYMIME is not supported");
        }
        let max = self.settings.server.max_message_size;
        if from.size as u64 > max {
            return self.error(
                conn,
                552,
                &format!("5.3.4 Message size exceeds the limit of {max} octets"),
            );
        }
        if !address::is_clean(&from.address) {
            return self.error(
                conn,
                501,
                "5.1.7 Sender address contains spaces, angle brackets or control characters",
            );
        }
        self.tx = Some(Transaction {
            mail_from: address::normalize(&from.address),
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            rcpts: Vec::new(),
        });
        conn.reply(250, &["2.1.0 Ok"]);
    }

    async fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        line: &[u8],
        addr: &str,
    ) {
        let max = self.settings.server.max_recipients;
        let Some(tx) = self.tx.as_ref() else {
            return self.error(conn, 503, "5.5.1 Need MAIL before RCPT");
        };
        if tx.rcpts.len() >= max {
            conn.reply(452, &[&format!("4.5.3 Too many recipients (limit {max})")]);
            return;
        }
        if !address::is_clean(addr) {
            return self.error(
                conn,
                501,
                "5.1.3 Recipient address contains spaces, angle brackets or control characters",
            );
        }
        // <postmaster> without a domain (RFC 5321 4.5.1): ours.
        let postmaster = match self.settings.server.internal_domains.first() {
            Some(d) if addr.is_empty() => format!("postmaster@{d}"),
            _ => String::new(),
        };
        if addr.is_empty() && postmaster.is_empty() {
            return self.error(
                conn,
                550,
                "5.1.3 No postmaster here: write postmaster with a domain",
            );
        }
        let normalized = if addr.is_empty() {
            postmaster
        } else {
            address::normalize(addr)
        };
        let addr = normalized.as_str();
        // The gateway's own return path: bounces of S/MIME mail it handed
        // to the mailbox server come back here, from whoever sends them.
        let own = self.settings.return_path_tag(addr).is_some();
        if !self.trusted && !own && !is_bare_postmaster(line) {
            let text = String::from_utf8_lossy(line);
            let raw = address::raw_path(&text).unwrap_or(addr);
            let server = &self.settings.server;
            if let Err(denied) = relay::check_untrusted(raw, addr, |d| server.is_internal_domain(d))
            {
                warn!(event = "rejected", client = %self.peer, recipient = %addr,
                      reason = denied.explain(), "relay attempt refused");
                let reply = match denied {
                    RelayDenied::ExternalDomain => format!("5.7.1 <{addr}>: Relay access denied"),
                    RelayDenied::Routing(why) => {
                        format!("5.7.1 <{addr}>: Relay access denied: {why}")
                    }
                };
                return self.error(conn, 554, &reply);
            }
            if let (true, Some(verifier)) = (
                self.settings.server.verify_recipients,
                self.ctx.verifier.clone(),
            ) {
                match verifier.check(self.peer.ip(), addr).await {
                    RcptCheck::Exists => {}
                    RcptCheck::Unknown(why) => {
                        info!(event = "rejected", client = %self.peer, recipient = %addr,
                              reason = %why, "unknown recipient");
                        let reply =
                            format!("5.1.1 <{addr}>: Recipient address rejected: unknown user");
                        return self.error(conn, 550, &reply);
                    }
                    RcptCheck::TryLater(why) => {
                        info!(event = "tempfail", client = %self.peer, recipient = %addr,
                              reason = %why, "recipient could not be verified");
                        conn.reply(
                            450,
                            &[&format!(
                                "4.1.1 <{addr}>: Recipient address not verified, try again later"
                            )],
                        );
                        return;
                    }
                }
            }
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(addr.to_string());
        }
        conn.reply(250, &["2.1.5 Ok"]);
    }

    /// The DATA command through to the reply to ".". `Err` closes the session.
    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<(), ()> {
        let Some(tx) = self.tx.as_ref() else {
            self.error(conn, 503, "5.5.1 Need MAIL before DATA");
            return Ok(());
        };
        if tx.rcpts.is_empty() {
            self.error(conn, 554, "5.5.1 No valid recipients");
            return Ok(());
        }
        let envelope = Envelope {
            mail_from: tx.mail_from.clone(),
            rcpts: tx.rcpts.clone(),
            received: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            client: self.peer.ip().to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            eight_bit: tx.eight_bit,
            smtputf8: tx.smtputf8,
            released: false,
            submission: self.submission,
        };
        let mut incoming = match self.ctx.store.begin(&envelope).await {
            Ok(i) => Some(i),
            Err(e) => {
                warn!(event = "spool-error", client = %self.peer, error = %e, "cannot start spool file");
                self.tx = None;
                conn.reply(452, &["4.3.1 Insufficient system storage, try again later"]);
                return Ok(());
            }
        };
        conn.reply(354, &["End data with <CR><LF>.<CR><LF>"]);

        let mut decoder = DataDecoder::new(self.settings.server.max_message_size);
        let mut out = Vec::with_capacity(WRITE_CHUNK * 2);
        let mut head = Vec::new();
        let mut spool_error = None;
        let data_timeout = self.settings.server.data_timeout;
        let (min_rate, grace) = (
            self.settings.server.min_data_rate,
            self.settings.server.data_rate_grace,
        );
        let started = tokio::time::Instant::now();
        let mut received: u64 = 0;
        loop {
            let before = out.len();
            // At most WRITE_CHUNK at a time: what is decoded but not yet
            // written stays under WRITE_CHUNK * 2 whatever a read brought.
            let input = conn.buffered();
            let take = input.len().min(WRITE_CHUNK);
            let end = decoder.feed(&input[..take], &mut out);
            let used = end.unwrap_or(take);
            conn.consume(used);
            received += used as u64;
            if head.len() < HEAD_KEEP {
                let fresh = &out[before..];
                let take = (HEAD_KEEP - head.len()).min(fresh.len());
                head.extend_from_slice(&fresh[..take]);
            }
            if decoder.violation().is_some() {
                // The message will be refused: stop writing it.
                incoming = None;
                out.clear();
            }
            if out.len() >= WRITE_CHUNK || (end.is_some() && !out.is_empty()) {
                if let Some(inc) = incoming.as_mut() {
                    if let Err(e) = inc.write(&out).await {
                        spool_error = Some(e);
                        incoming = None;
                    }
                }
                out.clear();
            }
            if end.is_some() {
                break;
            }
            if !conn.buffered().is_empty() {
                // More of this read to decode before reading again.
                continue;
            }
            if tokio::time::Instant::now() >= self.deadline {
                conn.reply(421, &[self.timeout_text("data")]);
                let _ = conn.flush().await;
                return Err(());
            }
            // Wait no longer than the client's data rate allows.
            let mut wait = self.bounded(data_timeout);
            if min_rate > 0 {
                let owed = std::time::Duration::from_secs_f64(received as f64 / min_rate as f64);
                let due = started + grace.max(owed);
                wait = wait.min(due.saturating_duration_since(tokio::time::Instant::now()));
            }
            // Past the first 64 KiB of a message: larger reads.
            conn.large_reads(received >= LARGE_BODY);
            let mut read = conn.fill(wait.min(STALL), None).await;
            if matches!(read, Err(ReadError::Timeout)) && wait > STALL {
                // The client stalls: what the session holds of the message
                // goes to the spool file and its buffers are given back
                // until more arrives (many stalled sessions would otherwise
                // hold half a megabyte each).
                if let Some(inc) = incoming.as_mut() {
                    let kept = async {
                        if !out.is_empty() {
                            inc.write(&out).await?;
                        }
                        inc.release().await
                    };
                    if let Err(e) = kept.await {
                        spool_error = Some(e);
                        incoming = None;
                    }
                }
                out = Vec::new();
                conn.release();
                // Large buffers were given back: the heap may hand them on.
                if received >= LARGE_BODY {
                    crate::ossl::release_free_memory_soon();
                }
                // Small reads until it sends again (a read reserves its room
                // before it waits).
                conn.large_reads(false);
                read = conn.fill(wait - STALL, None).await;
            }
            match read {
                Ok(()) => {}
                Err(ReadError::Timeout)
                    if too_slow(received, started.elapsed(), min_rate, grace) =>
                {
                    warn!(event = "too-slow", client = %self.peer, octets = received,
                          seconds = started.elapsed().as_secs(), "client sends data too slowly: closing");
                    conn.reply(421, &["4.4.2 Data arriving too slowly, closing"]);
                    let _ = conn.flush().await;
                    return Err(());
                }
                Err(ReadError::Timeout) => {
                    conn.reply(421, &[self.timeout_text("data")]);
                    let _ = conn.flush().await;
                    return Err(());
                }
                Err(_) => return Err(()),
            }
        }
        conn.large_reads(false);
        let tx = self.tx.take();
        let Some(tx) = tx else { return Ok(()) };

        if let Some(v) = decoder.violation() {
            let (code, text) = violation_reply(v, self.settings.server.max_message_size);
            warn!(event = "rejected", client = %self.peer, sender = %tx.mail_from, reason = %text, "message refused");
            self.error(conn, code, &text);
            return Ok(());
        }
        let committed = match (spool_error, incoming) {
            (Some(e), _) => Err(e),
            (None, Some(inc)) => commit(inc).await,
            (None, None) => {
                conn.reply(451, &["4.3.0 Internal error, try again later"]);
                return Ok(());
            }
        };
        match committed {
            Ok(id) => {
                conn.reply(250, &[&format!("2.0.0 Ok: queued as {id}")]);
                crate::metrics::accepted();
                info!(
                    event = "accepted",
                    queue_id = %id,
                    message_id = %headers::message_id(&head),
                    sender = %tx.mail_from,
                    recipients = %tx.rcpts.join(","),
                    client = %self.peer,
                    original_client = %self.xforward.take().unwrap_or_default(),
                    size = decoder.size(),
                    "message accepted"
                );
                self.ctx.notify_queued(id);
            }
            Err(e) => {
                warn!(event = "spool-error", client = %self.peer, error = %e, "message not kept");
                conn.reply(452, &["4.3.1 Insufficient system storage, try again later"]);
            }
        }
        Ok(())
    }
}

async fn commit(inc: Incoming) -> Result<String, crate::spool::SpoolError> {
    inc.commit().await
}

/// True when a client that sent `received` octets of DATA in `elapsed`
/// averages less than `min_rate` per second, once `grace` has passed.
fn too_slow(
    received: u64,
    elapsed: std::time::Duration,
    min_rate: u64,
    grace: std::time::Duration,
) -> bool {
    min_rate > 0 && elapsed >= grace && (received as f64) < min_rate as f64 * elapsed.as_secs_f64()
}

/// True for `RCPT TO:<postmaster>` (any case, no domain).
fn is_bare_postmaster(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    let path = address::raw_path(&text)
        .map(str::to_string)
        .or_else(|| text.split_once(':').map(|(_, a)| a.trim().to_string()))
        .unwrap_or_default();
    path.eq_ignore_ascii_case("postmaster")
}

fn violation_reply(v: Violation, max: u64) -> (u16, String) {
    match v {
        Violation::BareCr { line } => (
            554,
            format!("5.6.0 Message refused: bare CR at line {line} (only CRLF may end a line)"),
        ),
        Violation::BareLf { line } => (
            554,
            format!("5.6.0 Message refused: bare LF at line {line} (only CRLF may end a line)"),
        ),
        Violation::Nul { line } => (
            554,
            format!("5.6.0 Message refused: NUL character at line {line}"),
        ),
        Violation::LineTooLong { line } => (
            554,
            format!(
                "5.6.0 Message refused: line {line} is longer than 1000 octets with its CRLF \
                 (998 characters)"
            ),
        ),
        Violation::TooBig => (
            552,
            format!("5.3.4 Message size exceeds the limit of {max} octets"),
        ),
    }
}

fn parse_error_reply(e: &ProtoError) -> (u16, String) {
    match e {
        ProtoError::UnknownCommand => (500, "5.5.1 Command not recognized".into()),
        ProtoError::InvalidSenderAddress => (501, "5.1.7 Invalid sender address".into()),
        ProtoError::InvalidRecipientAddress => (501, "5.1.3 Invalid recipient address".into()),
        ProtoError::SyntaxError { syntax } => (501, format!("5.5.4 Syntax: {syntax}")),
        ProtoError::InvalidParameter { param } => {
            (501, format!("5.5.4 Invalid value for parameter {param}"))
        }
        ProtoError::UnsupportedParameter { param } => {
            (555, format!("5.5.4 Unsupported parameter {param}"))
        }
        _ => (500, "5.5.2 Syntax error".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::too_slow;
    use std::time::Duration;

    #[test]
    fn data_rate_is_judged_only_after_the_grace() {
        let grace = Duration::from_secs(30);
        let s = Duration::from_secs;
        assert!(!too_slow(0, s(29), 1024, grace), "inside the grace");
        assert!(too_slow(1024 * 30 - 1, s(30), 1024, grace));
        assert!(!too_slow(1024 * 30, s(30), 1024, grace));
        assert!(!too_slow(0, s(3600), 0, grace), "0 turns the check off");
    }
}

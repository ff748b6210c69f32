//! A minimal SMTP client connection (RFC 5321) over tokio, with STARTTLS
//! through tokio-rustls: the greeting, EHLO (capabilities read with
//! smtp-proto), one command and its reply at a time, and the DATA phase
//! written from the message slice in large pieces through [`DotStuffer`]
//! (no byte-by-byte copy). Replies are read with caps on line length and
//! total size. What a certificate must be is decided by the caller
//! ([`super::client`]); this room carries out the handshake it is given.
//!
//! Over 450 lines because of its unit tests (reply parsing, EHLO of real
//! servers, a transaction against a scripted server) and the socket type
//! it needs for plain and TLS streams; the client proper is small.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use smtp_proto::EhloResponse;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use super::data::DotStuffer;

/// Octets of one reply line at most (Postfix's `line_length_limit`).
const MAX_LINE: usize = 1000;
/// Octets of one reply at most (Postfix's `smtp_response_limit`).
const MAX_REPLY: usize = 100_000;
/// Octets of the message written at a time (each within the timeout).
pub const DATA_PIECE: usize = 256 * 1024;
/// Buffer for commands and the small runs of the DATA phase; longer runs
/// go to the socket directly.
const WRITE_BUFFER: usize = 64 * 1024;
const READ_BUFFER: usize = 8 * 1024;

/// A complete reply of the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of every line, joined with spaces; an enhanced status code
    /// repeated at the start of continuation lines is given once.
    pub text: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.text)
        }
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The next hop answered with a 4xx or 5xx reply.
    #[error("{0}")]
    Refused(Reply),
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed by the next hop")]
    Closed,
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("reply too long")]
    TooLong,
    #[error("{0}")]
    Tls(String),
    #[error("STARTTLS is not offered")]
    NoStartTls,
    #[error("the connection is broken")]
    Broken,
    /// A reply of the wrong kind for the command (a 250 to DATA, a 354 to
    /// the final dot): the hop and the gateway are out of step.
    #[error("the next hop answered out of step: {0}")]
    OutOfStep(String),
}

impl SmtpError {
    /// A 5xx reply: do not try again.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SmtpError::Refused(r) if r.code >= 500)
    }

    /// A 4xx reply.
    pub fn is_transient(&self) -> bool {
        matches!(self, SmtpError::Refused(r) if (400..500).contains(&r.code))
    }

    /// The reply code, when the next hop answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            SmtpError::Refused(r) => Some(r.code),
            _ => None,
        }
    }
}

/// The socket, before and after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One connection to a next hop.
pub struct SmtpConnection {
    io: BufStream<Stream>,
    /// The EHLO capabilities (`smtp_proto::EXT_*`).
    capabilities: u32,
    /// The DER of the hop's certificate once TLS is up.
    peer_certificate: Option<Vec<u8>>,
    /// A write or read failed or the hop answered out of step: the
    /// connection must not carry another transaction.
    broken: bool,
}

impl SmtpConnection {
    /// Reads the greeting of the hop on `tcp` and says EHLO as `helo`.
    pub async fn open(tcp: TcpStream, helo: &str) -> Result<Self, SmtpError> {
        let mut conn = Self {
            io: BufStream::with_capacity(READ_BUFFER, WRITE_BUFFER, Stream::Plain(tcp)),
            capabilities: 0,
            peer_certificate: None,
            broken: false,
        };
        conn.read_reply().await?;
        conn.ehlo(helo).await?;
        Ok(conn)
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), SmtpError> {
        self.write_command(&format!("EHLO {helo}\r\n")).await?;
        let (reply, raw) = self.read_raw().await?;
        check(reply)?;
        let ehlo = EhloResponse::parse(&mut raw.iter()).map_err(|e| {
            self.broken = true;
            SmtpError::Malformed(format!("EHLO reply: {e:?}"))
        })?;
        self.capabilities = ehlo.capabilities;
        Ok(())
    }

    /// The hop announced this extension (`smtp_proto::EXT_*`) in its EHLO
    /// reply (after STARTTLS: the second one).
    pub fn supports(&self, extension: u32) -> bool {
        self.capabilities & extension != 0
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self.io.get_ref(), Stream::Tls(_))
    }

    pub fn can_starttls(&self) -> bool {
        !self.is_encrypted() && self.supports(smtp_proto::EXT_START_TLS)
    }

    /// Whether the hop is in step at the end of a transaction: nothing it
    /// sent waits unread. A reply too many (a hop out of step, or someone
    /// on the path) would otherwise be read as the answer to the next
    /// message's command, and a refusal taken for a delivery. Marks the
    /// connection broken when not.
    pub fn in_step(&mut self) -> bool {
        // Bytes waiting, or none ever again (the hop closed), or a
        // failure: not to be kept.
        if self.unasked() != Unasked::Nothing {
            self.broken = true;
        }
        !self.broken
    }

    /// What the hop has sent that no command asked for yet, looked at
    /// without waiting.
    fn unasked(&mut self) -> Unasked {
        use futures_util::FutureExt;
        use tokio::io::AsyncBufReadExt;
        match self.io.fill_buf().now_or_never() {
            None => Unasked::Nothing,
            Some(Ok([])) => Unasked::Closed,
            // A server may say 421 at any time and close (RFC 5321 4.2.2).
            Some(Ok(b)) if b.starts_with(b"421") => Unasked::Closing,
            Some(Ok(b)) => Unasked::Bytes {
                late_354: b.split(|c| *c == b'\n').any(|l| l.starts_with(b"354")),
            },
            Some(Err(_)) => Unasked::Closed,
        }
    }

    /// The DER of the hop's certificate, after STARTTLS.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.peer_certificate.as_deref()
    }

    /// STARTTLS, the handshake under `config` for `name`, and EHLO again.
    /// Anything the hop sent after its reply to STARTTLS is discarded
    /// (the CVE-2011-0411 pattern, seen from the client side). A failure
    /// leaves the connection unusable: the caller drops it.
    pub async fn starttls(
        mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        helo: &str,
    ) -> Result<Self, SmtpError> {
        if !self.can_starttls() {
            return Err(SmtpError::NoStartTls);
        }
        self.command("STARTTLS\r\n").await?;
        let Stream::Plain(tcp) = self.io.into_inner() else {
            return Err(SmtpError::Broken);
        };
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| SmtpError::Tls(tls_reason(&e)))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        let mut conn = Self {
            io: BufStream::with_capacity(READ_BUFFER, WRITE_BUFFER, Stream::Tls(Box::new(tls))),
            capabilities: 0,
            peer_certificate: peer,
            broken: false,
        };
        conn.ehlo(helo).await?;
        Ok(conn)
    }

    /// Sends one command line (with its CRLF) and reads the reply: a
    /// 2xx or 3xx reply is returned, 4xx and 5xx are [`SmtpError::Refused`].
    pub async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        self.write_command(line).await?;
        let (reply, _) = self.read_raw().await?;
        check(reply)
    }

    /// Writes `lines` (whole commands, each with its CRLF) in one go
    /// without reading: a PIPELINING group (RFC 2920), whose replies are
    /// then read one by one with [`Self::reply`].
    pub async fn send_group(&mut self, lines: &str) -> Result<(), SmtpError> {
        self.write_command(lines).await
    }

    /// The next reply of a group sent with [`Self::send_group`]: 2xx and
    /// 3xx are returned, 4xx and 5xx are [`SmtpError::Refused`].
    pub async fn reply(&mut self) -> Result<Reply, SmtpError> {
        self.read_reply().await
    }

    /// Closes the connection without another word: for a hop that said
    /// 354 to a DATA the client no longer wants to send (anything written
    /// now would be message text, and a message never ended with "." is
    /// not delivered).
    pub async fn abandon(&mut self) {
        self.broken = true;
        let _ = self.io.shutdown().await;
    }

    /// The message after a 354 reply to DATA: written in pieces of
    /// [`DATA_PIECE`], each within `limit`, dot-stuffed without copying,
    /// ended with "." CRLF; then the reply, within `limit`. A message
    /// ending with CRLF arrives as it is; one without gets a final CRLF.
    ///
    /// After 354 the hop waits for text and says nothing, and after its
    /// reply to the dot it waits for the next command: a reply already
    /// waiting at either point means the replies read so far were not the
    /// answers to these commands (a hop out of step, or stray replies
    /// lined up as 250, 250, 354). Before the text, nothing is sent and
    /// the connection is closed; after the dot, a 354 among them means the
    /// delivery is not believed and the message is tried again (a copy too
    /// many rather than a refusal taken for a delivery); anything else
    /// leaves it delivered (so a hop that adds a line cannot have every
    /// message sent again and again).
    pub async fn data(&mut self, message: &[u8], limit: Duration) -> Result<Reply, DataFailed> {
        match self.unasked() {
            Unasked::Nothing => {}
            Unasked::Closed | Unasked::Closing => {
                self.broken = true;
                return Err(DataFailed::Smtp(SmtpError::Closed));
            }
            Unasked::Bytes { .. } => {
                self.abandon().await;
                return Err(DataFailed::Smtp(SmtpError::OutOfStep(
                    "a reply came after 354, before the message text".to_string(),
                )));
            }
        }
        let mut stuffer = DotStuffer::new();
        for piece in message.chunks(DATA_PIECE) {
            let parts = stuffer.parts(piece);
            let io = &mut self.io;
            let write = async move {
                for part in parts {
                    io.write_all(part).await?;
                }
                Ok(())
            };
            let r = timed(limit, write).await;
            self.progress(r)?;
        }
        let end = stuffer.end();
        let io = &mut self.io;
        let finish = async move {
            io.write_all(end).await?;
            io.flush().await
        };
        let r = timed(limit, finish).await;
        self.progress(r)?;
        match tokio::time::timeout(limit, self.read_raw()).await {
            // Only a 2xx reply takes the message.
            Ok(Ok((reply, _))) if (300..400).contains(&reply.code) => {
                self.broken = true;
                Err(DataFailed::Smtp(SmtpError::OutOfStep(format!(
                    "{} to the end of the message",
                    reply.code
                ))))
            }
            // A 354 behind the reply to the dot is a late answer to DATA:
            // the replies read were shifted, and the one taken for the
            // dot's belonged to an earlier command, so the message may not
            // have been taken. Anything else behind it (a 421, a line too
            // many) leaves the delivery standing; the connection is not
            // kept either way (`in_step` when it is put back).
            Ok(Ok((reply, _)))
                if reply.code < 300 && self.unasked() == (Unasked::Bytes { late_354: true }) =>
            {
                self.broken = true;
                Err(DataFailed::Smtp(SmtpError::OutOfStep(format!(
                    "{} to the end of the message, with a 354 behind it",
                    reply.code
                ))))
            }
            Ok(Ok((reply, _))) => check(reply).map_err(DataFailed::Smtp),
            Ok(Err(e)) => Err(DataFailed::Smtp(e)),
            Err(_) => {
                self.broken = true;
                Err(DataFailed::TimedOut)
            }
        }
    }

    /// Marks the connection broken when a step of the DATA phase failed.
    fn progress(&mut self, r: Result<(), DataFailed>) -> Result<(), DataFailed> {
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// QUIT and its reply.
    pub async fn quit(&mut self) -> Result<Reply, SmtpError> {
        let r = self.command("QUIT\r\n").await;
        self.broken = true;
        let _ = self.io.shutdown().await;
        r
    }

    /// QUIT without caring for the answer, unless the connection is
    /// already broken; then closes it.
    pub async fn abort(&mut self) {
        if !self.broken {
            let _ = self.command("QUIT\r\n").await;
        }
        self.broken = true;
        let _ = self.io.shutdown().await;
    }

    async fn write_command(&mut self, line: &str) -> Result<(), SmtpError> {
        if self.broken {
            return Err(SmtpError::Broken);
        }
        let r = async {
            self.io.write_all(line.as_bytes()).await?;
            self.io.flush().await
        }
        .await;
        r.map_err(|e| {
            self.broken = true;
            SmtpError::Io(e)
        })
    }

    /// One complete reply, parsed, and its raw bytes.
    async fn read_raw(&mut self) -> Result<(Reply, Vec<u8>), SmtpError> {
        let r = read_reply_from(&mut self.io).await;
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        let (reply, _) = self.read_raw().await?;
        check(reply)
    }
}

/// What waits unread on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unasked {
    Nothing,
    /// Replies or other bytes; whether a 354 reply line is among them.
    Bytes {
        late_354: bool,
    },
    /// The hop closed the connection, or reading failed.
    Closed,
    /// The hop says it is closing the connection (421).
    Closing,
}

/// Why the DATA phase failed: an error, or no progress within the limit.
pub enum DataFailed {
    Smtp(SmtpError),
    TimedOut,
}

/// `f` within `limit`.
async fn timed(
    limit: Duration,
    f: impl std::future::Future<Output = io::Result<()>>,
) -> Result<(), DataFailed> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DataFailed::Smtp(SmtpError::Io(e))),
        Err(_) => Err(DataFailed::TimedOut),
    }
}

/// A positive reply (2xx, 3xx) as it is, a negative one as an error.
fn check(reply: Reply) -> Result<Reply, SmtpError> {
    if (200..400).contains(&reply.code) {
        Ok(reply)
    } else {
        Err(SmtpError::Refused(reply))
    }
}

async fn read_reply_from<R: tokio::io::AsyncBufRead + Unpin>(
    io: &mut R,
) -> Result<(Reply, Vec<u8>), SmtpError> {
    let mut raw = Vec::with_capacity(128);
    loop {
        let start = raw.len();
        let n = (&mut *io)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut raw)
            .await?;
        if n == 0 {
            return Err(SmtpError::Closed);
        }
        if raw.last() != Some(&b'\n') {
            return Err(SmtpError::TooLong);
        }
        if raw.len() > MAX_REPLY {
            return Err(SmtpError::TooLong);
        }
        match line_kind(&raw[start..])? {
            Line::More => continue,
            Line::Last => break,
        }
    }
    let reply = parse_reply(&raw)?;
    Ok((reply, raw))
}

enum Line {
    More,
    Last,
}

/// Whether a reply line (with its line end) is followed by another.
fn line_kind(line: &[u8]) -> Result<Line, SmtpError> {
    let body = trim_eol(line);
    if body.len() < 3 || !body[..3].iter().all(u8::is_ascii_digit) {
        return Err(SmtpError::Malformed(
            String::from_utf8_lossy(body).into_owned(),
        ));
    }
    match body.get(3) {
        None | Some(b' ') => Ok(Line::Last),
        Some(b'-') => Ok(Line::More),
        Some(_) => Err(SmtpError::Malformed(
            String::from_utf8_lossy(body).into_owned(),
        )),
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The code and text of a complete reply (every line already checked by
/// [`line_kind`]). Every line must carry the same code.
fn parse_reply(raw: &[u8]) -> Result<Reply, SmtpError> {
    let mut code = None;
    let mut texts: Vec<String> = Vec::new();
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let body = trim_eol(line);
        let this: u16 = std::str::from_utf8(&body[..3])
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| SmtpError::Malformed(String::from_utf8_lossy(body).into_owned()))?;
        if *code.get_or_insert(this) != this {
            return Err(SmtpError::Malformed(format!(
                "reply lines with codes {} and {this}",
                code.unwrap_or(this)
            )));
        }
        texts.push(String::from_utf8_lossy(body.get(4..).unwrap_or_default()).into_owned());
    }
    let code = code.ok_or_else(|| SmtpError::Malformed(String::new()))?;
    Ok(Reply {
        code,
        text: join_text(&texts),
    })
}

/// The lines of a reply joined with spaces; an enhanced status code that
/// the first line starts with is dropped from the start of the others.
fn join_text(lines: &[String]) -> String {
    let Some((first, rest)) = lines.split_first() else {
        return String::new();
    };
    let esc = first
        .split(' ')
        .next()
        .filter(|w| w.split('.').count() == 3 && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .filter(|w| !w.is_empty());
    let mut text = first.clone();
    for line in rest {
        text.push(' ');
        let line = match esc {
            Some(e) => line
                .strip_prefix(e)
                .filter(|r| r.starts_with(' '))
                .map_or(line.as_str(), str::trim_start),
            None => line.as_str(),
        };
        text.push_str(line);
    }
    text
}

/// The innermost cause of a failed handshake (e.g. "invalid peer
/// certificate: UnknownIssuer"), which says what was wrong.
fn tls_reason(e: &io::Error) -> String {
    let mut deepest: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|r| r as &(dyn std::error::Error + 'static));
    while let Some(next) = deepest.and_then(|d| d.source()) {
        deepest = Some(next);
    }
    deepest.map_or_else(|| e.to_string(), |d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<(Reply, Vec<u8>), SmtpError> {
        let mut r = tokio::io::BufReader::new(bytes);
        read_reply_from(&mut r).await
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn replies_one_line_and_many() {
        let (r, _) = block(read(b"250 2.0.0 Ok: queued as X\r\n")).unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.text, "2.0.0 Ok: queued as X");
        let (r, raw) = block(read(
            b"550-5.1.1 no such\r\n550-5.1.1 user here\r\n550 5.1.1 sorry\r\nXX",
        ))
        .unwrap();
        assert_eq!(r.to_string(), "550 5.1.1 no such user here sorry");
        assert!(raw.ends_with(b"sorry\r\n"), "read past the reply");
        let (r, _) = block(read(b"354\r\n")).unwrap();
        assert_eq!(r.to_string(), "354");
        // Lines ended by a bare LF are read too.
        let (r, _) = block(read(b"250-a\n250 b\n")).unwrap();
        assert_eq!(r.text, "a b");
    }

    #[test]
    fn broken_replies_are_errors() {
        assert!(matches!(block(read(b"")), Err(SmtpError::Closed)));
        assert!(matches!(
            block(read(b"250-more\r\n")),
            Err(SmtpError::Closed)
        ));
        assert!(matches!(
            block(read(b"hello\r\n")),
            Err(SmtpError::Malformed(_))
        ));
        assert!(matches!(
            block(read(b"250x\r\n")),
            Err(SmtpError::Malformed(_))
        ));
        assert!(matches!(
            block(read(b"250-a\r\n451 b\r\n")),
            Err(SmtpError::Malformed(_))
        ));
        let long = [b"250 ".as_slice(), &[b'a'; 2000], b"\r\n"].concat();
        assert!(matches!(block(read(&long)), Err(SmtpError::TooLong)));
        let many = b"250-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(3000);
        assert!(matches!(block(read(&many)), Err(SmtpError::TooLong)));
    }

    #[test]
    fn reply_classes() {
        let refused = |code| {
            SmtpError::Refused(Reply {
                code,
                text: String::new(),
            })
        };
        assert!(refused(550).is_permanent() && !refused(550).is_transient());
        assert!(refused(451).is_transient() && !refused(451).is_permanent());
        assert!(check(Reply {
            code: 354,
            text: String::new()
        })
        .is_ok());
        assert!(check(Reply {
            code: 421,
            text: String::new()
        })
        .is_err());
        assert_eq!(SmtpError::Closed.status(), None);
    }

    /// EHLO replies as Exchange, Postfix-like and lower-case servers send
    /// them: the extensions the client uses are found in every one.
    #[test]
    fn ehlo_capabilities_of_real_servers_are_read() {
        use smtp_proto::{EXT_8BIT_MIME, EXT_SMTP_UTF8, EXT_START_TLS};
        let cases: [(&[u8], u32); 4] = [
            (
                b"250-mx.example Hello [192.0.2.1]\r\n250-SIZE 37748736\r\n250-PIPELINING\r\n\
                  250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-X-ANONYMOUSTLS\r\n\
                  250-AUTH NTLM\r\n250-X-EXPS GSSAPI NTLM\r\n250-8BITMIME\r\n250-BINARYMIME\r\n\
                  250-CHUNKING\r\n250-XRDST\r\n250 SMTPUTF8\r\n",
                EXT_8BIT_MIME | EXT_SMTP_UTF8 | EXT_START_TLS,
            ),
            (
                b"250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250-SIZE\r\n250-XFOO bar baz\r\n\
                  250-8BITMIME\r\n250 STARTTLS\r\n",
                EXT_8BIT_MIME | EXT_START_TLS,
            ),
            (
                b"250-mx\n250-8bitmime\n250 starttls\n",
                EXT_8BIT_MIME | EXT_START_TLS,
            ),
            // Control: a server that offers nothing.
            (b"250 mx\r\n", 0),
        ];
        for (reply, want) in cases {
            let got = EhloResponse::parse(&mut reply.iter()).unwrap().capabilities;
            assert_eq!(got & (EXT_8BIT_MIME | EXT_SMTP_UTF8 | EXT_START_TLS), want);
        }
    }

    /// The client against a scripted server on loopback: EHLO
    /// capabilities, a command, and a dot-stuffed message sent in pieces.
    #[test]
    fn a_transaction_against_a_scripted_server() {
        use tokio::io::AsyncReadExt as _;
        block(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let message: Vec<u8> = {
                let mut m = b".first\r\n".to_vec();
                m.extend(std::iter::repeat_n(b'x', DATA_PIECE - 3));
                m.extend_from_slice(b"\r\n.split across pieces\r\nend\r\n");
                m
            };
            let expect = super::super::data::stuffed(&message);
            let server = tokio::spawn(async move {
                let (sock, _) = listener.accept().await.unwrap();
                let mut sock = tokio::io::BufReader::new(sock);
                let mut line = String::new();
                sock.get_mut().write_all(b"220 hi\r\n").await.unwrap();
                sock.read_line(&mut line).await.unwrap();
                assert_eq!(line, "EHLO gw.test\r\n");
                sock.get_mut()
                    .write_all(b"250-hi\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    .await
                    .unwrap();
                line.clear();
                sock.read_line(&mut line).await.unwrap();
                assert_eq!(line, "DATA\r\n");
                sock.get_mut().write_all(b"354 go\r\n").await.unwrap();
                let mut got = Vec::new();
                while !got.ends_with(b"\r\n.\r\n") {
                    let mut buf = vec![0u8; 65536];
                    let n = sock.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                }
                sock.get_mut()
                    .write_all(b"250 2.0.0 queued\r\n")
                    .await
                    .unwrap();
                got
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut c = SmtpConnection::open(tcp, "gw.test").await.unwrap();
            assert!(c.supports(smtp_proto::EXT_8BIT_MIME));
            assert!(c.supports(smtp_proto::EXT_SMTP_UTF8));
            assert!(!c.can_starttls(), "STARTTLS was not offered");
            assert_eq!(c.command("DATA\r\n").await.unwrap().code, 354);
            let r = c.data(&message, Duration::from_secs(30)).await;
            let Ok(r) = r else { panic!("DATA failed") };
            assert_eq!(r.to_string(), "250 2.0.0 queued");
            assert_eq!(server.await.unwrap(), expect);
            // The hop has hung up since: nothing to keep.
            assert!(!c.in_step());
        });
    }
}

//! One client connection's bytes: a read buffer cut into command lines, and
//! a write buffer of replies flushed before the session waits for input
//! (so pipelined commands get their replies in one write).

use std::io;
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Longest command line in octets, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

/// Most octets one read takes from the client.
const READ_CHUNK: usize = 16 * 1024;

/// Most octets one read takes in the body of a large message (see
/// [`Conn::large_reads`]).
const LARGE_READ_CHUNK: usize = 128 * 1024;

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection.
    Closed,
    /// No input within the timeout.
    Timeout,
    /// The gateway is shutting down.
    Shutdown,
    Io(io::Error),
}

/// One line from the client, or a line that was too long (its bytes are
/// discarded up to the next LF).
#[derive(Debug)]
pub enum Line {
    Command(Vec<u8>),
    TooLong,
}

pub struct Conn<S> {
    pub stream: S,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    discarding: bool,
    /// Octets a read may take now.
    read_chunk: usize,
    /// How long the client may take to read what one flush writes.
    write_limit: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A connection whose client must take each flush of replies within
    /// `write_limit` (a client that pipelines commands and reads no
    /// replies would otherwise hold the session, past every timeout, once
    /// its socket buffers are full).
    pub fn new(stream: S, write_limit: Duration) -> Self {
        Self {
            stream,
            rbuf: Vec::with_capacity(4096),
            wbuf: Vec::with_capacity(1024),
            discarding: false,
            read_chunk: READ_CHUNK,
            write_limit,
        }
    }

    /// Queues a reply of one or more lines (`code`, then each text line).
    pub fn reply(&mut self, code: u16, lines: &[&str]) {
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.wbuf
                .extend_from_slice(format!("{code}{sep}{line}\r\n").as_bytes());
        }
    }

    /// Writes the queued replies, within the write limit.
    pub async fn flush(&mut self) -> io::Result<()> {
        let Self { stream, wbuf, .. } = self;
        let write = async {
            if !wbuf.is_empty() {
                stream.write_all(wbuf).await?;
                wbuf.clear();
            }
            stream.flush().await
        };
        tokio::time::timeout(self.write_limit, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client reads no replies"))?
    }

    /// Drops everything the client sent that has not been read yet
    /// (used after STARTTLS: nothing may cross the handshake).
    pub fn discard_input(&mut self) {
        self.rbuf.clear();
    }

    /// Input already received and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf
    }

    /// Reads in large pieces (`true`: the body of a large message, fewer
    /// reads and wake-ups) or in the usual small ones (`false`: the read
    /// buffer grown for a large message is given back).
    pub fn large_reads(&mut self, large: bool) {
        if large {
            self.read_chunk = LARGE_READ_CHUNK;
        } else if self.read_chunk != READ_CHUNK {
            self.read_chunk = READ_CHUNK;
            self.rbuf.shrink_to(READ_CHUNK);
        }
    }

    /// Gives the read buffer's memory back when nothing is buffered (a
    /// client that stalls in DATA then holds only the small read room the
    /// next read reserves, not the large one).
    pub fn release(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = Vec::new();
        }
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.rbuf.drain(..n);
    }

    /// Flushes pending replies, then waits for more input.
    pub async fn fill(
        &mut self,
        timeout: Duration,
        shutdown: Option<&mut watch::Receiver<bool>>,
    ) -> Result<(), ReadError> {
        self.flush().await.map_err(ReadError::Io)?;
        // Read straight into the buffer's free room (no copy through a
        // chunk on the side); a read takes at most what was reserved.
        let Self {
            stream,
            rbuf,
            read_chunk,
            ..
        } = self;
        let chunk = *read_chunk;
        // Exactly the room a read may take: the buffer never doubles past
        // what is left over plus one read.
        rbuf.reserve_exact(chunk);
        let room = rbuf.capacity() - rbuf.len();
        let mut limited = (&mut *rbuf).limit(room.min(chunk));
        let read = tokio::time::timeout(timeout, async {
            match shutdown {
                Some(rx) => {
                    if *rx.borrow() {
                        return Err(ReadError::Shutdown);
                    }
                    tokio::select! {
                        r = stream.read_buf(&mut limited) => r.map_err(ReadError::Io),
                        _ = rx.changed() => Err(ReadError::Shutdown),
                    }
                }
                None => stream.read_buf(&mut limited).await.map_err(ReadError::Io),
            }
        })
        .await
        .map_err(|_| ReadError::Timeout)??;
        if read == 0 {
            return Err(ReadError::Closed);
        }
        Ok(())
    }

    /// The next command line (LF or CRLF terminated, terminator included),
    /// which must be complete within `timeout`, however it trickles in.
    pub async fn next_line(
        &mut self,
        timeout: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Line, ReadError> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                if self.discarding {
                    self.discarding = false;
                    return Ok(Line::TooLong);
                }
                if line.len() > MAX_COMMAND_LINE {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Command(line));
            }
            if self.rbuf.len() > MAX_COMMAND_LINE {
                self.rbuf.clear();
                self.discarding = true;
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ReadError::Timeout);
            }
            self.fill(left, Some(shutdown)).await?;
        }
    }
}

//! A next hop for scripts/bench that takes mail and throws it away, at
//! little CPU cost: DATA is read 256 KiB at a time and only searched for
//! its end. Postfix's `smtp-sink` reads line by line and spends about
//! 7.7 ms of CPU on a 1.8 MB message: alone it takes no more than about
//! 130 such messages a second on this machine, so with it as the next hop
//! the 1 MiB rates measure the sink, not the gateway. scripts/bench
//! reports the 1 MiB case with both.
//!
//!   cargo run --release --example bench_sink 127.0.0.1:2525
//!
//! It answers EHLO with PIPELINING and 8BITMIME, every other command but
//! DATA and QUIT with 250, and never looks at what it is sent.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes read at a time.
const READ: usize = 256 * 1024;
/// The longest command line kept before the connection is dropped.
const MAX_LINE: usize = 64 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2525".into());
    let listener = TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A peer that goes away is no concern of a sink.
            let _ = session(stream).await;
        });
    }
}

async fn session(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.write_all(b"220 bench-sink ESMTP\r\n").await?;
    let mut buf = vec![0u8; READ];
    // Bytes of buf[..have] not yet read as commands start at 0.
    let mut have = 0;
    let mut replies = Vec::new();
    loop {
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..have]) {
            let line = &buf[start..start + nl + 1];
            start += nl + 1;
            let verb: Vec<u8> = line.iter().take(4).map(u8::to_ascii_uppercase).collect();
            match verb.as_slice() {
                b"EHLO" => replies
                    .extend_from_slice(b"250-bench-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
                b"QUIT" => {
                    replies.extend_from_slice(b"221 2.0.0 bye\r\n");
                    s.write_all(&replies).await?;
                    return Ok(());
                }
                b"DATA" => {
                    replies.extend_from_slice(b"354 go on\r\n");
                    s.write_all(&replies).await?;
                    replies.clear();
                    let left = skip_data(&mut s, &mut buf, start, have).await?;
                    have = left;
                    start = 0;
                    replies.extend_from_slice(b"250 2.0.0 Ok: discarded\r\n");
                }
                _ => replies.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            }
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if have > MAX_LINE {
            return Ok(());
        }
        if !replies.is_empty() {
            s.write_all(&replies).await?;
            replies.clear();
        }
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
    }
}

/// Reads the message that starts at `buf[start..have]` up to and with its
/// ending `CRLF . CRLF`; what the client sent after it is moved to the
/// front of `buf` and its length returned.
async fn skip_data(
    s: &mut TcpStream,
    buf: &mut [u8],
    start: usize,
    have: usize,
) -> io::Result<usize> {
    // The last bytes seen, so an ending split between reads is found; the
    // DATA line's own CRLF counts, so an empty message ends at once.
    let mut tail: Vec<u8> = b"\r\n".to_vec();
    let mut from = start;
    let mut to = have;
    loop {
        let mut joined = tail.clone();
        joined.extend_from_slice(&buf[from..to.min(from + 4)]);
        let found = match memchr::memmem::find(&joined, b"\r\n.\r\n") {
            Some(at) => Some(from + at + 5 - tail.len()),
            None => memchr::memmem::find(&buf[from..to], b"\r\n.\r\n").map(|at| from + at + 5),
        };
        if let Some(end) = found {
            buf.copy_within(end..to, 0);
            return Ok(to - end);
        }
        let seen = &buf[from..to];
        let keep = seen.len().min(4);
        tail.extend_from_slice(&seen[seen.len() - keep..]);
        let cut = tail.len().saturating_sub(4);
        tail.drain(..cut);
        from = 0;
        to = s.read(buf).await?;
        if to == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

//! A minimal blocking SMTP client that writes exactly the bytes a test
//! gives it and reads replies, for protocol-level tests.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

/// One reply: its code and all its lines joined.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut c = Client { reader, stream };
        let greeting = c.read()?;
        if greeting.code != 220 {
            return Err(std::io::Error::other(format!("greeting: {greeting:?}")));
        }
        Ok(c)
    }

    /// Like [`connect`](Self::connect), from the local address `from`
    /// (e.g. 127.0.0.2: a second client address on loopback).
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> std::io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(from, 0).into())?;
        socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut c = Client { reader, stream };
        let greeting = c.read()?;
        if greeting.code != 220 {
            return Err(std::io::Error::other(format!("greeting: {greeting:?}")));
        }
        Ok(c)
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn read(&mut self) -> std::io::Result<Reply> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text });
            }
        }
    }

    /// A reply the server has already sent, if any, without waiting for
    /// one (for clients that keep writing while the server may answer).
    pub fn read_nonblocking(&mut self) -> std::io::Result<Reply> {
        self.stream
            .set_read_timeout(Some(Duration::from_millis(20)))?;
        let r = self.read();
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        r
    }

    /// Sends a command line (CRLF added) and reads its reply.
    pub fn cmd(&mut self, line: &str) -> std::io::Result<Reply> {
        self.write(format!("{line}\r\n").as_bytes())?;
        self.read()
    }

    /// A whole transaction; returns the reply to "." (or the first failure).
    pub fn send(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> std::io::Result<Reply> {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"))?;
        if r.code != 250 {
            return Ok(r);
        }
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"))?;
            if r.code != 250 {
                return Ok(r);
            }
        }
        let r = self.cmd("DATA")?;
        if r.code != 354 {
            return Ok(r);
        }
        let mut stuffed = Vec::with_capacity(data.len() + 8);
        let mut at_start = true;
        for &b in data {
            if at_start && b == b'.' {
                stuffed.push(b'.');
            }
            stuffed.push(b);
            at_start = b == b'\n';
        }
        if !stuffed.ends_with(b"\r\n") {
            stuffed.extend_from_slice(b"\r\n");
        }
        stuffed.extend_from_slice(b".\r\n");
        self.write(&stuffed)?;
        self.read()
    }

    pub fn ehlo(&mut self) -> std::io::Result<Reply> {
        self.cmd("EHLO client.test")
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

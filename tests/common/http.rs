//! A minimal HTTP/1.0 server on 127.0.0.1 for revocation tests: GET
//! `/crl/<name>` answers the file `<dir>/<name>`; POST `/ocsp` hands the
//! request to a handler (the test runs `openssl ocsp` on it); anything else
//! is 404.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct FileServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

pub type OcspHandler = Box<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send>;

impl FileServer {
    pub fn start(dir: PathBuf) -> Self {
        Self::start_with(dir, None)
    }

    pub fn start_with(dir: PathBuf, ocsp: Option<OcspHandler>) -> Self {
        Self::start_on(0, dir, ocsp)
    }

    /// On a given port of 127.0.0.1 (0: any free one).
    pub fn start_on(port: u16, dir: PathBuf, ocsp: Option<OcspHandler>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let is_ocsp = line.starts_with("POST") && path == "/ocsp";
                let kind = if is_ocsp {
                    "application/ocsp-response"
                } else {
                    "application/pkix-crl"
                };
                let body = if is_ocsp {
                    let mut req = vec![0u8; length];
                    use std::io::Read;
                    let _ = reader.read_exact(&mut req);
                    ocsp.as_ref().and_then(|h| h(&req))
                } else {
                    path.strip_prefix("/crl/")
                        .filter(|n| !n.contains('/') && !n.contains(".."))
                        .and_then(|n| std::fs::read(dir.join(n)).ok())
                };
                let _ = match body {
                    Some(b) => stream
                        .write_all(format!("HTTP/1.0 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n", b.len()).as_bytes())
                        .and_then(|_| stream.write_all(&b)),
                    None => stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                };
            }
        });
        FileServer { addr, stop }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

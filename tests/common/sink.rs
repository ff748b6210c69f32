//! A scriptable SMTP next hop for tests: records what it receives and
//! answers RCPT and "." as the test says.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

#[derive(Default)]
pub struct Script {
    /// Replies to "." in order; "250 2.0.0 Ok" when empty.
    pub data_replies: VecDeque<String>,
    /// Recipient (lower case) → reply to its RCPT.
    pub rcpt_replies: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    script: Script,
    received: Vec<Received>,
    data_attempts: usize,
    rcpt_attempts: usize,
}

pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

impl Sink {
    pub fn start(script: Script) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let state = Arc::new(Mutex::new(State {
            script,
            ..State::default()
        }));
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind sink");
        let addr = listener.local_addr().expect("addr");
        let st = Arc::clone(&state);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(60), session(stream, st)).await;
                });
            }
        });
        Sink {
            addr,
            state,
            _runtime: runtime,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    pub fn data_attempts(&self) -> usize {
        self.state.lock().unwrap().data_attempts
    }

    /// RCPT commands received, probes included.
    pub fn rcpt_attempts(&self) -> usize {
        self.state.lock().unwrap().rcpt_attempts
    }
}

async fn session(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING".into()
        } else if upper.starts_with("HELO") {
            "250 sink".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = between(&text).to_string();
            rcpts.clear();
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let addr = between(&text).to_string();
            state.lock().unwrap().rcpt_attempts += 1;
            let scripted = state
                .lock()
                .unwrap()
                .script
                .rcpt_replies
                .get(&addr.to_ascii_lowercase())
                .cloned();
            match scripted {
                Some(r) => r,
                None => {
                    rcpts.push(addr);
                    "250 2.1.5 Ok".into()
                }
            }
        } else if upper == "DATA" {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut data = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
                if line.starts_with(b"..") {
                    data.extend_from_slice(&line[1..]);
                } else {
                    data.extend_from_slice(&line);
                }
            }
            let reply = {
                let mut st = state.lock().unwrap();
                st.data_attempts += 1;
                let reply = st
                    .script
                    .data_replies
                    .pop_front()
                    .unwrap_or_else(|| "250 2.0.0 Ok: queued".into());
                if reply.starts_with('2') {
                    st.received.push(Received {
                        from: from.clone(),
                        rcpts: rcpts.clone(),
                        data,
                    });
                }
                reply
            };
            reply
        } else if upper == "QUIT" {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            "250 Ok".into()
        } else {
            "502 5.5.1 unknown".into()
        };
        w.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

fn between(text: &str) -> &str {
    match (text.find('<'), text.rfind('>')) {
        (Some(a), Some(b)) if b > a => &text[a + 1..b],
        _ => "",
    }
}

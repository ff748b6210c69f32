//! A scriptable SMTP next hop for tests: records what it receives and
//! answers RCPT and "." as the test says; optionally offers STARTTLS with
//! a certificate of the test's choosing ([`NextHopCert`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// What followed the path in MAIL FROM (e.g. " BODY=8BITMIME").
    pub mail_params: String,
    /// The message came over STARTTLS.
    pub tls: bool,
    /// More commands had already arrived when MAIL FROM was read: the
    /// client sent its commands as a PIPELINING group (RFC 2920) instead
    /// of waiting for each reply.
    pub pipelined: bool,
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
    /// Recipient (lower case) → reply to "." of a transaction that has it
    /// (before `data_replies`).
    pub data_replies_for: HashMap<String, String>,
    /// Recipients (lower case) that are accepted and then bounced, as a
    /// mailbox server does for a full or disabled mailbox: an RFC 3464
    /// report quoting the whole message, sent from <> to the envelope
    /// sender along the routes of [`Sink::route_bounces`].
    pub bounce_after_accept: Vec<String>,
    /// Close the connection, without a word, once it has carried this many
    /// transactions (the reply to "." sent): a hop that does not let a
    /// connection be reused.
    pub close_after_transactions: Option<usize>,
    /// What the hop says before it closes so (e.g. "421 4.4.2 closing"),
    /// as a server that ends an idle connection does.
    pub close_saying: Option<String>,
    /// The reply to RSET; "250 Ok" when none.
    pub rset_reply: Option<String>,
    /// Never answer "." (the message is read, then nothing is said until
    /// the client hangs up; nothing is recorded).
    pub silent_after_data: bool,
    /// Do not offer PIPELINING in the reply to EHLO.
    pub no_pipelining: bool,
    /// Once a connection has carried this many transactions, read and
    /// never answer again, keeping it open (a connection dropped silently
    /// by a firewall while kept).
    pub silent_after_transactions: Option<usize>,
    /// Replies to MAIL FROM in order, each written at once; "250 2.1.0 Ok"
    /// when empty (a reply may be several, e.g. stray replies before the
    /// real one).
    pub mail_replies: VecDeque<String>,
}

/// Where the sink's own bounces go: mail for `domain` to `local`, the
/// rest to `elsewhere` (the outside world).
#[derive(Clone)]
struct BounceRoutes {
    domain: String,
    local: SocketAddr,
    elsewhere: SocketAddr,
}

/// A bounce the sink sent.
#[derive(Debug, Clone)]
pub struct SentBounce {
    pub to: String,
    pub via: SocketAddr,
    pub data: Vec<u8>,
    /// The reply to "." (or why it was not sent).
    pub reply: String,
}

#[derive(Default)]
struct State {
    script: Script,
    received: Vec<Received>,
    data_attempts: usize,
    rcpt_attempts: usize,
    connections: usize,
    rsets: usize,
    quits: usize,
    routes: Option<BounceRoutes>,
    bounces: Vec<SentBounce>,
}

pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

impl Sink {
    pub fn start(script: Script) -> Self {
        Self::start_with(script, None)
    }

    /// A next hop that offers STARTTLS with `cert`.
    pub fn start_tls(script: Script, cert: &NextHopCert) -> Self {
        Self::start_with(script, Some(cert.acceptor()))
    }

    fn start_with(script: Script, tls: Option<TlsAcceptor>) -> Self {
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
                st.lock().unwrap().connections += 1;
                let st = Arc::clone(&st);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(60), session(stream, st, tls))
                        .await;
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

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// QUIT commands received so far.
    pub fn quits(&self) -> usize {
        self.state.lock().unwrap().quits
    }

    /// RSET commands received so far.
    pub fn rsets(&self) -> usize {
        self.state.lock().unwrap().rsets
    }

    /// RCPT commands received, probes included.
    pub fn rcpt_attempts(&self) -> usize {
        self.state.lock().unwrap().rcpt_attempts
    }

    /// Bounces to addresses in `domain` go to `local`, all others to
    /// `elsewhere`.
    pub fn route_bounces(&self, domain: &str, local: SocketAddr, elsewhere: SocketAddr) {
        self.state.lock().unwrap().routes = Some(BounceRoutes {
            domain: domain.to_ascii_lowercase(),
            local,
            elsewhere,
        });
    }

    /// The bounces sent so far.
    pub fn bounces(&self) -> Vec<SentBounce> {
        self.state.lock().unwrap().bounces.clone()
    }
}

/// A mailbox server's bounce: the report and the whole returned message.
fn bounce_text(to: &str, rcpt: &str, original: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "From: MAILER-DAEMON@sink.test\r\nTo: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"SINKDSN\"\r\n\r\n\
         --SINKDSN\r\nContent-Type: text/plain\r\n\r\nThe mailbox is over quota.\r\n\r\n\
         --SINKDSN\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; sink.test\r\n\r\n\
         Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.2.2\r\n\
         Diagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n\r\n\
         --SINKDSN\r\nContent-Type: message/rfc822\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(original);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--SINKDSN--\r\n");
    out
}

/// Sends `data` from <> to `to` at `addr`; the reply to "." or the error.
async fn send_bounce(addr: SocketAddr, to: &str, data: &[u8]) -> String {
    async fn go(addr: SocketAddr, to: &str, data: &[u8]) -> std::io::Result<String> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        async fn reply(
            r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        ) -> std::io::Result<String> {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await? == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(all.trim_end().to_string());
                }
            }
        }
        reply(&mut r).await?;
        for cmd in [
            "EHLO sink.test".to_string(),
            "MAIL FROM:<>".to_string(),
            format!("RCPT TO:<{to}>"),
            "DATA".to_string(),
        ] {
            w.write_all(format!("{cmd}\r\n").as_bytes()).await?;
            let answer = reply(&mut r).await?;
            if !(answer.starts_with('2') || answer.starts_with('3')) {
                return Ok(answer);
            }
        }
        let mut stuffed = Vec::with_capacity(data.len() + 16);
        let mut at_start = true;
        for &b in data {
            if at_start && b == b'.' {
                stuffed.push(b'.');
            }
            stuffed.push(b);
            at_start = b == b'\n';
        }
        stuffed.extend_from_slice(b".\r\n");
        w.write_all(&stuffed).await?;
        let answer = reply(&mut r).await?;
        let _ = w.write_all(b"QUIT\r\n").await;
        Ok(answer)
    }
    match go(addr, to, data).await {
        Ok(r) => r,
        Err(e) => format!("not sent: {e}"),
    }
}

/// Where a dialogue ended.
enum Next {
    Closed,
    /// The client asked for STARTTLS and was told to go ahead.
    StartTls,
}

async fn session(
    stream: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let mut plain = BufReader::new(stream);
    plain.write_all(b"220 sink ESMTP\r\n").await?;
    match dialogue(&mut plain, &state, tls.is_some(), false).await? {
        Next::Closed => Ok(()),
        Next::StartTls => {
            let Some(acceptor) = tls else { return Ok(()) };
            // Whatever was pipelined behind STARTTLS is dropped with the buffer.
            let secured = acceptor.accept(plain.into_inner()).await?;
            let mut secured = BufReader::new(secured);
            dialogue(&mut secured, &state, false, true)
                .await
                .map(|_| ())
        }
    }
}

async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut BufReader<S>,
    state: &Arc<Mutex<State>>,
    offer_tls: bool,
    tls: bool,
) -> std::io::Result<Next> {
    let mut from = String::new();
    let mut mail_params = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    let mut transactions = 0usize;
    let mut pipelined = false;
    loop {
        line.clear();
        if w.read_until(b'\n', &mut line).await? == 0 {
            return Ok(Next::Closed);
        }
        let silent = state.lock().unwrap().script.silent_after_transactions;
        if silent.is_some_and(|n| transactions >= n) {
            while w.read_until(b'\n', &mut line).await? > 0 {}
            return Ok(Next::Closed);
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let mut ehlo = String::from("250-sink\r\n");
            if offer_tls {
                ehlo.push_str("250-STARTTLS\r\n");
            }
            if !state.lock().unwrap().script.no_pipelining {
                ehlo.push_str("250-PIPELINING\r\n");
            }
            ehlo.push_str("250-8BITMIME\r\n250 SMTPUTF8");
            ehlo
        } else if upper == "STARTTLS" && offer_tls {
            w.write_all(b"220 2.0.0 go ahead\r\n").await?;
            w.flush().await?;
            return Ok(Next::StartTls);
        } else if upper.starts_with("HELO") {
            "250 sink".into()
        } else if upper.starts_with("MAIL FROM:") {
            pipelined = !w.buffer().is_empty();
            from = between(&text).to_string();
            mail_params = text.rfind('>').map_or("", |i| &text[i + 1..]).to_string();
            rcpts.clear();
            state
                .lock()
                .unwrap()
                .script
                .mail_replies
                .pop_front()
                .unwrap_or_else(|| "250 2.1.0 Ok".into())
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
            w.flush().await?;
            let mut data = Vec::new();
            loop {
                line.clear();
                if w.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(Next::Closed);
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
            if state.lock().unwrap().script.silent_after_data {
                state.lock().unwrap().data_attempts += 1;
                while w.read_until(b'\n', &mut line).await? > 0 {
                    line.clear();
                }
                return Ok(Next::Closed);
            }
            let (reply, bounce) = {
                let mut st = state.lock().unwrap();
                st.data_attempts += 1;
                let scripted = rcpts
                    .iter()
                    .find_map(|r| st.script.data_replies_for.get(&r.to_ascii_lowercase()))
                    .cloned();
                let reply = scripted.unwrap_or_else(|| {
                    st.script
                        .data_replies
                        .pop_front()
                        .unwrap_or_else(|| "250 2.0.0 Ok: queued".into())
                });
                let mut bounce = None;
                if reply.starts_with('2') {
                    let bounced = rcpts.iter().find(|r| {
                        st.script
                            .bounce_after_accept
                            .contains(&r.to_ascii_lowercase())
                    });
                    if let (Some(rcpt), false) = (bounced, from.is_empty()) {
                        let domain = from.rsplit('@').next().unwrap_or("").to_ascii_lowercase();
                        let via = st.routes.as_ref().map(|routes| {
                            if domain == routes.domain {
                                routes.local
                            } else {
                                routes.elsewhere
                            }
                        });
                        if let Some(via) = via {
                            bounce = Some((via, from.clone(), bounce_text(&from, rcpt, &data)));
                        }
                    }
                    st.received.push(Received {
                        from: from.clone(),
                        rcpts: rcpts.clone(),
                        data,
                        mail_params: mail_params.clone(),
                        tls,
                        pipelined,
                    });
                }
                (reply, bounce)
            };
            if let Some((via, to, text)) = bounce {
                let st = Arc::clone(state);
                tokio::spawn(async move {
                    let answer = send_bounce(via, &to, &text).await;
                    st.lock().unwrap().bounces.push(SentBounce {
                        to,
                        via,
                        data: text,
                        reply: answer,
                    });
                });
            }
            transactions += 1;
            let close_after = state.lock().unwrap().script.close_after_transactions;
            if close_after.is_some_and(|n| transactions >= n) {
                w.write_all(format!("{reply}\r\n").as_bytes()).await?;
                let saying = state.lock().unwrap().script.close_saying.clone();
                if let Some(last) = saying {
                    w.write_all(format!("{last}\r\n").as_bytes()).await?;
                }
                w.flush().await?;
                return Ok(Next::Closed);
            }
            reply
        } else if upper == "QUIT" {
            state.lock().unwrap().quits += 1;
            w.write_all(b"221 bye\r\n").await?;
            w.flush().await?;
            return Ok(Next::Closed);
        } else if upper == "RSET" {
            let mut st = state.lock().unwrap();
            st.rsets += 1;
            from.clear();
            rcpts.clear();
            st.script
                .rset_reply
                .clone()
                .unwrap_or_else(|| "250 Ok".into())
        } else if upper == "NOOP" {
            "250 Ok".into()
        } else {
            "502 5.5.1 unknown".into()
        };
        w.write_all(format!("{reply}\r\n").as_bytes()).await?;
        w.flush().await?;
    }
}

/// A test CA and a next hop certificate it issued for some names.
pub struct NextHopCert {
    /// The issuing CA, PEM.
    pub ca_pem: String,
    /// The next hop's certificate, DER and PEM.
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl NextHopCert {
    /// A fresh CA and a certificate for `names` signed by it.
    pub fn issue(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so two test CAs are told apart by name.
        let serial = openssl::sha::sha256(&ca_key.serialize_der());
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Test next hop CA {:02x}{:02x}", serial[0], serial[1]),
        );
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        NextHopCert {
            ca_pem: ca.pem(),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// SHA-256 of the certificate, hex.
    pub fn fingerprint(&self) -> String {
        openssl::sha::sha256(&self.cert_der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn acceptor(&self) -> TlsAcceptor {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

fn between(text: &str) -> &str {
    match (text.find('<'), text.rfind('>')) {
        (Some(a), Some(b)) if b > a => &text[a + 1..b],
        _ => "",
    }
}

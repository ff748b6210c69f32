//! Test harness: the real gateway binary started on loopback with a
//! configuration of the test's own, a scriptable SMTP next hop, and a
//! minimal SMTP client for protocol-level tests.
#![allow(dead_code)]

pub mod chromium;
pub mod client;
pub mod cutter;
pub mod dovecot;
pub mod http;
pub mod ldap_entries;
pub mod pki;
pub mod postfix;
pub mod postgres;
pub mod sink;
pub mod slapd;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_smime-gateway");

/// A free port on 127.0.0.1 for a server the test starts itself (bound
/// and released). It is taken below the kernel's ephemeral range, which
/// the kernel hands to every `bind(0)` and outgoing connection on the
/// host, so only another process choosing ports by number can take it
/// before the server binds it; processes start at different places in
/// the range and one process never hands out a port twice in a row.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(32768);
    let (first, span) = (10_000u32, low.saturating_sub(10_000).max(1000));
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (start + n) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A listener on 127.0.0.1 that takes every connection and never says or
/// answers anything (a server or directory that hangs); the connections
/// are held open for the test's life.
pub struct Silent {
    pub port: u16,
    taken: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("no free port");
        let port = listener.local_addr().unwrap().port();
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = taken.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in listener.incoming().flatten() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(c);
            }
        });
        Silent { port, taken }
    }

    /// Connections taken so far.
    pub fn taken(&self) -> usize {
        self.taken.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The gateway process under test.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    /// The spool folder (`Options::spool_dir`, else in `dir`).
    spool: PathBuf,
    pub config: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    starts: u32,
    env: Vec<(String, String)>,
    args: Vec<String>,
    open_files: Option<u64>,
    open_files_hard: Option<u64>,
}

/// Settings a test may change; the rest is fixed for speed.
pub struct Options {
    pub internal_hop: SocketAddr,
    pub external_hop: SocketAddr,
    pub trusted: bool,
    /// `server.sign_without_submission_path`: on unless a test turns it off
    /// (the tests' clients stand for a mail server that ties every sender
    /// to its login; the product's default is off).
    pub sign_without_submission_path: bool,
    pub extra_server: String,
    pub extra: String,
    pub spool_dir: Option<PathBuf>,
    /// Environment variables for the gateway process.
    pub env: Vec<(String, String)>,
    /// Extra arguments after `serve --config PATH` (e.g. `--log-format json`).
    pub args: Vec<String>,
    /// The soft limit on open files the process starts with (as a shell's
    /// `ulimit -Sn` would give it); `None`: this test's own.
    pub open_files: Option<u64>,
    /// The hard limit on open files too (the daemon raises its soft limit
    /// to the hard one): `None`, this test's own.
    pub open_files_hard: Option<u64>,
}

impl Options {
    pub fn new(hop: SocketAddr) -> Self {
        Self {
            internal_hop: hop,
            external_hop: hop,
            trusted: true,
            sign_without_submission_path: true,
            extra_server: String::new(),
            extra: String::new(),
            spool_dir: None,
            env: Vec::new(),
            args: Vec::new(),
            open_files: None,
            open_files_hard: None,
        }
    }
}

impl Gateway {
    pub fn start(opts: Options) -> Self {
        // A port found free can be taken by another process before the
        // gateway binds it: then the gateway says so and stops, and it is
        // started again on another port.
        let mut tries = 0;
        loop {
            let mut gw = Self::configured(&opts);
            tries += 1;
            match gw.try_spawn() {
                Ok(()) => return gw,
                Err(log) if tries < 5 && log.contains("Address already in use") => continue,
                Err(log) => panic!("gateway did not start; log:\n{log}"),
            }
        }
    }

    /// The gateway's folder and configuration, on a port free right now.
    fn configured(opts: &Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let spool = opts
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("spool"));
        let trusted = if opts.trusted {
            "[\"127.0.0.0/8\"]"
        } else {
            "[]"
        };
        let text = format!(
            r#"
[server]
hostname = "gw.test"
listen = ["127.0.0.1:{port}"]
internal_domains = ["example-law.dk"]
trusted_networks = {trusted}
shutdown_timeout = "5s"
sign_without_submission_path = {sign_without}
{extra_server}

[spool]
dir = "{spool}"

[relay]
internal = "{internal}"
external = "{external}"
tls = "none"
connect_timeout = "2s"
timeout = "10s"

[queue]
retry_intervals = ["1s"]
scan_interval = "1s"
{extra}
"#,
            sign_without = opts.sign_without_submission_path,
            extra_server = opts.extra_server,
            spool = spool.display(),
            internal = opts.internal_hop,
            external = opts.external_hop,
            extra = opts.extra,
        );
        let config = dir.path().join("gateway.toml");
        fs::write(&config, text).expect("write config");
        Gateway {
            dir,
            spool,
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            starts: 0,
            env: opts.env.clone(),
            args: opts.args.clone(),
            open_files: opts.open_files,
            open_files_hard: opts.open_files_hard,
        }
    }

    /// The daemon's peak resident memory so far (kB; 0 when not running).
    pub fn peak_kb(&self) -> u64 {
        self.pid().map_or(0, |pid| status_kb(pid, "VmHWM:"))
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// Everything the gateway logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn spool(&self) -> PathBuf {
        self.spool.clone()
    }

    /// Starts the process and waits until it accepts connections.
    pub fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("gateway did not start; log:\n{log}");
        }
    }

    /// Starts the process and waits until it has said it started (all its
    /// listeners bound: a connection alone could reach another process on
    /// a port taken meanwhile); its log when it did not.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = Command::new(BIN);
        if self.open_files.is_some() || self.open_files_hard.is_some() {
            let (soft, hard) = (self.open_files, self.open_files_hard);
            use std::os::unix::process::CommandExt;
            // SAFETY: only getrlimit/setrlimit between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut l = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some(hard) = hard {
                        l.rlim_max = hard as libc::rlim_t;
                        l.rlim_cur = l.rlim_cur.min(l.rlim_max);
                    }
                    if let Some(soft) = soft {
                        l.rlim_cur = (soft as libc::rlim_t).min(l.rlim_max);
                    }
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start gateway");
        self.child = Some(child);
        self.starts += 1;
        let (addr, starts, log_path) = (self.addr, self.starts as usize, self.log_path());
        let child = self.child.as_mut().expect("just started");
        let started = || {
            fs::read_to_string(&log_path)
                .unwrap_or_default()
                .matches("smime-gateway started")
                .count()
                >= starts
        };
        let up = wait_until(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
                || (started()
                    && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        }) && matches!(child.try_wait(), Ok(None));
        if up {
            Ok(())
        } else {
            self.kill9();
            Err(self.log())
        }
    }

    /// SIGKILL: the crash case.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the running process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Runs the binary with `args` (a CLI command) and this configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--config").arg(&self.config);
        cmd.output().expect("run cli")
    }

    /// Messages in `spool/queue`.
    pub fn queued(&self) -> usize {
        count_files(&self.spool().join("queue"), "msg")
    }
}

/// What `explain --config CONFIG --rcpt RCPT` says (standard output and
/// error), with `env` set, and whether it exits 0 (the mail would go).
pub fn explain(config: &Path, rcpt: &str, env: &[(&str, &str)]) -> (String, bool) {
    let out = Command::new(BIN)
        .args(["explain", "--config"])
        .arg(config)
        .args(["--rcpt", rcpt])
        .envs(env.iter().copied())
        .output()
        .expect("run explain");
    (output_text(&out), out.status.success())
}

/// A command's standard output followed by its standard error.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
    }
}

pub fn count_files(dir: &Path, ext: &str) -> usize {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count()
        })
        .unwrap_or(0)
}

/// A small test message with CRLF line ends.
pub fn message(id: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: Bob <bob@example-law.dk>\r\n\
         Subject: test {id}\r\nMessage-ID: <{id}@test>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// GET `url` on loopback: status and body.
pub fn http_get(url: &str) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut resp = agent.get(url).call().expect("http get");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// One message through a fresh session (EHLO, MAIL, RCPT..., DATA); the
/// reply to ".".
pub fn submit(gw: &Gateway, from: &str, rcpts: &[&str], body: &[u8]) -> client::Reply {
    let mut c = client::Client::connect(gw.addr).expect("connect");
    c.ehlo().expect("EHLO");
    c.send(from, rcpts, body).expect("transaction")
}

/// A memory figure of process `pid` from `/proc/PID/status` (`field` is
/// e.g. "VmRSS:"), in kB; 0 when it cannot be read.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

//! A private PostgreSQL cluster for one test: `initdb` in a temporary
//! folder, `pg_ctl start` on 127.0.0.1 at a free port (socket in the same
//! folder), trust authentication for the user `gw`, TLS on when asked;
//! stopped when dropped.
//! PostgreSQL refuses to run as root: as root the cluster belongs to the
//! unprivileged `nobody`, and every server command runs through
//! `runuser -u nobody`. Each command is bounded by `timeout`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_user: Option<&'static str>,
}

/// The folder with `initdb` and `pg_ctl`: Debian's newest version, else
/// the one on PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop().or_else(|| {
        let out = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        path.parent().map(Path::to_path_buf)
    })
}

/// Root runs the cluster as `nobody` (the effective uid, from `id -u`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Why the cluster cannot be made here (the test says so and skips), or
/// `None` when it can.
pub fn unavailable() -> Option<String> {
    match bin_dir() {
        None => {
            Some("PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql".into())
        }
        Some(_) => None,
    }
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// As [`start`], with TLS on (the server's certificate and key from
    /// `tls`).
    pub fn start_tls(tls: &super::sink::NextHopCert) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&super::sink::NextHopCert>) -> Self {
        let bin = bin_dir().expect("PostgreSQL binaries");
        let dir = tempfile::Builder::new()
            .prefix("smimegw-pg")
            .tempdir()
            .expect("tempdir");
        let as_user = is_root().then_some("nobody");
        let mut ssl = String::new();
        if let Some(t) = tls {
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert, &t.cert_pem).expect("write server certificate");
            std::fs::write(&key, &t.key_pem).expect("write server key");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("key mode");
            ssl = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        if as_user.is_some() {
            let status = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster folder failed");
        }
        let port = super::free_port();
        let pg = Postgres {
            dir,
            bin,
            port,
            as_user,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                "gw",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off{ssl}",
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("server.log");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-l",
                log.to_str().expect("utf-8 path"),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a server program (as the cluster's owner), bounded to two
    /// minutes; panics with its output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "timeout", "120"]).arg(&exe);
                c
            }
            None => {
                let mut c = Command::new("timeout");
                c.arg("120").arg(&exe);
                c
            }
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run PostgreSQL program");
        assert!(
            out.status.success(),
            "{program} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A database of its own in the cluster, and its URL.
    pub fn database(&self, name: &str) -> String {
        let out = Command::new("timeout")
            .arg("60")
            .arg(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "gw",
                name,
            ])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://gw@127.0.0.1:{}/{name}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "timeout", "60"]).arg(&exe);
                c
            }
            None => {
                let mut c = Command::new("timeout");
                c.arg("60").arg(&exe);
                c
            }
        };
        let _ = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

//! A private Dovecot IMAP server for tests: its own configuration, run
//! and state folders and Maildirs in a temporary folder, listening on
//! 127.0.0.1 on a free port, users from a passwd-file, plain IMAP (the
//! tests ask for it explicitly); stopped (SIGTERM, then SIGKILL) when
//! dropped. As root, mail belongs to `nobody` (Dovecot refuses uid 0).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

pub struct Dovecot {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// IMAPS (only with a certificate).
    pub imaps_port: u16,
    child: Option<Child>,
    uid: u32,
    gid: u32,
}

/// Why Dovecot cannot be used here (not installed), if so.
pub fn unavailable() -> Option<String> {
    match Command::new("dovecot").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("dovecot is not installed (scripts/test installs dovecot-imapd)".into()),
    }
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Dovecot {
    /// Starts Dovecot with `users` (login, password), plain IMAP only.
    pub fn start(users: &[(&str, &str)]) -> Self {
        Self::start_with(users, None, &[])
    }

    /// Starts Dovecot with `users`, with a TLS certificate and key (PEM:
    /// STARTTLS on the IMAP port, and IMAPS) and master users (`login*master`).
    pub fn start_with(
        users: &[(&str, &str)],
        tls: Option<(&str, &str)>,
        masters: &[(&str, &str)],
    ) -> Self {
        Self::start_configured(users, tls, masters, "")
    }

    /// Starts Dovecot as [`Dovecot::start_with`], with `conf` (settings
    /// such as `imap_capability = …`) added to its configuration.
    pub fn start_configured(
        users: &[(&str, &str)],
        tls: Option<(&str, &str)>,
        masters: &[(&str, &str)],
        conf: &str,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("smimegw-dovecot")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = id("-u") == "0";
        let (uid, gid, internal, login) = if root {
            (65534, 65534, "dovecot".to_string(), "dovenull".to_string())
        } else {
            let me = id("-un");
            (
                id("-u").parse().unwrap(),
                id("-g").parse().unwrap(),
                me.clone(),
                me,
            )
        };
        let d = dir.path();
        for sub in ["run", "state", "mail", "rawlog"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        // What clients send after login, one file per session (`*.in`).
        fs::set_permissions(d.join("rawlog"), fs::Permissions::from_mode(0o777)).unwrap();
        let passwd: String = users
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}::::::\n"))
            .collect();
        fs::write(d.join("passwd"), passwd).unwrap();
        let port = free_port();
        let imaps_port = if tls.is_some() { free_port() } else { 0 };
        let mut extra = String::new();
        if let Some((cert, key)) = tls {
            fs::write(d.join("cert.pem"), cert).unwrap();
            fs::write(d.join("key.pem"), key).unwrap();
            extra.push_str(&format!(
                "ssl = yes\nssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem\n",
                d = d.display()
            ));
        } else {
            extra.push_str("ssl = no\n");
        }
        if !masters.is_empty() {
            let m: String = masters
                .iter()
                .map(|(u, p)| format!("{u}:{{PLAIN}}{p}::::::\n"))
                .collect();
            fs::write(d.join("masters"), m).unwrap();
            extra.push_str(&format!(
                "auth_master_user_separator = *\n\
                 passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {d}/masters\n  master = yes\n}}\n",
                d = d.display()
            ));
        }
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\ninstance_name = smimegw-test-{port}\n\
             log_path = {d}/dovecot.log\nprotocols = imap\nlisten = 127.0.0.1\n{extra}\
             disable_plaintext_auth = no\nauth_mechanisms = plain\n\
             default_internal_user = {internal}\ndefault_login_user = {login}\n\
             first_valid_uid = 0\nmail_location = maildir:{d}/mail/%u\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {d}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={d}/mail/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
               inet_listener imaps {{\n    address = 127.0.0.1\n    port = {imaps_port}\n  }}\n  chroot =\n}}\n\
             service anvil {{\n  chroot =\n}}\n\
             rawlog_dir = {d}/rawlog\n{conf}\n",
            d = d.display()
        );
        fs::write(d.join("dovecot.conf"), conf).unwrap();
        let mut dv = Dovecot {
            dir,
            port,
            imaps_port,
            child: None,
            uid,
            gid,
        };
        dv.spawn();
        dv
    }

    fn spawn(&mut self) {
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(30), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "dovecot did not start: {}",
            self.log()
        );
    }

    /// The Maildir of `user` (Dovecot creates it at first login; a test
    /// may fill it before).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// Gives the mail folder to the user Dovecot runs mail as.
    pub fn own_mail(&self) {
        chown_r(&self.dir.path().join("mail"), self.uid, self.gid);
    }

    /// Everything clients sent after login, session after session
    /// (Dovecot's rawlog), with CRLF as LF.
    pub fn client_lines(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.dir.path().join("rawlog"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "in"));
        files.sort();
        files
            .iter()
            .flat_map(|p| {
                String::from_utf8_lossy(&fs::read(p).unwrap_or_default())
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Stops the server (bounded: SIGTERM, 10 s, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let mut done = false;
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !done {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn chown_r(p: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::chown(p, Some(uid), Some(gid));
    if p.is_dir() {
        for e in fs::read_dir(p).unwrap().flatten() {
            chown_r(&e.path(), uid, gid);
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A private Postfix instance for tests: its own config, queue and data
//! folders, smtpd on a loopback port, every delivery to a relayhost on
//! loopback. Needs root; `available()` says why not when it cannot run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Postfix {
    pub dir: tempfile::TempDir,
}

/// `None` when a private Postfix can run here, else the reason.
pub fn unavailable() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !root {
        return Some("a private Postfix instance needs root".into());
    }
    if Command::new("postfix").arg("-h").output().is_err()
        && !Path::new("/usr/sbin/postfix").exists()
    {
        return Some("postfix is not installed (scripts/test installs it)".into());
    }
    None
}

impl Postfix {
    /// Starts Postfix with smtpd on `listen`, relaying everything to
    /// `relayhost`, plus `main_extra` and `master_extra` lines.
    pub fn start(listen: &str, relayhost: &str, main_extra: &str, master_extra: &str) -> Self {
        match Self::try_start(listen, relayhost, main_extra, master_extra) {
            Ok(pf) => pf,
            Err(why) => panic!("{why}"),
        }
    }

    /// [`Postfix::start`], or why Postfix did not start: a port of
    /// `listen` or `master_extra` taken by another process after the test
    /// chose it ("Address already in use") is an error to try again with
    /// other ports, not a panic.
    pub fn try_start(
        listen: &str,
        relayhost: &str,
        main_extra: &str,
        master_extra: &str,
    ) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("smimegw-postfix")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        // The queue's parents must be traversable by the postfix user.
        let _ = Command::new("chmod").arg("755").arg(d).status();
        let _ = Command::new("chown")
            .arg("postfix")
            .arg(d.join("data"))
            .status();
        std::fs::write(
            d.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {q}\ndata_directory = {data}\n\
                 mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = postfix.test.invalid\n\
                 mydestination =\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
                 mynetworks = 127.0.0.0/8\nrelayhost = {relayhost}\n\
                 smtpd_relay_restrictions = permit_mynetworks, reject\nsmtp_dns_support_level = disabled\n\
                 alias_maps =\nalias_database =\nlocal_recipient_maps =\n\
                 maillog_file_prefixes = {root}\nmaillog_file = {root}/maillog\n\
                 queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n\
                 smtp_connect_timeout = 2s\n{main_extra}\n",
                q = d.join("spool").display(),
                data = d.join("data").display(),
                root = d.display(),
            ),
        )
        .expect("main.cf");
        std::fs::write(
            d.join("etc/master.cf"),
            format!(
                "{listen} inet n - n - - smtpd\n\
                 pickup    unix  n       -       n       60      1       pickup\n\
                 cleanup   unix  n       -       n       -       0       cleanup\n\
                 qmgr      unix  n       -       n       300     1       qmgr\n\
                 rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
                 bounce    unix  -       -       n       -       0       bounce\n\
                 defer     unix  -       -       n       -       0       bounce\n\
                 trace     unix  -       -       n       -       0       bounce\n\
                 verify    unix  -       -       n       -       1       verify\n\
                 flush     unix  n       -       n       1000?   0       flush\n\
                 proxymap  unix  -       -       n       -       -       proxymap\n\
                 smtp      unix  -       -       n       -       -       smtp\n\
                 relay     unix  -       -       n       -       -       smtp\n\
                 showq     unix  n       -       n       -       -       showq\n\
                 error     unix  -       -       n       -       -       error\n\
                 retry     unix  -       -       n       -       -       error\n\
                 discard   unix  -       -       n       -       -       discard\n\
                 anvil     unix  -       -       n       -       1       anvil\n\
                 scache    unix  -       -       n       -       1       scache\n\
                 postlog   unix-dgram n  -       n       -       1       postlogd\n{master_extra}\n"
            ),
        )
        .expect("master.cf");
        let pf = Postfix { dir };
        pf.run(&["check"]);
        let started = Command::new("postfix")
            .arg("-c")
            .arg(pf.conf())
            .arg("start")
            .output()
            .expect("postfix");
        let port: u16 = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let listening = started.status.success()
            && super::wait_until(Duration::from_secs(15), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    || pf.log().contains("Address already in use")
            });
        if !listening || pf.log().contains("Address already in use") {
            return Err(format!(
                "postfix did not start: {}{}",
                String::from_utf8_lossy(&started.stderr),
                pf.log()
            ));
        }
        Ok(pf)
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .expect("postfix");
        assert!(
            out.status.success(),
            "postfix {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Retries everything queued now.
    pub fn flush(&self) {
        let _ = Command::new("postqueue")
            .arg("-c")
            .arg(self.conf())
            .arg("-f")
            .output();
    }

    /// Messages in Postfix's queue.
    pub fn queued(&self) -> usize {
        ["incoming", "active", "deferred", "maildrop", "hold"]
            .iter()
            .map(|q| count(&self.dir.path().join("spool").join(q)))
            .sum()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

fn count(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| {
            if e.path().is_dir() {
                count(&e.path())
            } else {
                1
            }
        })
        .sum()
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.conf())
            .arg("stop")
            .output();
        if std::thread::panicking() {
            eprintln!("--- postfix log ---\n{}", self.log());
        }
    }
}

//! A private slapd on 127.0.0.1 holding e-mail addresses with their
//! certificates (`userCertificate;binary`), as a directory like the Danish
//! OCES2 one answers; stopped when dropped.
//! Several entries, plain LDAP only (`slapd` has one entry, with TLS).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;

pub struct EntriesSlapd {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for EntriesSlapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EntriesSlapd {
    /// Starts slapd with one entry per (address, PEM certificate file).
    pub fn start(entries: &[(&str, &Path)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        std::fs::create_dir(dir.path().join("db")).expect("db dir");
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\npidfile {d}/slapd.pid\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\ndatabase mdb\nsuffix \"c=DK\"\n\
                 rootdn \"cn=admin,c=DK\"\nrootpw secret\ndirectory {d}/db\n",
                d = dir.path().display()
            ),
        )
        .expect("slapd.conf");
        let child = Command::new("slapd")
            .args([
                "-f",
                conf.to_str().expect("utf-8 path"),
                "-h",
                &format!("ldap://127.0.0.1:{port}/"),
                "-d",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("slapd (scripts/test installs it)");
        let s = EntriesSlapd {
            child,
            _dir: dir,
            port,
        };
        assert!(
            super::wait_until(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "slapd did not start"
        );
        let mut ldif = String::from("dn: c=DK\nobjectClass: country\nc: DK\n\n");
        for (i, (mail, pem)) in entries.iter().enumerate() {
            let der = super::pki::openssl(
                &[
                    "x509",
                    "-outform",
                    "DER",
                    "-in",
                    pem.to_str().expect("utf-8 path"),
                ],
                b"",
            );
            ldif.push_str(&format!(
                "dn: cn=Entry{i},c=DK\nobjectClass: inetOrgPerson\nobjectClass: pkiUser\n\
                 cn: Entry{i}\nsn: Entry{i}\nmail: {mail}\nuserCertificate;binary:: {}\n\n",
                base64::engine::general_purpose::STANDARD.encode(der)
            ));
        }
        super::pki::run(
            "ldapadd",
            &[
                "-x",
                "-H",
                &format!("ldap://127.0.0.1:{port}"),
                "-D",
                "cn=admin,c=DK",
                "-w",
                "secret",
            ],
            ldif.as_bytes(),
        );
        s
    }
}

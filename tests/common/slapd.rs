//! A private `slapd` on 127.0.0.1 holding one entry (an address and the
//! court's OCES3 certificate), optionally with TLS: `ldaps://` on a port
//! of its own and StartTLS on the plain one, with a test certificate for
//! 127.0.0.1.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;

use super::sink::NextHopCert;
use super::{free_port, pki, wait_until};

pub struct Slapd {
    child: Child,
    _dir: tempfile::TempDir,
    /// `ldap://` (and StartTLS when started with TLS).
    pub port: u16,
    /// `ldaps://`, when started with TLS.
    pub tls_port: Option<u16>,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Slapd {
    /// One entry `cn=Partner,c=DK` with `mail` and the court's OCES3
    /// certificate as `userCertificate;binary`; TLS with `tls` when given.
    pub fn start(mail: &str, tls: Option<&NextHopCert>) -> Slapd {
        Self::holding(mail, tls, "court-oces3")
    }

    /// As [`Slapd::start`], the entry holding the demo certificate `cert`.
    pub fn holding(mail: &str, tls: Option<&NextHopCert>, cert: &str) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let mut tls_lines = String::new();
        if let Some(cert) = tls {
            for (name, text) in [
                ("ca.pem", &cert.ca_pem),
                ("cert.pem", &cert.cert_pem),
                ("key.pem", &cert.key_pem),
            ] {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            tls_lines = format!(
                "TLSCACertificateFile {d}/ca.pem\nTLSCertificateFile {d}/cert.pem\n\
                 TLSCertificateKeyFile {d}/key.pem\n",
                d = dir.path().display()
            );
        }
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\npidfile {d}/slapd.pid\n{tls_lines}\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\ndatabase mdb\nsuffix \"c=DK\"\n\
                 rootdn \"cn=admin,c=DK\"\nrootpw secret\ndirectory {d}/db\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let mut urls = format!("ldap://127.0.0.1:{port}/");
        if let Some(p) = tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let child = Command::new("slapd")
            .args(["-f", conf.to_str().unwrap(), "-h", &urls, "-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("slapd (scripts/test installs it)");
        let s = Slapd {
            child,
            _dir: dir,
            port,
            tls_port,
        };
        for p in std::iter::once(port).chain(tls_port) {
            assert!(
                wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                    "127.0.0.1",
                    p
                ))
                .is_ok()),
                "slapd did not start"
            );
        }
        let der = pki::openssl(
            &[
                "x509",
                "-outform",
                "DER",
                "-in",
                pki::cert(cert).to_str().unwrap(),
            ],
            b"",
        );
        let ldif = format!(
            "dn: c=DK\nobjectClass: country\nc: DK\n\n\
             dn: cn=Partner,c=DK\nobjectClass: inetOrgPerson\nobjectClass: pkiUser\ncn: Partner\nsn: Partner\nmail: {mail}\n\
             userCertificate;binary:: {}\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        pki::run(
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

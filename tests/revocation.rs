//! Revocation against someone on the path to the CRL server (threat model,
//! attacker 3): every CRL served here is genuinely signed by the CA, but
//! not the one that answers for the certificate. A partition for another
//! distribution point, the list of CA certificates only, some reasons only,
//! a delta; the right CRL of another CA cached under a shared URL; a CRL
//! cached before the operator reloaded; an older CRL replayed after a
//! reload or a restart; a revoked issuing CA; a source
//! over HTTPS. Each is tried against the real binary (`explain`, and the
//! daemon for what lives across messages) with its control.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::client::Client;
use common::http::FileServer;
use common::pki;
use common::sink::{Script, Sink};
use common::{explain, wait_until, Gateway, Options};

/// A test CA made with `openssl`: key, certificate and its `openssl ca`
/// database (for revocations and CRLs) in `dir`.
struct Ca {
    dir: PathBuf,
    name: String,
}

/// CRL extension sections for `openssl ca -gencrl -crlexts`; `{point}` is
/// replaced by the distribution point the certificates name.
const CRL_SECTIONS: &str = "
[ca]
default_ca = d
[d]
database = {db}
crlnumber = {db}.number
default_md = sha256
default_crl_days = 7
[full]
authorityKeyIdentifier = keyid
[partition]
authorityKeyIdentifier = keyid
issuingDistributionPoint = critical, @partition_point
[partition_point]
fullname = URI:{point}-part2
[ca_only]
authorityKeyIdentifier = keyid
issuingDistributionPoint = critical, @ca_only_point
[ca_only_point]
onlyCA = TRUE
[some_reasons]
authorityKeyIdentifier = keyid
issuingDistributionPoint = critical, @some_reasons_point
[some_reasons_point]
fullname = URI:{point}
onlysomereasons = keyCompromise
[delta]
authorityKeyIdentifier = keyid
deltaCRL = critical, DER:02:01:01
";

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl Ca {
    /// A self-signed root.
    fn root(dir: &Path, name: &str) -> Ca {
        let ca = Ca {
            dir: dir.to_path_buf(),
            name: name.into(),
        };
        pki::openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                path(&ca.key()),
                "-out",
                path(&ca.pem()),
                "-days",
                "30",
                "-subj",
                &format!("/O=Revocation Test/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            b"",
        );
        ca.init_db();
        ca
    }

    /// An issuing CA under `self`, naming `point` as its CRL.
    fn sub(&self, name: &str, point: &str, serial: u32) -> Ca {
        let ca = Ca {
            dir: self.dir.clone(),
            name: name.into(),
        };
        self.issue(
            &ca.key(),
            &ca.pem(),
            &format!("/O=Revocation Test/CN={name}"),
            &format!(
                "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
                 authorityKeyIdentifier=keyid\ncrlDistributionPoints=URI:{point}\n"
            ),
            serial,
        );
        ca.init_db();
        ca
    }

    /// A new certificate of `self` (its name and key) from `issuer`, as
    /// a CA re-issues an intermediate before it expires, naming `point`.
    fn reissued_by(&self, issuer: &Ca, point: &str, serial: u32) -> PathBuf {
        let pem = self.dir.join(format!("{}-reissued.pem", self.name));
        let (csr, ext) = (pem.with_extension("csr"), pem.with_extension("cnf"));
        std::fs::write(
            &ext,
            format!(
                "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
                 authorityKeyIdentifier=keyid\ncrlDistributionPoints=URI:{point}\n"
            ),
        )
        .unwrap();
        let subject = format!("/O=Revocation Test/CN={}", self.name);
        pki::openssl(
            &[
                "req",
                "-new",
                "-key",
                path(&self.key()),
                "-subj",
                &subject,
                "-out",
                path(&csr),
            ],
            b"",
        );
        let serial = serial.to_string();
        pki::openssl(
            &[
                "x509",
                "-req",
                "-in",
                path(&csr),
                "-CA",
                path(&issuer.pem()),
                "-CAkey",
                path(&issuer.key()),
                "-set_serial",
                &serial,
                "-days",
                "30",
                "-sha256",
                "-extfile",
                path(&ext),
                "-extensions",
                "v3",
                "-out",
                path(&pem),
            ],
            b"",
        );
        pem
    }

    /// A recipient certificate for `email` naming `point` as its CRL.
    fn leaf(&self, label: &str, email: &str, point: &str, serial: u32) -> PathBuf {
        self.leaf_with(
            label,
            email,
            &format!("crlDistributionPoints=URI:{point}\n"),
            serial,
        )
    }

    /// A recipient certificate for `email` with the revocation sources
    /// `sources` (lines of an OpenSSL `[v3]` section).
    fn leaf_with(&self, label: &str, email: &str, sources: &str, serial: u32) -> PathBuf {
        let pem = self.dir.join(format!("{label}.pem"));
        self.issue(
            &self.dir.join(format!("{label}.key")),
            &pem,
            &format!("/O=Partner/CN={label}"),
            &format!(
                "keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=emailProtection\nsubjectAltName=email:{email}\n\
                 authorityKeyIdentifier=keyid\n{sources}"
            ),
            serial,
        );
        pem
    }

    fn issue(&self, key: &Path, pem: &Path, subject: &str, extensions: &str, serial: u32) {
        pki::issue_by(
            &self.pem(),
            &self.key(),
            key,
            pem,
            subject,
            extensions,
            serial,
        );
    }

    fn key(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.name))
    }

    fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    fn db(&self) -> PathBuf {
        self.dir.join(format!("{}.index", self.name))
    }

    fn config(&self, point: &str) -> PathBuf {
        let cnf = self.dir.join(format!("{}.cnf", self.name));
        std::fs::write(
            &cnf,
            CRL_SECTIONS
                .replace("{db}", path(&self.db()))
                .replace("{point}", point),
        )
        .unwrap();
        cnf
    }

    fn init_db(&self) {
        std::fs::write(self.db(), "").unwrap();
        std::fs::write(
            self.dir.join(format!("{}.index.number", self.name)),
            "1000\n",
        )
        .unwrap();
    }

    /// Marks `cert` revoked in the CA's database.
    fn revoke(&self, cert: &Path) {
        pki::openssl(
            &[
                "ca",
                "-batch",
                "-config",
                path(&self.config("unused")),
                "-keyfile",
                path(&self.key()),
                "-cert",
                path(&self.pem()),
                "-revoke",
                path(cert),
            ],
            b"",
        );
    }

    /// A CRL (DER) of the CA's database with the extensions of `section`
    /// of [`CRL_SECTIONS`], for certificates naming `point`.
    fn crl(&self, section: &str, point: &str) -> Vec<u8> {
        let pem = pki::openssl(
            &[
                "ca",
                "-batch",
                "-gencrl",
                "-config",
                path(&self.config(point)),
                "-keyfile",
                path(&self.key()),
                "-cert",
                path(&self.pem()),
                "-crlexts",
                section,
            ],
            b"",
        );
        pki::openssl(&["crl", "-outform", "DER"], &pem)
    }
}

/// A configuration in `dir` that encrypts to partner.example under a strict
/// rule, with the certificates of `recips`, `root` as the only anchor and
/// revocation `mode`.
fn strict_extra(dir: &Path, recips: &Path, root: &Ca, mode: &str) -> String {
    let anchors = dir.join("anchors");
    std::fs::create_dir_all(&anchors).unwrap();
    std::fs::copy(root.pem(), anchors.join("root.pem")).unwrap();
    format!(
        "[trust]\nanchors = [\"{}\"]\nrevocation = \"{mode}\"\nrevocation_timeout = \"2s\"\n\
         [certificates]\ndirs = [\"{}\"]\nharvest = false\n\
         [[rule]]\nname = \"partners\"\nmatch = [\"*@partner.example\"]\nencrypt = \"required\"\n\
         sign = false\non_missing_certificate = \"bounce\"\n",
        anchors.display(),
        recips.display()
    )
}

fn explain_config(dir: &Path, recips: &Path, root: &Ca, mode: &str) -> PathBuf {
    let cfg = dir.join("explain.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname=\"gw.test\"\nlisten=[\"127.0.0.1:1\"]\ninternal_domains=[\"example-law.dk\"]\n\
             [spool]\ndir=\"{}\"\n[relay]\ninternal=\"127.0.0.1:2\"\nexternal=\"127.0.0.1:3\"\n{}",
            dir.join("spool").display(),
            strict_extra(dir, recips, root, mode)
        ),
    )
    .unwrap();
    cfg
}

/// The served CRL folder, the PKI folder and the recipients' folder.
struct Setup {
    served: tempfile::TempDir,
    server: FileServer,
    pki: tempfile::TempDir,
    recips: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let served = tempfile::tempdir().unwrap();
        let server = FileServer::start(served.path().to_path_buf());
        let pki = tempfile::tempdir().unwrap();
        let recips = pki.path().join("recips");
        std::fs::create_dir(&recips).unwrap();
        Setup {
            served,
            server,
            pki,
            recips,
        }
    }

    /// The URL under which `name` is served.
    fn url(&self, name: &str) -> String {
        format!("http://{}/crl/{name}", self.server.addr)
    }

    fn serve(&self, name: &str, der: &[u8]) {
        std::fs::write(self.served.path().join(name), der).unwrap();
    }

    /// Puts `cert` in the certificate folder (an issuing CA's certificate
    /// there is a chain helper, not an anchor).
    fn recipient(&self, cert: &Path) {
        std::fs::copy(cert, self.recips.join(cert.file_name().unwrap())).unwrap();
    }
}

#[test]
fn only_a_crl_complete_for_the_certificate_vouches_for_it() {
    let s = Setup::new();
    let root = Ca::root(s.pki.path(), "Root");
    let root_point = s.url("root.crl");
    let ca = root.sub("Issuing", &root_point, 2);
    let point = s.url("issuing.crl");
    let revoked = ca.leaf("revoked", "revoked@partner.example", &point, 10);
    let good = ca.leaf("good", "good@partner.example", &point, 11);
    s.recipient(&ca.pem());
    s.recipient(&revoked);
    s.recipient(&good);
    ca.revoke(&revoked);
    s.serve("root.crl", &root.crl("full", &root_point));
    let cfg = explain_config(s.pki.path(), &s.recips, &root, "hard-fail");

    // Control: the CA's full CRL says revoked, and vouches for the other.
    s.serve("issuing.crl", &ca.crl("full", &point));
    let (text, ok) = explain(&cfg, "revoked@partner.example", &[]);
    assert!(!ok && text.contains("revoked (CRL http://"), "{text}");
    let (text, ok) = explain(&cfg, "good@partner.example", &[]);
    assert!(ok && text.contains("not revoked (CRL http://"), "{text}");

    // Another CRL the same CA signed, served at the certificate's URL:
    // none of them is an answer, so hard-fail defers.
    for (section, why) in [
        ("partition", "another distribution point"),
        ("ca_only", "covers only CA certificates"),
        ("some_reasons", "only some revocation reasons"),
        ("delta", "delta CRL"),
    ] {
        s.serve("issuing.crl", &ca.crl(section, &point));
        let (text, ok) = explain(&cfg, "revoked@partner.example", &[]);
        assert!(!ok, "{section}: {text}");
        assert!(
            text.contains("revocation status unknown") && text.contains(why),
            "{section}: {text}"
        );
        assert!(!text.contains("usable:"), "{section}: {text}");
    }

    // A revoked issuing CA revokes what it issued, though the leaf's own
    // CRL says nothing against it. Control above: the root's CRL empty.
    s.serve("issuing.crl", &ca.crl("full", &point));
    root.revoke(&ca.pem());
    s.serve("root.crl", &root.crl("full", &root_point));
    let (text, ok) = explain(&cfg, "good@partner.example", &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("issuing CA \"Issuing\" revoked (CRL"),
        "{text}"
    );
}

#[test]
fn sources_that_cannot_be_asked_are_unknown_and_https_ones_are_asked() {
    let s = Setup::new();
    let root = Ca::root(s.pki.path(), "Root");
    // An HTTPS server for the CRL, its TLS root trusted through
    // SSL_CERT_FILE.
    let tls_root = Ca::root(s.pki.path(), "TLS Root");
    let tls_key = s.pki.path().join("tls.key");
    let tls_pem = s.pki.path().join("tls.pem");
    tls_root.issue(
        &tls_key,
        &tls_pem,
        "/CN=127.0.0.1",
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        40,
    );
    let port = common::free_port();
    let https_point = format!("https://127.0.0.1:{port}/issuing.crl");
    let ca = root.sub("Issuing", &s.url("root.crl"), 2);
    let over_https = ca.leaf("https", "https@partner.example", &https_point, 20);
    let over_ldap = ca.leaf(
        "ldap",
        "ldap@partner.example",
        "ldap://127.0.0.1:1/cn=crl",
        21,
    );
    s.recipient(&ca.pem());
    s.recipient(&over_https);
    s.recipient(&over_ldap);
    ca.revoke(&over_https);
    s.serve("root.crl", &root.crl("full", &s.url("root.crl")));
    let www = s.pki.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("issuing.crl"), ca.crl("full", &https_point)).unwrap();
    let cfg = explain_config(s.pki.path(), &s.recips, &root, "hard-fail");
    let tls_root_pem = tls_root.pem();
    let env = [("SSL_CERT_FILE", path(&tls_root_pem))];

    // No server yet: unknown, deferred.
    let (text, ok) = explain(&cfg, "https@partner.example", &env);
    assert!(!ok && text.contains("revocation status unknown"), "{text}");
    // The HTTPS server answers: the CRL says revoked.
    let server = HttpsServer::start(&www, port, &tls_pem, &tls_key);
    let (text, ok) = explain(&cfg, "https@partner.example", &env);
    assert!(!ok, "{text}");
    assert!(text.contains("revoked (CRL https://127.0.0.1:"), "{text}");
    drop(server);

    // A CRL only over LDAP is a source named but not asked: unknown, not
    // "no revocation source named".
    let (text, ok) = explain(&cfg, "ldap@partner.example", &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("no HTTP or HTTPS location") && !text.contains("no revocation source"),
        "{text}"
    );
}

/// `openssl s_server -WWW` serving `dir` over TLS on 127.0.0.1:`port`.
struct HttpsServer(Child);

impl HttpsServer {
    fn start(dir: &Path, port: u16, cert: &Path, key: &Path) -> HttpsServer {
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", path(cert), "-key", path(key)])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        assert!(wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        HttpsServer(child)
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `gw` logged the message `<id@test>` as bounced.
fn bounced(gw: &Gateway, id: &str) -> bool {
    gw.log()
        .lines()
        .any(|l| l.contains("event=\"bounced\"") && l.contains(&format!("<{id}@test>")))
}

/// Sends a message from alice to `rcpt` through `gw`.
fn send(gw: &Gateway, rcpt: &str, id: &str) {
    let body = String::from_utf8(common::message(id, "Til modparten."))
        .unwrap()
        .replacen(
            "From: Alice <alice@example.org>",
            "From: <alice@example-law.dk>",
            1,
        );
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let r = c
        .send("alice@example-law.dk", &[rcpt], body.as_bytes())
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
}

#[test]
fn a_kept_crl_answers_only_for_its_own_issuer_and_not_after_a_reload() {
    let s = Setup::new();
    let root = Ca::root(s.pki.path(), "Root");
    let root_point = s.url("root.crl");
    let first = root.sub("First CA", &root_point, 2);
    let second = root.sub("Second CA", &root_point, 3);
    // Both CAs' certificates name the same URL, where the path serves the
    // first CA's (genuine, empty) CRL.
    let shared = s.url("shared.crl");
    let a = first.leaf("a", "a@partner.example", &shared, 30);
    let b = second.leaf("b", "b@partner.example", &shared, 31);
    s.recipient(&first.pem());
    s.recipient(&second.pem());
    s.recipient(&a);
    s.recipient(&b);
    second.revoke(&b);
    s.serve("root.crl", &root.crl("full", &root_point));
    s.serve("shared.crl", &first.crl("full", &shared));

    let outside = Sink::start(Script::default());
    let inside = Sink::start(Script::default());
    let mut opts = Options::new(inside.addr);
    opts.external_hop = outside.addr;
    opts.extra = strict_extra(s.pki.path(), &s.recips, &root, "hard-fail");
    let gw = Gateway::start(opts);

    // a is vouched for by its CA's CRL, fetched and kept.
    send(&gw, "a@partner.example", "kept-a");
    assert!(
        wait_until(Duration::from_secs(20), || outside.count() == 1),
        "{}",
        gw.log()
    );
    // b's CA did not sign the kept CRL: not an answer for b.
    send(&gw, "b@partner.example", "kept-b");
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log()
            .contains("signature does not verify with the issuer")),
        "{}",
        gw.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        outside.count(),
        1,
        "sent to b on another CA's CRL: {}",
        gw.log()
    );

    // The CA revokes a; the operator reloads: the kept CRL is dropped.
    first.revoke(&a);
    s.serve("shared.crl", &first.crl("full", &shared));
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || gw
        .log()
        .contains("configuration reloaded")));
    send(&gw, "a@partner.example", "after-reload");
    assert!(
        wait_until(Duration::from_secs(20), || gw.log().lines().any(|l| l
            .contains("event=\"bounced\"")
            && l.contains("<after-reload@test>"))),
        "{}",
        gw.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        outside.count(),
        1,
        "sent to a after its revocation and a reload: {}",
        gw.log()
    );
}

/// A root, an issuing CA whose certificates name `issuing.crl`, and the
/// recipient `a@partner.example` it issued with `serial`; the CA and
/// the leaf in the recipients' folder, the root's (empty) CRL served.
struct OneLeaf {
    s: Setup,
    root: Ca,
    ca: Ca,
    point: String,
    a: PathBuf,
}

fn one_leaf(serial: u32) -> OneLeaf {
    let s = Setup::new();
    let root = Ca::root(s.pki.path(), "Root");
    let root_point = s.url("root.crl");
    let ca = root.sub("Issuing", &root_point, 2);
    let point = s.url("issuing.crl");
    let a = ca.leaf("a", "a@partner.example", &point, serial);
    s.recipient(&ca.pem());
    s.recipient(&a);
    s.serve("root.crl", &root.crl("full", &root_point));
    OneLeaf {
        s,
        root,
        ca,
        point,
        a,
    }
}

/// The daemon encrypting to partner.example under hard-fail for `leaf`'s
/// PKI, with its outside and inside next hops.
fn daemon_for(leaf: &OneLeaf) -> (Gateway, Sink, Sink) {
    let outside = Sink::start(Script::default());
    let inside = Sink::start(Script::default());
    let mut opts = Options::new(inside.addr);
    opts.external_hop = outside.addr;
    opts.extra = strict_extra(leaf.s.pki.path(), &leaf.s.recips, &leaf.root, "hard-fail");
    (Gateway::start(opts), outside, inside)
}

/// `leaf`'s CA revokes a; the daemon sees the CRL that says so while it
/// checks b only (b, from the same CA and point, is not revoked; a
/// certificate it has seen revoked stays so anyway: the history is what
/// holds for one not checked before). The CRL from before the
/// revocation, still inside its validity, is what the path keeps to
/// replay.
fn newer_crl_seen(leaf: &OneLeaf) -> (Vec<u8>, Gateway, Sink, Sink) {
    let (s, ca, point) = (&leaf.s, &leaf.ca, &leaf.point);
    let b = ca.leaf("b", "b@partner.example", point, 41);
    s.recipient(&b);
    let before = ca.crl("full", point);
    ca.revoke(&leaf.a);
    s.serve("issuing.crl", &ca.crl("full", point));
    let (gw, outside, inside) = daemon_for(leaf);
    send(&gw, "b@partner.example", "newer-seen");
    assert!(
        wait_until(Duration::from_secs(20), || outside.count() == 1),
        "{}",
        gw.log()
    );
    (before, gw, outside, inside)
}

#[test]
fn an_older_crl_served_after_a_reload_or_a_restart_is_a_replay() {
    let leaf = one_leaf(40);
    let s = &leaf.s;
    let (before, mut gw, outside, _inside) = newer_crl_seen(&leaf);

    // The operator reloads (kept CRLs are dropped); the path serves the
    // older CRL.
    s.serve("issuing.crl", &before);
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || gw
        .log()
        .contains("configuration reloaded")));
    send(&gw, "a@partner.example", "after-reload");
    let replays = |gw: &Gateway| gw.log().matches("a replay").count();
    wait_until(Duration::from_secs(20), || {
        replays(&gw) >= 1 || outside.count() > 1
    });
    assert_eq!(
        outside.count(),
        1,
        "encrypted to a revoked certificate on a replayed CRL: {}",
        gw.log()
    );
    assert!(replays(&gw) >= 1, "{}", gw.log());
    // And after a restart, the message still queued is asked about again.
    gw.kill9();
    let seen = replays(&gw);
    gw.spawn();
    assert!(
        wait_until(Duration::from_secs(20), || replays(&gw) > seen),
        "{}",
        gw.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        outside.count(),
        1,
        "encrypted to a revoked certificate on a replayed CRL: {}",
        gw.log()
    );
    assert!(!bounced(&gw, "after-reload"), "{}", gw.log());

    // An operator's command reads the daemon's history too.
    let (text, ok) = explain(&gw.config, "a@partner.example", &[]);
    assert!(!ok && text.contains("a replay"), "{text}");
    // Control: without that history (another spool) the older CRL vouches
    // for a, which is what the replay was after.
    let cfg = explain_config(s.pki.path(), &s.recips, &leaf.root, "hard-fail");
    let (text, ok) = explain(&cfg, "a@partner.example", &[]);
    assert!(ok && text.contains("not revoked (CRL http://"), "{text}");
}

#[test]
fn a_reissued_certificate_of_the_issuing_ca_keeps_its_crl_history() {
    // Review 15 (open since): the history was kept under the issuer's
    // certificate fingerprint. A CA re-issues its intermediate (same name,
    // same key); the operator puts the new certificate in; the path serves
    // the CRL from before a's revocation, which the history had seen
    // superseded.
    let leaf = one_leaf(40);
    let (s, ca) = (&leaf.s, &leaf.ca);
    let (before, gw, outside, _inside) = newer_crl_seen(&leaf);
    let reissued = ca.reissued_by(&leaf.root, &s.url("root.crl"), 3);
    std::fs::copy(&reissued, s.recips.join("Issuing.pem")).unwrap();
    s.serve("issuing.crl", &before);
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || gw
        .log()
        .contains("configuration reloaded")));
    send(&gw, "a@partner.example", "after-reissue");
    wait_until(Duration::from_secs(20), || {
        gw.log().contains("a replay") || outside.count() > 1
    });
    assert_eq!(
        outside.count(),
        1,
        "encrypted to a revoked certificate on a replayed CRL: {}",
        gw.log()
    );
    assert!(gw.log().contains("a replay"), "{}", gw.log());
}

#[test]
fn a_list_of_ca_certificates_served_in_between_does_not_poison_the_history() {
    // Someone on the path serves, at the end entities' point, the CA's
    // genuine list of CA certificates (numbered after the full CRL): no
    // answer for a leaf; and it must not stand as the newest CRL from that
    // point, or the full CRL would be refused as older from then on.
    let leaf = one_leaf(50);
    let (s, ca, point) = (&leaf.s, &leaf.ca, &leaf.point);
    let full = ca.crl("full", point);
    let ca_only = ca.crl("ca_only", point);
    s.serve("issuing.crl", &ca_only);
    let (gw, outside, _inside) = daemon_for(&leaf);
    send(&gw, "a@partner.example", "ca-list-first");
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log()
            .contains("covers only CA certificates")),
        "{}",
        gw.log()
    );
    assert_eq!(outside.count(), 0);
    // The full CRL comes back: a is not revoked, the held message leaves.
    s.serve("issuing.crl", &full);
    assert!(
        wait_until(Duration::from_secs(20), || outside.count() == 1),
        "{}",
        gw.log()
    );
    assert!(!gw.log().contains("a replay"), "{}", gw.log());
}

/// An OCSP responder for `ca` on 127.0.0.1:`port` (`openssl ocsp` on each
/// request, with `index`), through which the path can replay: while
/// `replay` holds an answer, that answer goes out instead; `last` keeps
/// the last fresh one.
struct Ocsp {
    _server: FileServer,
    replay: Arc<Mutex<Option<Vec<u8>>>>,
    last: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Ocsp {
    fn start(ca: &Ca, index: &Path, port: u16) -> Ocsp {
        let replay: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let last: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let (r, l) = (Arc::clone(&replay), Arc::clone(&last));
        let (pem, key, index, work) = (ca.pem(), ca.key(), index.to_path_buf(), ca.dir.clone());
        let handler: common::http::OcspHandler = Box::new(move |req: &[u8]| {
            if let Some(old) = r.lock().unwrap().clone() {
                return Some(old);
            }
            let (reqin, respout) = (work.join("ocsp.req"), work.join("ocsp.resp"));
            std::fs::write(&reqin, req).ok()?;
            let ok = Command::new("openssl")
                .args(["ocsp", "-index", index.to_str()?])
                .args(["-rsigner", pem.to_str()?, "-rkey", key.to_str()?])
                .args(["-CA", pem.to_str()?, "-ndays", "1"])
                .args(["-reqin", reqin.to_str()?, "-respout", respout.to_str()?])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?
                .success();
            let answer = ok.then(|| std::fs::read(&respout).ok()).flatten()?;
            *l.lock().unwrap() = Some(answer.clone());
            Some(answer)
        });
        let empty = ca.dir.join("nothing-served");
        let server = FileServer::start_on(port, empty, Some(handler));
        Ocsp {
            _server: server,
            replay,
            last,
        }
    }
}

/// `openssl ocsp` index lines: `cert` with serial `serial`, valid or
/// revoked.
fn ocsp_index(serial: u32, revoked: bool) -> String {
    let (state, at) = if revoked {
        ("R", "240101000000Z")
    } else {
        ("V", "")
    };
    format!("{state}\t301231235959Z\t{at}\t{serial:02X}\tunknown\t/CN=leaf\n")
}

#[test]
fn an_old_ocsp_answer_replayed_does_not_stand_for_a_fresh_one() {
    let s = Setup::new();
    let root = Ca::root(s.pki.path(), "Root");
    let port = common::free_port();
    let leaf = root.leaf_with(
        "ocsp",
        "ocsp@partner.example",
        &format!("authorityInfoAccess=OCSP;URI:http://127.0.0.1:{port}/ocsp\n"),
        50,
    );
    s.recipient(&leaf);
    let index = s.pki.path().join("ocsp.index");
    std::fs::write(&index, ocsp_index(50, false)).unwrap();
    let ocsp = Ocsp::start(&root, &index, port);
    let cfg = explain_config(s.pki.path(), &s.recips, &root, "hard-fail");

    // A fresh answer: good. The path keeps it.
    let (text, ok) = explain(&cfg, "ocsp@partner.example", &[]);
    assert!(ok && text.contains("not revoked (OCSP http://"), "{text}");
    let captured = ocsp.last.lock().unwrap().clone().expect("an answer");

    // The CA revokes the certificate; the path replays the old "good"
    // (signed by the CA, still inside its validity): not an answer.
    std::fs::write(&index, ocsp_index(50, true)).unwrap();
    *ocsp.replay.lock().unwrap() = Some(captured);
    let (text, ok) = explain(&cfg, "ocsp@partner.example", &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("revocation status unknown") && text.contains("nonce"),
        "{text}"
    );

    // Control: the responder's own fresh answer says revoked.
    *ocsp.replay.lock().unwrap() = None;
    let (text, ok) = explain(&cfg, "ocsp@partner.example", &[]);
    assert!(!ok && text.contains("revoked (OCSP http://"), "{text}");
}

/// A "good" answer for `cert` asked for without a nonce, as anyone on the
/// path can ask the responder at `port` before a revocation (its answer,
/// signed by the CA, stays valid until its nextUpdate).
fn ocsp_good_without_nonce(ca: &Ca, cert: &Path, port: u16, work: &Path) -> Vec<u8> {
    let out = work.join("captured.ocsp");
    let ok = Command::new("openssl")
        .args([
            "ocsp",
            "-no_nonce",
            "-issuer",
            path(&ca.pem()),
            "-cert",
            path(cert),
        ])
        .args(["-url", &format!("http://127.0.0.1:{port}/ocsp")])
        .args(["-noverify", "-timeout", "10", "-respout", path(&out)])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "openssl ocsp could not ask the responder: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::read(out).unwrap()
}

#[test]
fn a_certificate_seen_revoked_stays_revoked_when_its_crl_is_kept_away_and_an_old_ocsp_good_replayed(
) {
    // Review 15: someone on the path to the CA asks its responder about the
    // partner's certificate without a nonce, before the revocation, and
    // keeps the signed "good". After the revocation (which the gateway has
    // seen in the CRL and bounced on), they keep the CRL away (404) and
    // replay that answer: after a reload the certificate read as good, and
    // mail under hard-fail and encrypt = "required" went out encrypted to
    // the revoked key.
    let s = Setup::new();
    let root = Ca::root(s.pki.path(), "Root");
    let port = common::free_port();
    let point = s.url("root.crl");
    let leaf = root.leaf_with(
        "both",
        "a@partner.example",
        &format!(
            "crlDistributionPoints=URI:{point}
             authorityInfoAccess=OCSP;URI:http://127.0.0.1:{port}/ocsp
"
        ),
        60,
    );
    s.recipient(&leaf);
    let index = s.pki.path().join("ocsp.index");
    std::fs::write(&index, ocsp_index(60, false)).unwrap();
    s.serve("root.crl", &root.crl("full", &point));
    let ocsp = Ocsp::start(&root, &index, port);
    let captured = ocsp_good_without_nonce(&root, &leaf, port, s.pki.path());

    // The CA revokes: the CRL and the responder say so.
    root.revoke(&leaf);
    s.serve("root.crl", &root.crl("full", &point));
    std::fs::write(&index, ocsp_index(60, true)).unwrap();
    let outside = Sink::start(Script::default());
    let inside = Sink::start(Script::default());
    let mut opts = Options::new(inside.addr);
    opts.external_hop = outside.addr;
    opts.extra = strict_extra(s.pki.path(), &s.recips, &root, "hard-fail");
    let mut gw = Gateway::start(opts);
    send(&gw, "a@partner.example", "seen-revoked");
    assert!(
        wait_until(Duration::from_secs(20), || bounced(&gw, "seen-revoked")),
        "{}",
        gw.log()
    );

    // The path keeps the CRL away and replays the old "good"; the operator
    // reloads (kept CRLs are dropped).
    std::fs::remove_file(s.served.path().join("root.crl")).unwrap();
    *ocsp.replay.lock().unwrap() = Some(captured);
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || gw
        .log()
        .contains("configuration reloaded")));
    send(&gw, "a@partner.example", "after-reload");
    assert!(
        wait_until(Duration::from_secs(20), || bounced(&gw, "after-reload")
            || outside.count() > 0),
        "{}",
        gw.log()
    );
    assert_eq!(
        outside.count(),
        0,
        "encrypted to a revoked certificate on a replayed OCSP answer: {}",
        gw.log()
    );
    // And after a restart.
    gw.kill9();
    gw.spawn();
    send(&gw, "a@partner.example", "after-restart");
    assert!(
        wait_until(Duration::from_secs(20), || bounced(&gw, "after-restart")
            || outside.count() > 0),
        "{}",
        gw.log()
    );
    assert_eq!(outside.count(), 0, "{}", gw.log());
    // The operator's command reads what the daemon saw.
    let (text, ok) = explain(&gw.config, "a@partner.example", &[]);
    assert!(!ok && text.contains("revoked"), "{text}");
    // Control: without that memory (another spool) the replayed answer
    // vouches for the certificate, which is what the path was after.
    let cfg = explain_config(s.pki.path(), &s.recips, &root, "hard-fail");
    let (text, ok) = explain(&cfg, "a@partner.example", &[]);
    assert!(ok && text.contains("not revoked (OCSP http://"), "{text}");
}

/// A self-issued "twin" of `ca` (its subject, its key, its key
/// identifier), long expired, as a sender can carry in a signature:
/// OpenSSL passes it by when it builds the chain, so only a check that
/// follows what the sender carried would stop at it.
fn twin_of(ca: &Ca) -> Vec<u8> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{BasicConstraints, SubjectKeyIdentifier};
    use openssl::x509::X509;
    let real = X509::from_pem(&std::fs::read(ca.pem()).unwrap()).unwrap();
    let key = PKey::private_key_from_pem(&std::fs::read(ca.key()).unwrap()).unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(77).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(real.subject_name()).unwrap();
    b.set_issuer_name(real.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(1_577_836_800).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(1_609_459_200).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(ski).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    b.build().to_pem().unwrap()
}

/// Inbound: a signer's revocation is checked along the chain OpenSSL
/// verified, not along certificates the sender carried. The issuing CA is
/// revoked in the root's CRL; the sender carries an expired, self-issued
/// twin of it first. Control: the same signature without the twin reads
/// revoked.
#[test]
fn a_carried_twin_of_a_revoked_ca_does_not_hide_it() {
    let s = Setup::new();
    let root = Ca::root(s.pki.path(), "Root");
    let root_point = s.url("root.crl");
    let ca = root.sub("Issuing", &root_point, 2);
    let point = s.url("issuing.crl");
    let signer = ca.leaf("signer", "post@partner.example", &point, 60);
    root.revoke(&ca.pem());
    s.serve("root.crl", &root.crl("full", &root_point));
    s.serve("issuing.crl", &ca.crl("full", &point));

    let sink = Sink::start(Script::default());
    let mut opts = Options::new(sink.addr);
    opts.extra = format!(
        "{}[[mailbox]]\naddress = \"*@example-law.dk\"\ndeliver = \"plain\"\n",
        strict_extra(s.pki.path(), &s.recips, &root, "hard-fail")
    );
    let gw = Gateway::start(opts);
    let carried_real = s.pki.path().join("carried-real.pem");
    std::fs::copy(ca.pem(), &carried_real).unwrap();
    let carried_twin = s.pki.path().join("carried-twin.pem");
    let mut both = twin_of(&ca);
    both.extend_from_slice(&std::fs::read(ca.pem()).unwrap());
    std::fs::write(&carried_twin, both).unwrap();
    let key = signer.with_extension("key");
    for (id, carried) in [("real", &carried_real), ("twin", &carried_twin)] {
        let content = pki::inner(&format!("signed, {id}"));
        let mut m = format!(
            "From: <post@partner.example>\r\nTo: <bob@example-law.dk>\r\nSubject: {id}\r\nMessage-ID: <{id}@test>\r\n"
        )
        .into_bytes();
        m.extend_from_slice(&pki::crlf(&pki::cms_sign_with(
            &content, &signer, &key, carried,
        )));
        let mut c = Client::connect(gw.addr).unwrap();
        c.ehlo().unwrap();
        let r = c
            .send("post@partner.example", &["bob@example-law.dk"], &m)
            .unwrap();
        assert_eq!(r.code, 250, "{r:?}");
    }
    assert!(
        wait_until(Duration::from_secs(30), || sink.count() == 2),
        "{}",
        gw.log()
    );
    for got in sink.received() {
        let text = got.text().replace("\r\n ", " ");
        let trace = text
            .lines()
            .find(|l| l.starts_with("X-SMIME-Gateway:"))
            .unwrap_or("")
            .to_string();
        assert!(
            trace.contains("signature[1]=revoked") && trace.contains("issuing CA"),
            "{trace}"
        );
    }
}

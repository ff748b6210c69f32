//! Test PKI and S/MIME peers: the gateway's own demo PKI (generated once
//! per test binary by the real `pki demo` command), `openssl cms` and
//! `gpgsm` run as separate programs, and helpers that wrap CMS in MIME.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use base64::Engine;

static DEMO: OnceLock<PathBuf> = OnceLock::new();

/// The demo PKI directory (generated on first use, kept for the run).
pub fn demo() -> &'static Path {
    DEMO.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("smimegw-demo-pki")
            .tempdir()
            .expect("tempdir")
            .keep();
        let out = Command::new(super::BIN)
            .args(["pki", "demo", "--out"])
            .arg(&dir)
            .output()
            .expect("run pki demo");
        assert!(
            out.status.success(),
            "pki demo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub fn key(name: &str) -> PathBuf {
    demo().join(format!("keys/{name}.key.pem"))
}

pub fn cert(name: &str) -> PathBuf {
    demo().join(format!("certs/{name}.pem"))
}

/// An `[[identity]]` table for demo key `name`.
pub fn identity(name: &str, mailboxes: &[&str]) -> String {
    let d = demo();
    let m: Vec<String> = mailboxes.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[[identity]]\npkcs12 = \"{}\"\npassword_file = \"{}\"\nmailboxes = [{}]\n",
        d.join(format!("keys/{name}.p12")).display(),
        d.join(format!("keys/{name}.pass")).display(),
        m.join(", ")
    )
}

/// Runs `openssl` with `args`, feeding `input`; returns stdout or panics
/// with stderr.
pub fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    run("openssl", args, input)
}

/// Runs `program` with `args`, feeding `input`; its output, whatever the
/// exit status.
pub fn run_output(program: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} not available: {e}"));
    // Written from a thread: a program that answers while it reads (large
    // input, streaming output) would otherwise block on a full pipe.
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

/// Like [`run_output`], panicking with stderr unless it succeeds; stdout.
pub fn run(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let out = run_output(program, args, input);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The inner MIME entity tests encrypt: a UTF-8 text part.
pub fn inner(text: &str) -> Vec<u8> {
    format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n"
    )
    .into_bytes()
}

/// A message whose whole body is `cms` (DER/BER), as mail clients send it.
pub fn enveloped_message(id: &str, to: &str, cms: &[u8], ctype: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cms);
    let mut body = String::new();
    for chunk in b64.as_bytes().chunks(64) {
        body.push_str(std::str::from_utf8(chunk).expect("ascii"));
        body.push_str("\r\n");
    }
    format!(
        "From: Sender <sender@example.org>\r\nTo: <{to}>\r\nSubject: encrypted {id}\r\n\
         Message-ID: <{id}@test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: {ctype}; name=\"smime.p7m\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\r\n{body}"
    )
    .into_bytes()
}

pub const P7M: &str = "application/pkcs7-mime; smime-type=enveloped-data";

/// `openssl cms -encrypt` of `data` to the demo certificate `to`, DER out.
pub fn cms_encrypt(data: &[u8], to: &str, extra: &[&str]) -> Vec<u8> {
    let cert = cert(to);
    let mut args = vec!["cms", "-encrypt", "-binary", "-outform", "DER"];
    args.extend_from_slice(extra);
    args.push(cert.to_str().expect("utf-8 path"));
    openssl(&args, data)
}

/// `data` encrypted with AES-256-GCM (AuthEnvelopedData) and RSA-OAEP to
/// the demo certificate `to`, DER out.
pub fn cms_encrypt_gcm(data: &[u8], to: &str) -> Vec<u8> {
    let recip = cert(to);
    cms_encrypt(
        data,
        to,
        &[
            "-aes-256-gcm",
            "-recip",
            recip.to_str().expect("utf-8 path"),
            "-keyopt",
            "rsa_padding_mode:oaep",
        ],
    )
}

/// `openssl cms -decrypt` with demo key `name`; the plaintext.
pub fn cms_decrypt_smime(message: &[u8], name: &str) -> Vec<u8> {
    cms_try_decrypt(message, name)
        .unwrap_or_else(|| panic!("openssl cms -decrypt with {name} failed"))
}

/// A detached `multipart/signed` entity of `content` signed by demo key
/// `name` (with its issuing CA), as `openssl cms -sign` makes it.
pub fn cms_sign(content: &[u8], name: &str) -> Vec<u8> {
    let ca = demo().join(format!("crl/{}.pem", issuing_ca(name)));
    cms_sign_with(content, &cert(name), &key(name), &ca)
}

/// A detached `multipart/signed` entity of `content` signed by demo key
/// `name`, carrying no certificate (the verifier must find the signer's),
/// CRLF line ends.
pub fn cms_sign_bare(content: &[u8], name: &str) -> Vec<u8> {
    let (cert, key) = (cert(name), key(name));
    crlf(&openssl(
        &[
            "cms",
            "-sign",
            "-binary",
            "-md",
            "sha256",
            "-nocerts",
            "-signer",
            cert.to_str().unwrap(),
            "-inkey",
            key.to_str().unwrap(),
        ],
        content,
    ))
}

/// A detached `multipart/signed` entity of `content` signed by the
/// certificate and key at `cert`/`key`, with the CA certificate `ca`.
pub fn cms_sign_with(content: &[u8], cert: &Path, key: &Path, ca: &Path) -> Vec<u8> {
    openssl(
        &[
            "cms",
            "-sign",
            "-binary",
            "-signer",
            cert.to_str().unwrap(),
            "-inkey",
            key.to_str().unwrap(),
            "-certfile",
            ca.to_str().unwrap(),
            "-md",
            "sha256",
        ],
        content,
    )
}

/// The demo issuing CA of demo certificate `name`.
pub fn issuing_ca(name: &str) -> &'static str {
    if name == "stranger" {
        "stranger-ca"
    } else if name.contains("oces2") {
        "oces2-ca"
    } else {
        "oces3-ca"
    }
}

/// A gpgsm home folder; its gpg-agent is stopped with it.
pub struct GpgHome(tempfile::TempDir);

impl GpgHome {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args([
                "--homedir",
                self.0.path().to_str().unwrap_or(""),
                "--kill",
                "gpg-agent",
            ])
            .output();
    }
}

/// A gpgsm home that trusts the demo roots and knows the demo certificates.
pub fn gpgsm_home() -> GpgHome {
    gpgsm_home_in(demo())
}

/// Like [`gpgsm_home`], for the demo PKI in `d`.
pub fn gpgsm_home_in(d: &Path) -> GpgHome {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        home.path().join("gpg-agent.conf"),
        "allow-loopback-pinentry\n",
    )
    .expect("agent conf");
    let mut files: Vec<PathBuf> = Vec::new();
    for f in [
        "trust/oces2-root.pem",
        "trust/oces2-ca.pem",
        "trust/oces3-root.pem",
        "trust/oces3-ca.pem",
    ] {
        files.push(d.join(f));
    }
    for name in ["org-oces2", "org-oces3", "alice-oces2-expired"] {
        files.push(d.join(format!("certs/{name}.pem")));
    }
    let mut args = vec![
        "--batch",
        "--homedir",
        home.path().to_str().unwrap(),
        "--import",
    ];
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    run("gpgsm", &args, b"");
    let mut trust = String::new();
    for root in ["trust/oces2-root.pem", "trust/oces3-root.pem"] {
        let fp = openssl(
            &[
                "x509",
                "-noout",
                "-fingerprint",
                "-sha1",
                "-in",
                d.join(root).to_str().unwrap(),
            ],
            b"",
        );
        let fp = String::from_utf8_lossy(&fp);
        let hex: String = fp.split('=').nth(1).unwrap_or("").trim().replace(':', "");
        trust.push_str(&format!("{hex} S relax\n"));
    }
    std::fs::write(home.path().join("trustlist.txt"), trust).expect("trustlist");
    GpgHome(home)
}

/// `gpgsm --encrypt` of `data` to the demo certificate `to`, BER out.
pub fn gpgsm_encrypt(home: &Path, data: &[u8], to: &str) -> Vec<u8> {
    let fp = openssl(
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha1",
            "-in",
            cert(to).to_str().unwrap(),
        ],
        b"",
    );
    let fp = String::from_utf8_lossy(&fp);
    let hex: String = fp.split('=').nth(1).unwrap_or("").trim().replace(':', "");
    run(
        "gpgsm",
        &[
            "--batch",
            "--homedir",
            home.to_str().unwrap(),
            "--disable-crl-checks",
            "--disable-policy-checks",
            "-r",
            &hex,
            "--encrypt",
        ],
        data,
    )
}

/// `bytes` with every line ending in CRLF (openssl writes LF).
pub fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Imports the private key of demo identity `name` into a gpgsm home
/// (through a 3DES PKCS#12, the only kind gpgsm 2.2 reads).
pub fn gpgsm_import_key(home: &Path, name: &str) {
    gpgsm_import_key_in(home, demo(), name)
}

/// Like [`gpgsm_import_key`], for the demo PKI in `d`.
pub fn gpgsm_import_key_in(home: &Path, d: &Path, name: &str) {
    // gpgsm's PKCS#12 import now and then fails to decrypt the key bag
    // of one particular export (a fresh salt and IV make the next export
    // import), and through gpg-agent on a loaded machine; a new export, an
    // agent restart and another try settle both.
    for attempt in 0..4 {
        let p12 = home.join(format!("{name}.p12"));
        openssl(
            &[
                "pkcs12",
                "-export",
                "-inkey",
                d.join(format!("keys/{name}.key.pem")).to_str().unwrap(),
                "-in",
                d.join(format!("keys/{name}.crt.pem")).to_str().unwrap(),
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
                "-passout",
                "pass:demo-only",
                "-out",
                p12.to_str().unwrap(),
            ],
            b"",
        );
        let out = run_output(
            "gpgsm",
            &[
                "--batch",
                "--homedir",
                home.to_str().unwrap(),
                "--pinentry-mode",
                "loopback",
                "--passphrase-fd",
                "0",
                "--import",
                p12.to_str().unwrap(),
            ],
            b"demo-only\n",
        );
        if out.status.success() {
            return;
        }
        assert!(
            attempt < 3,
            "gpgsm --import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = Command::new("gpgconf")
            .args(["--homedir", home.to_str().unwrap(), "--kill", "gpg-agent"])
            .output();
    }
}

/// gpgsm decrypts `cms` (DER) with the keys in `home`. gpgsm exits 2
/// when it also met recipients whose keys it lacks (the sender's own copy),
/// even though it decrypted; the plaintext decides.
pub fn gpgsm_decrypt(home: &Path, cms: &[u8]) -> Vec<u8> {
    let file = home.join("in.p7m");
    std::fs::write(&file, cms).expect("write");
    let out = run_output(
        "gpgsm",
        &[
            "--batch",
            "--homedir",
            home.to_str().unwrap(),
            "--pinentry-mode",
            "loopback",
            "--passphrase-fd",
            "0",
            "--disable-crl-checks",
            "--decrypt",
            file.to_str().unwrap(),
        ],
        b"demo-only\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let only_missing_keys = err
        .lines()
        .filter(|l| l.contains("error") || l.contains("failed"))
        .all(|l| l.contains("No secret key"));
    assert!(
        !out.stdout.is_empty() && (out.status.success() || only_missing_keys),
        "gpgsm --decrypt failed: {err}"
    );
    out.stdout
}

/// gpgsm verifies a detached signature over `content`.
pub fn gpgsm_verify(home: &Path, signature: &[u8], content: &[u8]) -> String {
    let sig = home.join("sig.p7s");
    let data = home.join("data");
    std::fs::write(&sig, signature).expect("write");
    std::fs::write(&data, content).expect("write");
    let out = Command::new("gpgsm")
        .args([
            "--batch",
            "--homedir",
            home.to_str().unwrap(),
            "--disable-crl-checks",
            "--disable-policy-checks",
            "--status-fd",
            "1",
            "--verify",
        ])
        .arg(&sig)
        .arg(&data)
        .output()
        .expect("gpgsm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "gpgsm --verify failed: {text}");
    text
}

/// The base64 body of a single-part message, decoded.
pub fn body_der(message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let (_, b64) = text.split_once("\r\n\r\n").expect("header/body");
    base64::engine::general_purpose::STANDARD
        .decode(b64.replace("\r\n", "").trim())
        .expect("base64 body")
}

/// True when `openssl cms -decrypt` with demo key `name` cannot open
/// `message`.
pub fn cms_decrypt_fails(message: &[u8], name: &str) -> bool {
    cms_try_decrypt(message, name).is_none()
}

/// `openssl cms -decrypt` with demo key `name`: the plaintext, or `None`
/// when that key does not open it.
pub fn cms_try_decrypt(message: &[u8], name: &str) -> Option<Vec<u8>> {
    cms_try_decrypt_with(message, &key(name), &cert(name))
}

/// `openssl cms -decrypt` with the key and certificate at `key`/`cert`.
pub fn cms_try_decrypt_with(message: &[u8], key: &Path, cert: &Path) -> Option<Vec<u8>> {
    let args = [
        "cms",
        "-decrypt",
        "-inkey",
        key.to_str().unwrap(),
        "-recip",
        cert.to_str().unwrap(),
    ];
    let out = run_output("openssl", &args, message);
    out.status.success().then_some(out.stdout)
}

/// An opaque signature (DER) of `content` by the certificate and key at
/// `cert`/`key`, carrying the signer's certificate.
pub fn cms_sign_opaque(content: &[u8], cert: &Path, key: &Path) -> Vec<u8> {
    openssl(
        &[
            "cms",
            "-sign",
            "-nodetach",
            "-binary",
            "-noattr",
            "-outform",
            "DER",
            "-signer",
            cert.to_str().unwrap(),
            "-inkey",
            key.to_str().unwrap(),
        ],
        content,
    )
}

/// A demo PKI of its own whose certificates name this test's CRL and OCSP
/// ports (generated by the real `pki demo` command).
pub fn demo_with_urls(crl_port: u16, ocsp_port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(super::BIN)
        .args(["pki", "demo", "--out"])
        .arg(dir.path())
        .arg("--crl-url")
        .arg(format!("http://127.0.0.1:{crl_port}/crl"))
        .arg("--ocsp-url")
        .arg(format!("http://127.0.0.1:{ocsp_port}/ocsp"))
        .output()
        .expect("run pki demo");
    assert!(
        out.status.success(),
        "pki demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The SHA-1 fingerprint (hex, no colons) of the certificate in `pem`,
/// as gpgsm names certificates.
pub fn sha1_fingerprint(pem: &Path) -> String {
    let fp = openssl(
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha1",
            "-in",
            pem.to_str().expect("utf-8 path"),
        ],
        b"",
    );
    String::from_utf8_lossy(&fp)
        .split('=')
        .nth(1)
        .unwrap_or("")
        .trim()
        .replace(':', "")
}

/// A certificate issued by the demo OCES3 CA (it chains to the demo
/// anchors) for `subject`, with the X.509v3 extensions `extensions` (the
/// body of an OpenSSL `[v3]` section) and serial `serial`: key and
/// certificate files in `dir`, named after `name`.
pub fn issue_by_oces3_ca(
    dir: &Path,
    name: &str,
    subject: &str,
    extensions: &str,
    serial: u32,
) -> (PathBuf, PathBuf) {
    let d = demo();
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    issue_by(
        &d.join("crl/oces3-ca.pem"),
        &d.join("crl/oces3-ca.key.pem"),
        &key,
        &cert,
        subject,
        extensions,
        serial,
    );
    (key, cert)
}

/// A new RSA-2048 key at `key` and its certificate at `cert`, issued by
/// the CA `ca_pem`/`ca_key` for `subject` with the X.509v3 extensions
/// `extensions` (the body of an OpenSSL `[v3]` section) and serial
/// `serial`, valid for 30 days.
pub fn issue_by(
    ca_pem: &Path,
    ca_key: &Path,
    key: &Path,
    cert: &Path,
    subject: &str,
    extensions: &str,
    serial: u32,
) {
    let csr = cert.with_extension("csr");
    let ext = cert.with_extension("ext.cnf");
    std::fs::write(&ext, format!("[v3]\n{extensions}")).expect("write extensions");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &path(key),
            "-subj",
            subject,
            "-out",
            &path(&csr),
        ],
        b"",
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-CA",
            &path(ca_pem),
            "-CAkey",
            &path(ca_key),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "30",
            "-sha256",
            "-extfile",
            &path(&ext),
            "-extensions",
            "v3",
            "-out",
            &path(cert),
        ],
        b"",
    );
}

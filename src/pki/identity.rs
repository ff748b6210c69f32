//! The organisation's identities: private keys with their certificates,
//! loaded from PKCS#12 (as the Danish CAs issue them) or PEM files. Every
//! identity decrypts, expired and revoked ones too; only valid ones sign.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use tracing::warn;

use super::oces::{self, CertInfo};
use super::provider;
use crate::config::IdentitySettings;
use crate::mail::address;

/// One private key and what it belongs to.
pub struct Identity {
    pub cert: X509,
    pub key: PKey<Private>,
    /// CA certificates that came with it (PKCS#12 bag or PEM file).
    pub chain: Vec<X509>,
    pub info: CertInfo,
    /// What the key is: lower-case addresses it is the personal key of;
    /// empty = an organisation key.
    pub mailboxes: Vec<String>,
    /// Whose mail it opens (lower case: addresses, `*@domain`, `*`);
    /// `None`: the default for what it is (see [`Identity::may_open`]).
    pub decrypt_for: Option<Vec<String>>,
    /// The file it was loaded from.
    pub source: PathBuf,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.info.subject)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// True when this identity is meant for `addr` specifically.
    pub fn serves(&self, addr: &str) -> bool {
        self.mailboxes.iter().any(|m| address::same(m, addr))
    }

    pub fn is_organisation_wide(&self) -> bool {
        self.mailboxes.is_empty()
    }

    /// True when this key may open mail for the internal address `addr`:
    /// its `decrypt_for`, or by default every internal address for an
    /// organisation key and its own addresses for a personal key.
    pub fn may_open(&self, addr: &str) -> bool {
        match &self.decrypt_for {
            None => self.is_organisation_wide() || self.serves(addr),
            Some(patterns) => {
                let addr = address::key(addr);
                let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                patterns.iter().any(|p| {
                    p == "*" || p.strip_prefix("*@").is_some_and(|d| d == domain) || *p == addr
                })
            }
        }
    }

    /// The SHA-256 fingerprint of its certificate: how it is named across
    /// reloads (positions in the keyring change).
    pub fn fingerprint(&self) -> String {
        super::facts::fingerprint(&self.cert)
    }
}

/// A key that could not be loaded, with the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("identity[{index}] {file}: {message}")]
pub struct IdentityError {
    pub index: usize,
    pub file: String,
    pub message: String,
}

/// Loads identity `index` as configured. `strict` turns loose key file
/// permissions from a warning into an error.
pub fn load(index: usize, cfg: &IdentitySettings, strict: bool) -> Result<Identity, IdentityError> {
    let main = cfg
        .pkcs12
        .as_ref()
        .or(cfg.key.as_ref())
        .cloned()
        .unwrap_or_default();
    let fail = |file: &Path, message: String| IdentityError {
        index,
        file: file.display().to_string(),
        message,
    };
    let secret_files: Vec<&PathBuf> = [&cfg.pkcs12, &cfg.key, &cfg.password_file]
        .into_iter()
        .flatten()
        .collect();
    for file in secret_files {
        let meta = fs::metadata(file).map_err(|e| fail(file, format!("cannot read: {e}")))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            let message = format!(
                "readable by group or others (mode {:o}); run chmod 600 {}",
                mode & 0o777,
                file.display()
            );
            if strict {
                return Err(fail(file, message));
            }
            warn!(identity = index, file = %file.display(), "{message}");
        }
    }
    let password = password(cfg).map_err(|m| fail(&main, m))?;

    let (cert, key, chain) = if let Some(p12) = &cfg.pkcs12 {
        provider::ensure_legacy().map_err(|e| fail(p12, e.to_string()))?;
        let der = fs::read(p12).map_err(|e| fail(p12, format!("cannot read: {e}")))?;
        let parsed = Pkcs12::from_der(&der)
            .map_err(|e| fail(p12, format!("not a PKCS#12 file: {e}")))?
            .parse2(password.as_deref().unwrap_or(""))
            .map_err(|_| fail(p12, "wrong password, or the file is damaged".into()))?;
        let cert = parsed
            .cert
            .ok_or_else(|| fail(p12, "holds no certificate".into()))?;
        let key = parsed
            .pkey
            .ok_or_else(|| fail(p12, "holds no private key".into()))?;
        let chain = parsed
            .ca
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        (cert, key, chain)
    } else {
        let (cert_path, key_path) = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => (c, k),
            _ => return Err(fail(&main, "needs pkcs12, or cert and key".into())),
        };
        let pem = fs::read(cert_path).map_err(|e| fail(cert_path, format!("cannot read: {e}")))?;
        let mut certs = X509::stack_from_pem(&pem)
            .map_err(|e| fail(cert_path, format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(fail(cert_path, "holds no certificate".into()));
        }
        let cert = certs.remove(0);
        let pem = fs::read(key_path).map_err(|e| fail(key_path, format!("cannot read: {e}")))?;
        let key = match &password {
            Some(pw) => PKey::private_key_from_pem_passphrase(&pem, pw.as_bytes()),
            None => PKey::private_key_from_pem(&pem),
        }
        .map_err(|_| fail(key_path, "not a PEM private key, or wrong password".into()))?;
        (cert, key, certs)
    };

    let public = cert
        .public_key()
        .map_err(|e| fail(&main, format!("certificate key unreadable: {e}")))?;
    if !public.public_eq(&key) {
        return Err(fail(
            &main,
            "the private key does not match the certificate".into(),
        ));
    }
    let der = cert
        .to_der()
        .map_err(|e| fail(&main, format!("certificate unreadable: {e}")))?;
    let info = oces::classify(&der).map_err(|e| fail(&main, e.to_string()))?;
    Ok(Identity {
        cert,
        key,
        chain,
        info,
        mailboxes: cfg.mailboxes.iter().map(|m| address::key(m)).collect(),
        decrypt_for: cfg
            .decrypt_for
            .as_ref()
            .map(|list| list.iter().map(|m| address::fold_case(m)).collect()),
        source: main,
    })
}

fn password(cfg: &IdentitySettings) -> Result<Option<String>, String> {
    if let Some(file) = &cfg.password_file {
        let text = fs::read_to_string(file)
            .map_err(|e| format!("password file {}: {e}", file.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    if let Some(var) = &cfg.password_env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("environment variable {var} (password_env) is not set"));
    }
    Ok(None)
}

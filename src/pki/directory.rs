//! Recipients' certificates known locally: the folders in
//! `[certificates] dirs` (PEM, DER, PKCS#7 bundles) and the certificates
//! harvested from validly signed incoming mail (kept durably in
//! `<spool>/harvested/`). Indexed by e-mail address (case-insensitive) and
//! by CVR number.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use openssl::hash::MessageDigest;
use openssl::pkcs7::Pkcs7;
use openssl::x509::X509;

use super::oces::{self, CertInfo};

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Directory,
    Harvested,
    Ldap,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Directory => "directory",
            Source::Harvested => "harvested",
            Source::Ldap => "LDAP",
        })
    }
}

/// A certificate with what it says and where it came from.
#[derive(Debug, Clone)]
pub struct Entry {
    pub cert: X509,
    pub info: CertInfo,
    pub source: Source,
    pub fingerprint: String,
    /// SMIMECapabilities the holder announced in signed mail (harvested).
    pub capabilities: Vec<String>,
}

/// OIDs a recipient must announce for AES-256-GCM with RSA-OAEP.
pub const AES_256_GCM: &str = "2.16.840.1.101.3.4.1.46";
pub const RSAES_OAEP: &str = "1.2.840.113549.1.1.7";

impl Entry {
    /// The holder announced it reads AES-256-GCM with RSA-OAEP.
    pub fn announces_gcm_oaep(&self) -> bool {
        self.capabilities.iter().any(|c| c == AES_256_GCM)
            && self.capabilities.iter().any(|c| c == RSAES_OAEP)
    }
}

#[derive(Debug, Default)]
struct Index {
    entries: Vec<Entry>,
    seen: HashSet<String>,
    by_email: HashMap<String, Vec<usize>>,
    by_cvr: HashMap<String, Vec<usize>>,
}

impl Index {
    fn add(&mut self, cert: X509, source: Source, capabilities: Vec<String>) -> bool {
        let Ok(der) = cert.to_der() else { return false };
        let Ok(info) = oces::classify(&der) else {
            return false;
        };
        let fingerprint = fingerprint(&cert);
        if !self.seen.insert(fingerprint.clone()) {
            if !capabilities.is_empty() {
                if let Some(e) = self
                    .entries
                    .iter_mut()
                    .find(|e| e.fingerprint == fingerprint)
                {
                    e.capabilities = capabilities;
                }
            }
            return false;
        }
        let i = self.entries.len();
        for e in &info.emails {
            self.by_email
                .entry(e.to_ascii_lowercase())
                .or_default()
                .push(i);
        }
        if let Some(cvr) = &info.cvr {
            self.by_cvr.entry(cvr.clone()).or_default().push(i);
        }
        self.entries.push(Entry {
            cert,
            info,
            source,
            fingerprint,
            capabilities,
        });
        true
    }
}

/// SHA-256 fingerprint in hex.
pub fn fingerprint(cert: &X509) -> String {
    cert.digest(MessageDigest::sha256())
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

/// The local certificate directory.
#[derive(Debug, Default)]
pub struct Directory {
    index: RwLock<Index>,
    harvest_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("certificates {file}: {message}")]
pub struct DirectoryError {
    pub file: String,
    pub message: String,
}

impl Directory {
    /// The directory `settings` describe: the operator's folders and the
    /// certificates harvested earlier (kept under the spool folder).
    pub fn for_settings(settings: &crate::config::Settings) -> Result<Self, DirectoryError> {
        let harvest = settings.spool.dir.join("harvested");
        Self::load(&settings.certificates.dirs, Some(&harvest))
    }

    /// Loads every certificate under `dirs`, and those harvested earlier in
    /// `harvest_dir` (created when missing).
    pub fn load(dirs: &[PathBuf], harvest_dir: Option<&Path>) -> Result<Self, DirectoryError> {
        let mut index = Index::default();
        for d in dirs {
            for file in files(d)? {
                for cert in read_any(&file)? {
                    index.add(cert, Source::Directory, Vec::new());
                }
            }
        }
        if let Some(h) = harvest_dir.filter(|h| h.is_dir()) {
            for file in files(h)? {
                let caps: Vec<String> = fs::read_to_string(file.with_extension("caps"))
                    .map(|t| t.lines().map(str::to_string).collect())
                    .unwrap_or_default();
                for cert in read_any(&file)? {
                    index.add(cert, Source::Harvested, caps.clone());
                }
            }
        }
        Ok(Self {
            index: RwLock::new(index),
            harvest_dir: harvest_dir.map(Path::to_path_buf),
        })
    }

    /// Certificates for `address`: those naming it, and certificates of the
    /// same organisation (CVR) that name no address at all (OCES3
    /// organisation certificates may carry none).
    pub fn lookup(&self, address: &str) -> Vec<Entry> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        let addr = address.to_ascii_lowercase();
        let mut out: Vec<usize> = idx.by_email.get(&addr).cloned().unwrap_or_default();
        let cvrs: HashSet<String> = out
            .iter()
            .filter_map(|&i| idx.entries[i].info.cvr.clone())
            .collect();
        for cvr in cvrs {
            for &i in idx.by_cvr.get(&cvr).into_iter().flatten() {
                if idx.entries[i].info.emails.is_empty() && !out.contains(&i) {
                    out.push(i);
                }
            }
        }
        out.into_iter().map(|i| idx.entries[i].clone()).collect()
    }

    /// Every certificate, for `certs list`.
    pub fn all(&self) -> Vec<Entry> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        idx.entries.clone()
    }

    /// Certificates of authorities in the directory (chain helpers).
    pub fn authorities(&self) -> Vec<X509> {
        self.all()
            .into_iter()
            .filter(|e| e.info.kind == oces::Kind::Authority)
            .map(|e| e.cert)
            .collect()
    }

    /// Keeps `cert` (from a validly signed message) durably and indexes it,
    /// with the capabilities its holder announced. Returns false when it
    /// was already known (its capabilities are then brought up to date).
    pub fn harvest(&self, cert: &X509, capabilities: &[String]) -> Result<bool, DirectoryError> {
        let fp = fingerprint(cert);
        {
            let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
            let known = idx.entries.iter().find(|e| e.fingerprint == fp);
            if known.is_some_and(|e| capabilities.is_empty() || e.capabilities == capabilities) {
                return Ok(false);
            }
        }
        if let Some(dir) = &self.harvest_dir {
            fs::create_dir_all(dir).map_err(|e| DirectoryError {
                file: dir.display().to_string(),
                message: e.to_string(),
            })?;
            let path = dir.join(format!("{fp}.pem"));
            let pem = cert.to_pem().map_err(|e| DirectoryError {
                file: path.display().to_string(),
                message: e.to_string(),
            })?;
            crate::durable::write_atomic(&path, &pem).map_err(|e| DirectoryError {
                file: path.display().to_string(),
                message: e.to_string(),
            })?;
            if !capabilities.is_empty() {
                let caps = dir.join(format!("{fp}.caps"));
                let text = capabilities.join("\n") + "\n";
                crate::durable::write_atomic(&caps, text.as_bytes()).map_err(|e| {
                    DirectoryError {
                        file: caps.display().to_string(),
                        message: e.to_string(),
                    }
                })?;
            }
        }
        let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
        Ok(idx.add(cert.clone(), Source::Harvested, capabilities.to_vec()))
    }

    /// Adds certificates found elsewhere (LDAP) for this process's life.
    pub fn remember(&self, certs: &[X509], source: Source) {
        let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
        for c in certs {
            idx.add(c.clone(), source, Vec::new());
        }
    }
}

fn files(path: &Path) -> Result<Vec<PathBuf>, DirectoryError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = fs::read_dir(path).map_err(|e| DirectoryError {
        file: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    ["pem", "crt", "cer", "der", "p7b", "p7c"]
                        .contains(&x.to_ascii_lowercase().as_str())
                })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Certificates in a PEM (one or more), DER or PKCS#7 file.
pub fn read_any(file: &Path) -> Result<Vec<X509>, DirectoryError> {
    let fail = |message: String| DirectoryError {
        file: file.display().to_string(),
        message,
    };
    let bytes = fs::read(file).map_err(|e| fail(e.to_string()))?;
    parse_any(&bytes)
        .ok_or_else(|| fail("no certificate found (PEM, DER or PKCS#7 expected)".into()))
}

/// Certificates in PEM, DER or PKCS#7 bytes.
pub fn parse_any(bytes: &[u8]) -> Option<Vec<X509>> {
    let p7_certs = |p7: Pkcs7| -> Option<Vec<X509>> {
        let signed = p7.signed()?;
        Some(
            signed
                .certificates()?
                .iter()
                .map(|c| c.to_owned())
                .collect(),
        )
    };
    if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        if let Ok(c) = X509::stack_from_pem(bytes) {
            if !c.is_empty() {
                return Some(c);
            }
        }
        return Pkcs7::from_pem(bytes).ok().and_then(p7_certs);
    }
    if let Ok(c) = X509::from_der(bytes) {
        return Some(vec![c]);
    }
    Pkcs7::from_der(bytes).ok().and_then(p7_certs)
}

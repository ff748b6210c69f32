//! Recipients' certificates known locally: the folders in
//! `[certificates] dirs` (PEM, DER, PKCS#7 bundles) and the certificates
//! harvested from validly signed incoming mail (kept durably in
//! `<spool>/harvested/`). Indexed by e-mail address (case-insensitive) and
//! by CVR number.
//!
//! A harvested certificate is indexed only under the addresses a message
//! bound it to (its header From and envelope sender were that address),
//! and only as a fallback: where the folders hold a certificate for an
//! address, harvested ones are not offered for it. Its capabilities change
//! only with a signature newer than the one they came from, so a replayed
//! old message cannot downgrade them.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use openssl::pkcs7::Pkcs7;
use openssl::x509::X509;
use serde::{Deserialize, Serialize};

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
            Source::Harvested => "harvested (fallback)",
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
    /// The signing time of the signature they came from (harvested).
    pub signed_at: Option<i64>,
}

/// What is kept beside a harvested certificate (`<fingerprint>.json`):
/// whom it was bound to and what its holder last announced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Harvest {
    /// Addresses (lower case) messages bound it to.
    addresses: Vec<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    /// Signing time of the signature the capabilities came from.
    #[serde(default)]
    signed_at: Option<i64>,
}

/// True when a signature made at `new` is newer than one made at `old`.
fn newer(new: Option<i64>, old: Option<i64>) -> bool {
    match (new, old) {
        (Some(n), Some(o)) => n > o,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

impl Harvest {
    /// This record after another bound, valid signature: the address added,
    /// capabilities replaced only by a newer signature that announces some.
    fn merged(&self, address: &str, capabilities: &[String], signed_at: Option<i64>) -> Self {
        let mut next = self.clone();
        if !next.addresses.iter().any(|a| a == address) {
            next.addresses.push(address.to_string());
        }
        if newer(signed_at, self.signed_at) {
            if !capabilities.is_empty() {
                next.capabilities = capabilities.to_vec();
            }
            next.signed_at = signed_at;
        }
        next
    }
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
    /// Adds a certificate: from the folders or LDAP (`harvest` none:
    /// indexed under every address it names) or harvested (indexed under
    /// the addresses it was bound to only). A harvested certificate already
    /// known takes the new record.
    fn add(&mut self, cert: X509, source: Source, harvest: Option<&Harvest>) -> bool {
        let Ok(der) = cert.to_der() else { return false };
        let Ok(info) = oces::classify(&der) else {
            return false;
        };
        let fingerprint = fingerprint(&cert);
        let addresses: Vec<String> = match harvest {
            Some(h) => h.addresses.clone(),
            None => info
                .emails
                .iter()
                .map(|e| crate::mail::address::key(e))
                .collect(),
        };
        if !self.seen.insert(fingerprint.clone()) {
            let Some(i) = self
                .entries
                .iter()
                .position(|e| e.fingerprint == fingerprint)
            else {
                return false;
            };
            if let (Some(h), Source::Harvested) = (harvest, self.entries[i].source) {
                self.entries[i].capabilities = h.capabilities.clone();
                self.entries[i].signed_at = h.signed_at;
                for a in addresses {
                    let list = self.by_email.entry(a).or_default();
                    if !list.contains(&i) {
                        list.push(i);
                    }
                }
            }
            return false;
        }
        let i = self.entries.len();
        for a in addresses {
            self.by_email.entry(a).or_default().push(i);
        }
        if let (Some(cvr), None) = (&info.cvr, harvest) {
            self.by_cvr.entry(cvr.clone()).or_default().push(i);
        }
        self.entries.push(Entry {
            cert,
            info,
            source,
            fingerprint,
            capabilities: harvest.map(|h| h.capabilities.clone()).unwrap_or_default(),
            signed_at: harvest.and_then(|h| h.signed_at),
        });
        true
    }
}

/// SHA-256 fingerprint in hex (computed; for the certificates met on
/// every message, [`super::facts::fingerprint`] keeps it).
pub fn fingerprint(cert: &X509) -> String {
    super::facts::sha256_hex(cert)
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
                    index.add(cert, Source::Directory, None);
                }
            }
        }
        if let Some(h) = harvest_dir.filter(|h| h.is_dir()) {
            for file in files(h)? {
                let record = fs::read(file.with_extension("json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Harvest>(&b).ok());
                let Some(record) = record else {
                    // Kept before certificates were bound to their senders
                    // (or its record is damaged): nothing says whose it is.
                    tracing::warn!(event = "harvest-unbound", file = %file.display(),
                        "harvested certificate without a binding record: not used");
                    continue;
                };
                for cert in read_any(&file)? {
                    index.add(cert, Source::Harvested, Some(&record));
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
    /// organisation certificates may carry none). Harvested certificates
    /// only when the folders hold none for the address: the directory wins.
    pub fn lookup(&self, address: &str) -> Vec<Entry> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        let addr = crate::mail::address::key(address);
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
        if out
            .iter()
            .any(|&i| idx.entries[i].source == Source::Directory)
        {
            out.retain(|&i| idx.entries[i].source != Source::Harvested);
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

    /// Keeps `cert` from a valid signature on a message that bound it to
    /// `address` (lower case), durably, with the capabilities its holder
    /// announced at `signed_at`. Returns false when nothing changed: known
    /// from the folders or LDAP (which win), or harvested already for this
    /// address with capabilities at least as recent.
    pub fn harvest(
        &self,
        cert: &X509,
        address: &str,
        capabilities: &[String],
        signed_at: Option<i64>,
    ) -> Result<bool, DirectoryError> {
        let fp = fingerprint(cert);
        let record = {
            let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
            match idx.entries.iter().find(|e| e.fingerprint == fp) {
                Some(e) if e.source != Source::Harvested => return Ok(false),
                Some(e) => {
                    let known = Harvest {
                        addresses: idx
                            .by_email
                            .iter()
                            .filter(|(_, list)| {
                                list.iter().any(|&i| idx.entries[i].fingerprint == fp)
                            })
                            .map(|(a, _)| a.clone())
                            .collect(),
                        capabilities: e.capabilities.clone(),
                        signed_at: e.signed_at,
                    };
                    let next = known.merged(address, capabilities, signed_at);
                    if next.addresses.len() == known.addresses.len()
                        && next.capabilities == known.capabilities
                        && next.signed_at == known.signed_at
                    {
                        return Ok(false);
                    }
                    next
                }
                None => Harvest {
                    addresses: vec![address.to_string()],
                    capabilities: capabilities.to_vec(),
                    signed_at,
                },
            }
        };
        if let Some(dir) = &self.harvest_dir {
            let fail = |path: &Path, message: String| DirectoryError {
                file: path.display().to_string(),
                message,
            };
            fs::create_dir_all(dir).map_err(|e| fail(dir, e.to_string()))?;
            let pem_path = dir.join(format!("{fp}.pem"));
            let json_path = dir.join(format!("{fp}.json"));
            let pem = cert.to_pem().map_err(|e| fail(&pem_path, e.to_string()))?;
            let json = serde_json::to_vec(&record).map_err(|e| fail(&json_path, e.to_string()))?;
            // The record first: a certificate file without one is never used.
            crate::durable::write_atomic(&json_path, &json)
                .map_err(|e| fail(&json_path, e.to_string()))?;
            crate::durable::write_atomic(&pem_path, &pem)
                .map_err(|e| fail(&pem_path, e.to_string()))?;
        }
        let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
        idx.add(cert.clone(), Source::Harvested, Some(&record));
        Ok(true)
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

#[cfg(test)]
mod tests;

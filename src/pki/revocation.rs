//! Revocation of recipients' certificates: the CRL at the certificate's
//! distribution point (fetched over HTTP, cached until its nextUpdate, its
//! signature checked against the issuer) and the OCSP responder named in
//! its Authority Information Access. Blocking; called off the async
//! threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::ocsp::{
    OcspCertId, OcspCertStatus, OcspFlag, OcspRequest, OcspResponse, OcspResponseStatus,
};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{CrlStatus, X509Crl, X509};

/// What the revocation sources said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// At least one source answered and none said revoked.
    Good(String),
    Revoked(String),
    /// No source could be asked (names them and why).
    Unknown(String),
    /// The certificate names no CRL and no OCSP responder.
    NoSources,
}

/// CRLs fetched, by URL, until their nextUpdate.
#[derive(Default)]
pub struct Checker {
    crls: Mutex<HashMap<String, (Arc<X509Crl>, i64)>>,
    /// Counts the CRLs fetched: answers derived from older revocation data
    /// are stale once it moves.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("revocation::Checker")
    }
}

fn unix(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(true)
        .build()
        .new_agent()
}

impl Checker {
    /// The revocation data's generation: changes whenever a CRL is
    /// fetched (for the first time or again after its nextUpdate).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Checks `cert` (issued by `issuer`) at `now` (Unix seconds).
    pub fn check(
        &self,
        cert: &X509,
        issuer: &X509,
        anchors: &[X509],
        now: i64,
        timeout: Duration,
    ) -> Status {
        let mut good = Vec::new();
        let mut unknown = Vec::new();
        for url in crl_urls(cert) {
            match self.crl(&url, issuer, now, timeout) {
                Ok(crl) => match crl.get_by_cert(cert) {
                    CrlStatus::Revoked(_) => {
                        return Status::Revoked(format!("revoked (CRL {url})"))
                    }
                    _ => good.push(format!("CRL {url}")),
                },
                Err(e) => unknown.push(format!("CRL {url}: {e}")),
            }
        }
        for url in ocsp_urls(cert) {
            match ocsp(&url, cert, issuer, anchors, timeout) {
                Ok(OcspCertStatus::REVOKED) => {
                    return Status::Revoked(format!("revoked (OCSP {url})"))
                }
                Ok(OcspCertStatus::GOOD) => good.push(format!("OCSP {url}")),
                Ok(_) => unknown.push(format!("OCSP {url}: status unknown")),
                Err(e) => unknown.push(format!("OCSP {url}: {e}")),
            }
        }
        if !good.is_empty() {
            Status::Good(good.join(", "))
        } else if !unknown.is_empty() {
            Status::Unknown(unknown.join("; "))
        } else {
            Status::NoSources
        }
    }

    fn crl(
        &self,
        url: &str,
        issuer: &X509,
        now: i64,
        timeout: Duration,
    ) -> Result<Arc<X509Crl>, String> {
        if let Some((crl, next)) = self.crls.lock().unwrap_or_else(|p| p.into_inner()).get(url) {
            if *next > now {
                return Ok(Arc::clone(crl));
            }
        }
        let bytes = agent(timeout)
            .get(url)
            .call()
            .map_err(|e| format!("cannot fetch: {e}"))?
            .body_mut()
            .with_config()
            .limit(20 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| format!("cannot read: {e}"))?;
        let crl = Arc::new(
            X509Crl::from_der(&bytes)
                .or_else(|_| X509Crl::from_pem(&bytes))
                .map_err(|_| "not a CRL".to_string())?,
        );
        let key = issuer.public_key().map_err(|e| e.to_string())?;
        if !crl.verify(&key).unwrap_or(false) {
            return Err("CRL signature does not verify with the issuer's key".into());
        }
        let next = crl.next_update().and_then(unix).unwrap_or(now + 3600);
        if next < now {
            return Err("CRL is out of date (nextUpdate passed)".into());
        }
        self.crls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.to_string(), (Arc::clone(&crl), next));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(crl)
    }
}

fn crl_urls(cert: &X509) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(points) = cert.crl_distribution_points() {
        for p in &points {
            if let Some(names) = p.distpoint().and_then(|d| d.fullname()) {
                for n in names {
                    if let Some(uri) = n.uri() {
                        if uri.starts_with("http://") {
                            out.push(uri.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

fn ocsp_urls(cert: &X509) -> Vec<String> {
    cert.ocsp_responders()
        .map(|s| {
            s.iter()
                .map(|u| u.to_string())
                .filter(|u| u.starts_with("http://"))
                .collect()
        })
        .unwrap_or_default()
}

fn ocsp(
    url: &str,
    cert: &X509,
    issuer: &X509,
    anchors: &[X509],
    timeout: Duration,
) -> Result<OcspCertStatus, String> {
    let e = |x: openssl::error::ErrorStack| x.to_string();
    let mut req = OcspRequest::new().map_err(e)?;
    req.add_id(OcspCertId::from_cert(MessageDigest::sha1(), cert, issuer).map_err(e)?)
        .map_err(e)?;
    let der = req.to_der().map_err(e)?;
    let bytes = agent(timeout)
        .post(url)
        .header("Content-Type", "application/ocsp-request")
        .send(&der[..])
        .map_err(|x| format!("cannot ask: {x}"))?
        .body_mut()
        .read_to_vec()
        .map_err(|x| format!("cannot read: {x}"))?;
    let resp = OcspResponse::from_der(&bytes).map_err(|_| "not an OCSP response".to_string())?;
    if resp.status() != OcspResponseStatus::SUCCESSFUL {
        return Err(format!("responder status {:?}", resp.status()));
    }
    let basic = resp.basic().map_err(e)?;
    let mut helpers = Stack::new().map_err(e)?;
    helpers.push(issuer.clone()).map_err(e)?;
    let mut store = X509StoreBuilder::new().map_err(e)?;
    for a in anchors {
        let _ = store.add_cert(a.clone());
    }
    let _ = store.add_cert(issuer.clone());
    basic
        .verify(&helpers, &store.build(), OcspFlag::empty())
        .map_err(|_| "OCSP response signature does not verify".to_string())?;
    let id = OcspCertId::from_cert(MessageDigest::sha1(), cert, issuer).map_err(e)?;
    let status = basic
        .find_status(&id)
        .ok_or_else(|| "the response does not cover this certificate".to_string())?;
    status
        .check_validity(300, Some(7 * 86_400))
        .map_err(|_| "OCSP response is out of date".to_string())?;
    Ok(status.status)
}

/// The organisation's identities found revoked while the daemon runs, by
/// certificate fingerprint: they still decrypt, never sign. A service
/// shared by every delivery, filled by the periodic check.
#[derive(Debug, Default)]
pub struct RevokedIdentities {
    fingerprints: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl RevokedIdentities {
    /// Replaces what is known with the result of a new check.
    pub fn set(&self, fingerprints: std::collections::HashSet<String>) {
        *self.fingerprints.write().unwrap_or_else(|p| p.into_inner()) = fingerprints;
    }

    /// The fingerprints known revoked now.
    pub fn current(&self) -> std::collections::HashSet<String> {
        self.fingerprints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Which identities their CA says are revoked (CRL or OCSP), as far as the
/// sources can be reached; `[trust] revocation = "off"` checks nothing.
/// Blocking (HTTP).
pub fn revoked_identities(
    keys: &super::Keyring,
    settings: &crate::config::Settings,
    now: i64,
) -> Vec<bool> {
    if settings.trust.revocation == crate::config::Revocation::Off {
        return vec![false; keys.identities.len()];
    }
    let checker = Checker::default();
    keys.identities
        .iter()
        .map(|id| {
            let issuer = id
                .chain
                .iter()
                .find(|c| c.issued(&id.cert) == openssl::x509::X509VerifyResult::OK);
            match issuer {
                Some(issuer) => matches!(
                    checker.check(
                        &id.cert,
                        issuer,
                        &keys.anchors,
                        now,
                        settings.trust.revocation_timeout
                    ),
                    Status::Revoked(_)
                ),
                None => false,
            }
        })
        .collect()
}

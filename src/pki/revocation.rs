//! Revocation of certificates: the CRL at each distribution point
//! (fetched over HTTP or HTTPS, kept per distribution point and issuer
//! until its nextUpdate or a reload, its signature, issuer and scope
//! checked) and the OCSP responder named in the Authority Information
//! Access (asked with a nonce), for the certificate and every CA
//! certificate above it up to the trust anchor: for signers and
//! recipients, the chain OpenSSL verified. Blocking; called off the async
//! threads.
//!
//! A CRL counts as an answer only when it is complete for the certificate
//! (RFC 5280 6.3.3): not a delta CRL, no reasons left out, not indirect, an
//! Issuing Distribution Point (if any) naming the distribution point it was
//! fetched from and covering the certificate's kind (end entity or CA), no
//! critical extension we do not understand. Otherwise an attacker on the
//! path could serve another CRL the same CA signed (a partition, the CA
//! certificates' list, a delta) in which a revoked certificate is missing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::ocsp::{
    OcspCertId, OcspCertStatus, OcspFlag, OcspRequest, OcspResponse, OcspResponseStatus,
    OcspRevokedStatus,
};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{CrlStatus, X509Crl, X509VerifyResult, X509};
use x509_cert::crl::CertificateList;
use x509_cert::der::oid::db::rfc5280::{
    ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_CRL_DISTRIBUTION_POINTS, ID_CE_CRL_NUMBER,
    ID_CE_DELTA_CRL_INDICATOR, ID_CE_ISSUING_DISTRIBUTION_POINT,
};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{CrlDistributionPoints, CrlNumber};

use super::crl_history::{self, CrlHistory, Seen};

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

/// How far back an OCSP answer's thisUpdate may lie when it gives no
/// nextUpdate: such a responder says newer information is always
/// available (RFC 6960 4.2.2.1), so an old answer is a replayed one.
pub const OCSP_FRESH_WITHOUT_NEXT_UPDATE: i64 = 3600;
/// The oldest OCSP answer taken at all (pre-signed answers with a
/// nextUpdate included).
pub const OCSP_OLDEST: i64 = 7 * 86_400;
/// How many CRL distribution points, and how many OCSP responders, of one
/// certificate are asked at most (each bounded by the timeout).
const MAX_SOURCES: usize = 4;
/// How far clocks may disagree (seconds).
const SKEW: i64 = 300;

/// The kinds of certificate a CRL covers (its Issuing Distribution Point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Covers {
    pub only_end_entities: bool,
    pub only_cas: bool,
}

/// One fetched CRL, checked against its issuer and its URL.
struct KeptCrl {
    crl: Arc<X509Crl>,
    next_update: i64,
    covers: Covers,
}

/// CRLs fetched, by distribution point (its names, the URL among them)
/// and issuing certificate, until their nextUpdate; none older than the
/// newest seen from the same point (`history`).
#[derive(Default)]
pub struct Checker {
    crls: Mutex<HashMap<(String, String), KeptCrl>>,
    history: Arc<CrlHistory>,
    /// Counts the CRLs fetched or forgotten: answers derived from older
    /// revocation data are stale once it moves.
    generation: AtomicU64,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("revocation::Checker")
    }
}

/// The system's trust anchors for HTTPS sources (read once; honours
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`). What a CRL or OCSP answer says is
/// trusted for its signature, not for the channel.
fn web_roots() -> Arc<Vec<ureq::tls::Certificate<'static>>> {
    static ROOTS: OnceLock<Arc<Vec<ureq::tls::Certificate<'static>>>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        Arc::new(
            rustls_native_certs::load_native_certs()
                .certs
                .into_iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
        )
    }))
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(true)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(web_roots()))
                .build(),
        )
        .build()
        .new_agent()
}

/// Whether a source at `url` can be asked (HTTP or HTTPS).
fn fetchable(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The certificates above `cert` among `pool`, nearest first, as far as
/// they can be found (at most 8; up to a self-issued one), by names and
/// key identifiers only: for the organisation's own identities, whose
/// chains the operator supplied. Anything a sender carried is checked
/// along the chain OpenSSL verified instead. A self-issued `cert` is its
/// own issuer.
pub fn path_up(cert: &X509, pool: &[X509]) -> Vec<X509> {
    let self_issued = |c: &X509| c.issued(c) == X509VerifyResult::OK;
    if self_issued(cert) {
        return vec![cert.clone()];
    }
    let mut out: Vec<X509> = Vec::new();
    let mut at = cert.clone();
    while out.len() < 8 {
        let Some(up) = pool.iter().find(|c| c.issued(&at) == X509VerifyResult::OK) else {
            break;
        };
        out.push(up.clone());
        if self_issued(up) {
            break;
        }
        at = up.clone();
    }
    out
}

impl Checker {
    /// A checker that refuses CRLs older than those `history` has seen.
    pub fn with_history(history: Arc<CrlHistory>) -> Self {
        Self {
            history,
            ..Self::default()
        }
    }

    /// The revocation data's generation: changes whenever a CRL is
    /// fetched (for the first time or again after its nextUpdate) or the
    /// kept CRLs are forgotten.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Forgets every kept CRL (a reload: the operator may have seen a
    /// revocation the cached CRLs do not show yet).
    pub fn forget(&self) {
        self.crls.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Checks `cert` and every CA certificate above it: `issuers` is the
    /// path above `cert`, nearest first, each issued by the next (a trust
    /// anchor in it ends the checks: anchors are not revoked by CRL).
    /// Revoked anywhere is revoked; unknown anywhere is unknown; otherwise
    /// what the certificate's own sources said.
    pub fn check(
        &self,
        cert: &X509,
        issuers: &[X509],
        anchors: &[X509],
        now: i64,
        timeout: Duration,
    ) -> Status {
        let anchor_ders: Vec<Vec<u8>> = anchors.iter().filter_map(|a| a.to_der().ok()).collect();
        let mut levels = Vec::new();
        let mut subject = cert;
        for (i, issuer) in issuers.iter().enumerate() {
            if subject
                .to_der()
                .is_ok_and(|d| i > 0 && anchor_ders.contains(&d))
            {
                break;
            }
            let status = self.check_one(subject, issuer, i > 0, anchors, now, timeout);
            let status = match (i, status) {
                (0, s) => s,
                (_, Status::Revoked(why)) => {
                    Status::Revoked(format!("issuing CA {} {why}", name_of(subject)))
                }
                (_, Status::Unknown(why)) => {
                    Status::Unknown(format!("issuing CA {}: {why}", name_of(subject)))
                }
                (_, s) => s,
            };
            levels.push(status);
            subject = issuer;
        }
        combine(levels)
    }

    /// Checks one link: `cert` (a CA certificate when `is_ca`) issued by
    /// `issuer`.
    fn check_one(
        &self,
        cert: &X509,
        issuer: &X509,
        is_ca: bool,
        anchors: &[X509],
        now: i64,
        timeout: Duration,
    ) -> Status {
        // Revocation is for good: a certificate seen revoked stays so,
        // whatever the sources serve now.
        let revoked_key = crl_history::revoked_key(&issuer_id(issuer), &serial_hex(cert));
        // Entries written before the key named the issuer by name and key
        // (by its certificate's fingerprint) count too.
        let earlier_key =
            crl_history::revoked_key(&super::directory::fingerprint(issuer), &serial_hex(cert));
        if self.history.was_revoked(&revoked_key) || self.history.was_revoked(&earlier_key) {
            return Status::Revoked("revoked (an earlier CRL or OCSP answer said so)".into());
        }
        let mut good = Vec::new();
        let mut unknown = Vec::new();
        let points = crl_points(cert).unwrap_or_else(|why| {
            unknown.push(format!("CRL distribution points: {why}"));
            Vec::new()
        });
        for point in points.into_iter().take(MAX_SOURCES) {
            let Some(url) = point.iter().find(|u| fetchable(u)).cloned() else {
                unknown.push(format!(
                    "CRL {}: no HTTP or HTTPS location",
                    point.join(" ")
                ));
                continue;
            };
            match self.crl(&url, &point, issuer, is_ca, now, timeout) {
                Ok(crl) => match crl.get_by_cert(cert) {
                    CrlStatus::Revoked(entry) => {
                        if !on_hold(entry) {
                            self.history.remember_revoked(&revoked_key);
                        }
                        return Status::Revoked(format!("revoked (CRL {url})"));
                    }
                    _ => good.push(format!("CRL {url}")),
                },
                Err(e) => unknown.push(format!("CRL {url}: {e}")),
            }
        }
        for url in ocsp_urls(cert).into_iter().take(MAX_SOURCES) {
            if !fetchable(&url) {
                unknown.push(format!("OCSP {url}: not an HTTP or HTTPS location"));
                continue;
            }
            match ocsp(&url, cert, issuer, anchors, timeout) {
                Ok((OcspCertStatus::REVOKED, reason)) => {
                    if reason != OcspRevokedStatus::STATUS_CERTIFICATE_HOLD {
                        self.history.remember_revoked(&revoked_key);
                    }
                    return Status::Revoked(format!("revoked (OCSP {url})"));
                }
                Ok((OcspCertStatus::GOOD, _)) => good.push(format!("OCSP {url}")),
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

    /// The CRL at `url` (one of the distribution point's names `point`)
    /// for certificates of `issuer`, kept or fetched, and checked to
    /// answer for a certificate of this kind.
    fn crl(
        &self,
        url: &str,
        point: &[String],
        issuer: &X509,
        is_ca: bool,
        now: i64,
        timeout: Duration,
    ) -> Result<Arc<X509Crl>, String> {
        // The scope was checked for this point's names and this issuer.
        let key = (point.join("\n"), super::directory::fingerprint(issuer));
        let kept = {
            let crls = self.crls.lock().unwrap_or_else(|p| p.into_inner());
            crls.get(&key)
                .filter(|k| k.next_update > now)
                .map(|k| (Arc::clone(&k.crl), k.covers))
        };
        let (crl, covers) = match kept {
            Some(k) => k,
            None => {
                let (fetched, age) = fetch_crl(url, point, issuer, now, timeout)?;
                // Only a CRL that answers for this kind of certificate is
                // kept or counts as the newest from this point; the CA
                // certificates' list and the end entities' have a history
                // each.
                fits(fetched.covers, is_ca)?;
                let kind = match (fetched.covers.only_cas, fetched.covers.only_end_entities) {
                    (true, _) => "\u{0}ca",
                    (_, true) => "\u{0}end-entity",
                    _ => "",
                };
                // The history is the issuer's (its name and key), so a
                // re-issued or cross-certified certificate of it carries
                // the same; what was kept under its certificate's
                // fingerprint before counts too.
                let history_key = crl_history::key(point, &format!("{}{kind}", issuer_id(issuer)));
                let earlier = crl_history::key(point, &format!("{}{kind}", key.1));
                self.history.admit(&history_key, &[&earlier], age)?;
                let out = (Arc::clone(&fetched.crl), fetched.covers);
                self.crls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, fetched);
                self.generation.fetch_add(1, Ordering::SeqCst);
                out
            }
        };
        fits(covers, is_ca)?;
        Ok(crl)
    }
}

/// Whether a CRL that `covers` these kinds answers for a certificate that
/// is a CA's (`is_ca`) or not.
fn fits(covers: Covers, is_ca: bool) -> Result<(), String> {
    if is_ca && covers.only_end_entities {
        return Err("the CRL covers only end-entity certificates".into());
    }
    if !is_ca && covers.only_cas {
        return Err("the CRL covers only CA certificates".into());
    }
    Ok(())
}

/// The overall answer of a path's links, the certificate's own first.
fn combine(levels: Vec<Status>) -> Status {
    if let Some(r) = levels.iter().find(|s| matches!(s, Status::Revoked(_))) {
        return r.clone();
    }
    let unknown: Vec<&str> = levels
        .iter()
        .filter_map(|s| match s {
            Status::Unknown(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    if !unknown.is_empty() {
        return Status::Unknown(unknown.join("; "));
    }
    levels.into_iter().next().unwrap_or(Status::NoSources)
}

/// Who issued a certificate, as OCSP names it: the issuer's name and
/// public key (hashed), not its certificate, so that a re-issued or
/// cross-certified issuer with the same name and key is the same issuer.
fn issuer_id(issuer: &X509) -> String {
    let name = issuer.subject_name().to_der().unwrap_or_default();
    let key = issuer
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .unwrap_or_default();
    format!(
        "{}:{}",
        crate::ossl::sha256_hex(&name),
        crate::ossl::sha256_hex(&key)
    )
}

/// The certificate's serial number in hex ("-" should it not read).
fn serial_hex(cert: &X509) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|n| n.to_hex_str().map(|h| h.to_string()))
        .unwrap_or_else(|_| "-".into())
}

/// Whether a CRL entry says the certificate is only on hold (the one
/// reason a later CRL can lift).
fn on_hold(entry: &openssl::x509::X509RevokedRef) -> bool {
    entry
        .extension::<openssl::x509::ReasonCode>()
        .ok()
        .flatten()
        .and_then(|(_, reason)| reason.get_i64().ok())
        .is_some_and(|r| r == i64::from(openssl::x509::CrlReason::CERTIFICATE_HOLD.as_raw()))
}

fn name_of(cert: &X509) -> String {
    cert.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .map(|s| format!("\"{s}\""))
        .unwrap_or_else(|| "(no common name)".into())
}

/// Fetches the CRL at `url` and checks it for certificates of `issuer`;
/// with how old it is.
fn fetch_crl(
    url: &str,
    point: &[String],
    issuer: &X509,
    now: i64,
    timeout: Duration,
) -> Result<(KeptCrl, Seen), String> {
    let bytes = agent(timeout)
        .get(url)
        .call()
        .map_err(|e| format!("cannot fetch: {e}"))?
        .body_mut()
        .with_config()
        .limit(20 * 1024 * 1024)
        .read_to_vec()
        .map_err(|e| format!("cannot read: {e}"))?;
    let crl = X509Crl::from_der(&bytes)
        .or_else(|_| X509Crl::from_pem(&bytes))
        .map_err(|_| "not a CRL".to_string())?;
    let key = issuer.public_key().map_err(|e| e.to_string())?;
    if !crl.verify(&key).unwrap_or(false) {
        return Err("CRL signature does not verify with the issuer's key".into());
    }
    if crl
        .issuer_name()
        .try_cmp(issuer.subject_name())
        .map_err(|e| e.to_string())?
        != std::cmp::Ordering::Equal
    {
        return Err("the CRL names another issuer".into());
    }
    let der = crl.to_der().map_err(|e| e.to_string())?;
    let scope = scope(&der, point, now)?;
    Ok((
        KeptCrl {
            crl: Arc::new(crl),
            next_update: scope.next_update,
            covers: scope.covers,
        },
        scope.age,
    ))
}

/// What a CRL complete for a distribution point says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The kinds of certificate it covers.
    pub covers: Covers,
    /// Until when it holds.
    pub next_update: i64,
    /// How old it is, against the newest seen from the same point.
    pub age: Seen,
}

/// Whether the CRL `der`, fetched from the distribution point named
/// `point`, is a complete CRL for it at `now`: what kinds of certificate it
/// covers, until when it holds and how old it is, or why it answers for
/// nothing. Read strictly (DER): an extension that does not decode whole
/// is refused, not half read.
pub fn scope(der: &[u8], point: &[String], now: i64) -> Result<Scope, String> {
    let crl = CertificateList::from_der(der).map_err(|_| "not a DER CRL".to_string())?;
    let tbs = crl.tbs_cert_list;
    let secs = |t: x509_cert::time::Time| i64::try_from(t.to_unix_duration().as_secs()).ok();
    let this_update = secs(tbs.this_update).ok_or("unreadable thisUpdate")?;
    let next_update = tbs
        .next_update
        .and_then(secs)
        .ok_or("the CRL gives no nextUpdate")?;
    if this_update > now + SKEW {
        return Err("the CRL is from the future (thisUpdate)".into());
    }
    if next_update < now {
        return Err("CRL is out of date (nextUpdate passed)".into());
    }
    let mut covers = Covers::default();
    let mut number = None;
    for ext in tbs.crl_extensions.unwrap_or_default() {
        let oid = ext.extn_id;
        if oid == ID_CE_CRL_NUMBER {
            let n = CrlNumber::from_der(ext.extn_value.as_bytes())
                .map_err(|_| "unreadable CRL number".to_string())?;
            number = Some(n.0.as_bytes().to_vec());
            continue;
        }
        if oid == ID_CE_DELTA_CRL_INDICATOR {
            return Err("a delta CRL is not a complete list".into());
        }
        if oid == ID_CE_ISSUING_DISTRIBUTION_POINT {
            let idp = IssuingDistributionPoint::from_der(ext.extn_value.as_bytes())
                .map_err(|_| "unreadable Issuing Distribution Point".to_string())?;
            if idp.only_some_reasons.is_some() {
                return Err("the CRL lists only some revocation reasons".into());
            }
            if idp.indirect_crl {
                return Err("indirect CRLs are not supported".into());
            }
            if idp.only_contains_attribute_certs {
                return Err("the CRL covers only attribute certificates".into());
            }
            let names_this_point = |names: &Vec<GeneralName>| {
                names
                    .iter()
                    .filter_map(name_text)
                    .any(|n| point.contains(&n))
            };
            match &idp.distribution_point {
                None => {}
                Some(DistributionPointName::FullName(names)) if names_this_point(names) => {}
                Some(DistributionPointName::FullName(_)) => {
                    return Err("the CRL is for another distribution point (a partition)".into());
                }
                Some(DistributionPointName::NameRelativeToCRLIssuer(_)) => {
                    return Err(
                        "the CRL names its distribution point relative to its issuer (not supported)"
                            .into(),
                    );
                }
            }
            covers.only_end_entities = idp.only_contains_user_certs;
            covers.only_cas = idp.only_contains_ca_certs;
            continue;
        }
        let known = oid == ID_CE_AUTHORITY_KEY_IDENTIFIER;
        if ext.critical && !known {
            return Err(format!("the CRL has an unknown critical extension {oid}"));
        }
    }
    Ok(Scope {
        covers,
        next_update,
        age: Seen {
            this_update,
            number,
        },
    })
}

/// A distribution point's name as compared: a URI as it is, a directory
/// name as `dirName:` and its DER in hex; other kinds are not compared.
fn name_text(n: &GeneralName) -> Option<String> {
    match n {
        GeneralName::UniformResourceIdentifier(u) => Some(u.as_str().to_string()),
        GeneralName::DirectoryName(d) => d.to_der().ok().map(|der| {
            der.iter()
                .fold("dirName:".to_string(), |t, b| t + &format!("{b:02x}"))
        }),
        _ => None,
    }
}

/// The certificate's CRL distribution points, each as its names (see
/// [`name_text`]). A certificate that names some in a form this strict
/// reading refuses is an error, not "none": its sources were not asked.
fn crl_points(cert: &X509) -> Result<Vec<Vec<String>>, String> {
    let unreadable = || "not readable (strict DER)".to_string();
    let parsed = cert
        .to_der()
        .ok()
        .and_then(|der| x509_cert::Certificate::from_der(&der).ok());
    let Some(parsed) = parsed else {
        // OpenSSL reads more leniently: does it see any?
        return match cert.crl_distribution_points() {
            Some(_) => Err(unreadable()),
            None => Ok(Vec::new()),
        };
    };
    let mut out = Vec::new();
    for ext in parsed.tbs_certificate.extensions.unwrap_or_default() {
        if ext.extn_id != ID_CE_CRL_DISTRIBUTION_POINTS {
            continue;
        }
        let points =
            CrlDistributionPoints::from_der(ext.extn_value.as_bytes()).map_err(|_| unreadable())?;
        for p in points.0 {
            if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                let names: Vec<String> = names.iter().filter_map(name_text).collect();
                if !names.is_empty() {
                    out.push(names);
                }
            }
        }
    }
    Ok(out)
}

fn ocsp_urls(cert: &X509) -> Vec<String> {
    cert.ocsp_responders()
        .map(|s| s.iter().map(|u| u.to_string()).collect())
        .unwrap_or_default()
}

fn ocsp(
    url: &str,
    cert: &X509,
    issuer: &X509,
    anchors: &[X509],
    timeout: Duration,
) -> Result<(OcspCertStatus, OcspRevokedStatus), String> {
    let e = |x: openssl::error::ErrorStack| x.to_string();
    let mut req = OcspRequest::new().map_err(e)?;
    req.add_id(OcspCertId::from_cert(MessageDigest::sha1(), cert, issuer).map_err(e)?)
        .map_err(e)?;
    crate::ossl::add_ocsp_nonce(&mut req).map_err(e)?;
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
    // A responder that echoes nonces must echo ours: another nonce is an
    // answer to another request, replayed.
    if crate::ossl::ocsp_nonce(&req, &basic) == crate::ossl::Nonce::Other {
        return Err("the OCSP answer carries another request's nonce (replayed)".into());
    }
    let id = OcspCertId::from_cert(MessageDigest::sha1(), cert, issuer).map_err(e)?;
    let status = basic
        .find_status(&id)
        .ok_or_else(|| "the response does not cover this certificate".to_string())?;
    let oldest = if status.next_update().is_some() {
        OCSP_OLDEST
    } else {
        OCSP_FRESH_WITHOUT_NEXT_UPDATE
    };
    status
        .check_validity(SKEW as u32, Some(oldest as u32))
        .map_err(|_| "OCSP response is out of date".to_string())?;
    Ok((status.status, status.reason))
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
    history: Arc<CrlHistory>,
    now: i64,
) -> Vec<bool> {
    if settings.trust.revocation == crate::config::Revocation::Off {
        return vec![false; keys.identities.len()];
    }
    let checker = Checker::with_history(history);
    keys.identities
        .iter()
        .map(|id| {
            let mut pool = id.chain.clone();
            pool.extend(keys.anchors.iter().cloned());
            let issuers = path_up(&id.cert, &pool);
            !issuers.is_empty()
                && matches!(
                    checker.check(
                        &id.cert,
                        &issuers,
                        &keys.anchors,
                        now,
                        settings.trust.revocation_timeout
                    ),
                    Status::Revoked(_)
                )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::nid::Nid;
    use openssl::x509::{X509CrlBuilder, X509Extension};

    const URL: &str = "http://crl.example/full.crl";
    const NOW: i64 = 1_800_000_000;

    /// A CRL signed by a throw-away CA, with the extensions given as
    /// (NID, OpenSSL v3 text) and the update times given. (The builder
    /// insists on a nextUpdate, so a CRL without one is not tried here.)
    fn crl(exts: &[(Nid, &str)], this: i64, next: Option<i64>) -> Vec<u8> {
        let ca = crate::pki::testkit::identity(1024, "CRL Test CA").unwrap();
        let mut b = X509CrlBuilder::new().unwrap();
        b.set_issuer_name(ca.cert.subject_name()).unwrap();
        b.set_last_update(&Asn1Time::from_unix(this).unwrap())
            .unwrap();
        if let Some(n) = next {
            b.set_next_update(&Asn1Time::from_unix(n).unwrap()).unwrap();
        }
        #[allow(deprecated)]
        let aki = X509Extension::new_nid(
            None,
            None,
            Nid::AUTHORITY_KEY_IDENTIFIER,
            "DER:30:03:80:01:01",
        )
        .unwrap();
        b.append_extension(aki).unwrap();
        #[allow(deprecated)]
        let number = X509Extension::new_nid(None, None, Nid::CRL_NUMBER, "DER:02:01:07").unwrap();
        b.append_extension(number).unwrap();
        for (nid, value) in exts {
            #[allow(deprecated)]
            let ext = X509Extension::new_nid(None, None, *nid, value).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&ca.key, MessageDigest::sha256()).unwrap();
        b.build().unwrap().to_der().unwrap()
    }

    fn point() -> Vec<String> {
        vec![URL.to_string()]
    }

    #[test]
    fn a_plain_full_crl_covers_everything_until_its_next_update() {
        let der = crl(&[], NOW - 60, Some(NOW + 3600));
        assert_eq!(
            scope(&der, &point(), NOW),
            Ok(Scope {
                covers: Covers::default(),
                next_update: NOW + 3600,
                age: Seen {
                    this_update: NOW - 60,
                    number: Some(vec![7]),
                },
            })
        );
    }

    #[test]
    fn crls_that_are_not_complete_for_the_certificate_answer_for_nothing() {
        let idp = |v: &str| crl(&[(Nid::ISSUING_DISTRIBUTION_POINT, v)], NOW, Some(NOW + 60));
        let cases = [
            ("delta", "delta CRL", crl(&[(Nid::DELTA_CRL, "critical,DER:02:01:01")], NOW, Some(NOW + 60))),
            ("partition", "another distribution point", idp("critical,fullname:URI:http://crl.example/part-2.crl")),
            ("reasons", "only some revocation reasons", idp("critical,fullname:URI:http://crl.example/full.crl,onlysomereasons:keyCompromise")),
            ("indirect", "indirect", idp("critical,indirectCRL:TRUE")),
            ("attribute", "attribute certificates", idp("critical,onlyAA:TRUE")),
            ("relative", "relative to its issuer", idp("critical,DER:30:12:A0:10:A1:0E:30:0C:06:03:55:04:03:0C:05:70:61:72:74:32")),
            ("unknown critical", "unknown critical extension", crl(&[(Nid::INVALIDITY_DATE, "critical,DER:18:0f:32:30:32:36:31:32:30:31:30:30:30:30:30:30:5a")], NOW, Some(NOW + 60))),
            ("out of date", "out of date", crl(&[], NOW - 7200, Some(NOW - 3600))),
            ("from the future", "from the future", crl(&[], NOW + 3600, Some(NOW + 7200))),
        ];
        for (what, reason, der) in cases {
            let why = scope(&der, &point(), NOW).expect_err(what);
            assert!(why.contains(reason), "{what}: {why}");
        }
    }

    #[test]
    fn an_issuing_distribution_point_that_names_this_point_says_what_it_covers() {
        let der = crl(
            &[(
                Nid::ISSUING_DISTRIBUTION_POINT,
                "critical,fullname:URI:http://crl.example/full.crl,onlyCA:TRUE",
            )],
            NOW,
            Some(NOW + 60),
        );
        let covers = scope(&der, &point(), NOW).unwrap().covers;
        assert!(covers.only_cas && !covers.only_end_entities);
        // The same CRL fetched for another distribution point is refused.
        assert!(scope(&der, &["http://crl.example/other.crl".into()], NOW).is_err());
        let der = crl(
            &[(Nid::ISSUING_DISTRIBUTION_POINT, "critical,onlyuser:TRUE")],
            NOW,
            Some(NOW + 60),
        );
        let covers = scope(&der, &point(), NOW).unwrap().covers;
        assert!(covers.only_end_entities && !covers.only_cas);
    }

    #[test]
    fn revoked_or_unknown_anywhere_on_the_path_decides() {
        let good = || Status::Good("CRL a".into());
        assert_eq!(combine(vec![good(), Status::NoSources]), good());
        assert_eq!(combine(vec![Status::NoSources, good()]), Status::NoSources);
        assert_eq!(
            combine(vec![good(), Status::Unknown("b".into())]),
            Status::Unknown("b".into())
        );
        assert_eq!(
            combine(vec![
                good(),
                Status::Unknown("b".into()),
                Status::Revoked("c".into())
            ]),
            Status::Revoked("c".into())
        );
        assert_eq!(combine(vec![]), Status::NoSources);
    }

    #[test]
    fn an_issuer_is_its_name_and_key_not_its_certificate() {
        use openssl::bn::BigNum;
        use openssl::hash::MessageDigest;
        let ca = crate::pki::testkit::identity(1024, "Issuing CA").unwrap();
        // The same name and key in another certificate (re-issued, or a
        // cross-certificate): the same issuer.
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        let serial = BigNum::from_u32(4242).unwrap().to_asn1_integer().unwrap();
        b.set_serial_number(&serial).unwrap();
        b.set_subject_name(ca.cert.subject_name()).unwrap();
        b.set_issuer_name(ca.cert.subject_name()).unwrap();
        b.set_pubkey(&ca.key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(1_600_000_000).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(1_900_000_000).unwrap())
            .unwrap();
        b.sign(&ca.key, MessageDigest::sha256()).unwrap();
        let twin = b.build();
        assert_ne!(twin.to_der().unwrap(), ca.cert.to_der().unwrap());
        assert_eq!(issuer_id(&twin), issuer_id(&ca.cert));
        let other = crate::pki::testkit::identity(1024, "Issuing CA").unwrap();
        assert_ne!(issuer_id(&other.cert), issuer_id(&ca.cert));
    }

    #[test]
    fn the_path_up_stops_at_a_self_issued_certificate() {
        let root = crate::pki::testkit::identity(1024, "Root").unwrap();
        let own = |c: &X509| c.to_der().unwrap();
        let path = path_up(&root.cert, &[]);
        assert_eq!(
            path.iter().map(own).collect::<Vec<_>>(),
            vec![own(&root.cert)]
        );
    }
}

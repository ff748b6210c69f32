//! Finding and checking a recipient's certificates: the local directory
//! first, LDAP when nothing usable is there (answers cached for the
//! configured TTL), then each certificate's validity, key usage, chain and
//! revocation at the evaluation time. The result feeds the pure policy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::x509::X509;

use super::directory::{fingerprint, Directory, Entry, Source};
use super::oces::{self, CertInfo};
use super::revocation::{self, Checker};
use super::{validate, Keyring};
use crate::config::{Revocation, Settings};

/// LDAP answers by (server URL, address), with the instant they expire.
type LdapCache = HashMap<(String, String), (Instant, Vec<X509>)>;

/// What checking a candidate certificate found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fit for encryption (with a note, e.g. how revocation was checked).
    Usable(String),
    /// Not fit, for good.
    Refused(String),
    /// Not known now (revocation source down with hard-fail).
    Unknown(String),
}

/// A recipient certificate and its verdict.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub entry: Entry,
    pub verdict: Verdict,
}

/// Lookups shared across messages: LDAP answers and fetched CRLs.
#[derive(Debug, Default)]
pub struct Resolver {
    ldap_cache: Mutex<LdapCache>,
    revocation: Arc<Checker>,
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The certificates of `addr` with their verdicts at `at`, and the
    /// reason when a lookup failed for now. `wanted` says which
    /// certificates would serve; LDAP is asked only when no local one does.
    pub async fn candidates(
        &self,
        keys: &Arc<Keyring>,
        directory: &Arc<Directory>,
        settings: &Settings,
        addr: &str,
        at: i64,
        wanted: impl Fn(&CertInfo) -> bool,
    ) -> (Vec<Candidate>, Option<String>) {
        let local = directory.lookup(addr);
        for e in &local {
            crate::metrics::lookup(match e.source {
                Source::Harvested => "harvested",
                _ => "local",
            });
        }
        let mut out = self.evaluate(keys, directory, settings, local, at).await;
        let satisfied = out
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Usable(_)) && wanted(&c.entry.info));
        if satisfied || settings.certificates.ldap.is_empty() {
            return (out, None);
        }
        let mut error = None;
        for cfg in &settings.certificates.ldap {
            let certs = match self.ldap_cached(cfg, addr).await {
                Ok(c) => c,
                Err(e) => {
                    error = Some(e);
                    continue;
                }
            };
            let known: Vec<String> = out.iter().map(|c| c.entry.fingerprint.clone()).collect();
            let entries: Vec<Entry> = certs
                .into_iter()
                .filter_map(|cert| {
                    let info = oces::classify(&cert.to_der().ok()?).ok()?;
                    let fingerprint = fingerprint(&cert);
                    (!known.contains(&fingerprint)).then_some(Entry {
                        cert,
                        info,
                        source: Source::Ldap,
                        fingerprint,
                        capabilities: Vec::new(),
                        signed_at: None,
                    })
                })
                .collect();
            out.extend(self.evaluate(keys, directory, settings, entries, at).await);
        }
        let satisfied = out
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Usable(_)) && wanted(&c.entry.info));
        (out, if satisfied { None } else { error })
    }

    /// The certificates every configured LDAP server holds for `addr`
    /// (cached answers first); servers that cannot be asked are skipped
    /// (logged). For signatures that name a certificate they do not carry.
    pub async fn ldap_certificates(&self, settings: &Settings, addr: &str) -> Vec<X509> {
        let mut out = Vec::new();
        for cfg in &settings.certificates.ldap {
            if let Ok(certs) = self.ldap_cached(cfg, addr).await {
                out.extend(certs);
            }
        }
        out
    }

    /// One LDAP server's answer for `addr`, from the cache while fresh.
    async fn ldap_cached(
        &self,
        cfg: &crate::config::LdapSettings,
        addr: &str,
    ) -> Result<Vec<X509>, String> {
        let key = (cfg.url.clone(), addr.to_ascii_lowercase());
        let cached = self
            .ldap_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, certs)| certs.clone());
        if let Some(c) = cached {
            crate::metrics::lookup("ldap-cache");
            return Ok(c);
        }
        match super::ldap::lookup(cfg, addr).await {
            Ok(c) => {
                crate::metrics::lookup("ldap");
                self.ldap_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, (Instant::now() + cfg.cache_ttl, c.clone()));
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(event = "ldap-error", address = %addr, error = %e, "certificate lookup failed");
                Err(e.to_string())
            }
        }
    }

    /// Checks each entry (validity, key usage, chain, revocation) off the
    /// async threads.
    async fn evaluate(
        &self,
        keys: &Arc<Keyring>,
        directory: &Arc<Directory>,
        settings: &Settings,
        entries: Vec<Entry>,
        at: i64,
    ) -> Vec<Candidate> {
        if entries.is_empty() {
            return Vec::new();
        }
        let fallback = entries.clone();
        let keys = Arc::clone(keys);
        let directory = Arc::clone(directory);
        let checker = Arc::clone(&self.revocation);
        let mode = settings.trust.revocation;
        let timeout = settings.trust.revocation_timeout;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(at);
        let work = move || {
            let mut helpers = directory.authorities();
            for id in &keys.identities {
                helpers.extend(id.chain.iter().cloned());
            }
            entries
                .into_iter()
                .map(|entry| {
                    let verdict = verdict(
                        &entry,
                        &keys.anchors,
                        &helpers,
                        at,
                        now,
                        mode,
                        timeout,
                        &checker,
                    );
                    Candidate { entry, verdict }
                })
                .collect::<Vec<_>>()
        };
        tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
            // Never "no certificate" on an internal error: that could bounce
            // or send plain. Unknown defers the message instead.
            tracing::error!(error = %e, "certificate check failed");
            fallback
                .into_iter()
                .map(|entry| Candidate {
                    entry,
                    verdict: Verdict::Unknown("internal error while checking certificates".into()),
                })
                .collect()
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn verdict(
    entry: &Entry,
    anchors: &[X509],
    helpers: &[X509],
    at: i64,
    now: i64,
    mode: Revocation,
    timeout: Duration,
    checker: &Checker,
) -> Verdict {
    if let Err(why) = validate::basic(entry, at) {
        return Verdict::Refused(why);
    }
    let chain = match validate::chain(&entry.cert, anchors, helpers, at) {
        Ok(c) => c,
        Err(why) => return Verdict::Refused(why),
    };
    if mode == Revocation::Off {
        return Verdict::Usable("valid, chain trusted, revocation not checked (off)".into());
    }
    let issuer = chain.get(1).unwrap_or(&entry.cert);
    match checker.check(&entry.cert, issuer, anchors, now, timeout) {
        revocation::Status::Good(src) => {
            Verdict::Usable(format!("valid, chain trusted, not revoked ({src})"))
        }
        revocation::Status::NoSources => {
            Verdict::Usable("valid, chain trusted, no revocation source named".into())
        }
        revocation::Status::Revoked(why) => Verdict::Refused(why),
        revocation::Status::Unknown(why) => match mode {
            Revocation::HardFail => Verdict::Unknown(format!("revocation status unknown: {why}")),
            _ => Verdict::Usable(format!(
                "valid, chain trusted, revocation unknown, accepted (soft-fail): {why}"
            )),
        },
    }
}

//! Finding and checking a recipient's certificates: the local directory
//! first, LDAP over verified TLS when nothing usable is there (answers
//! cached for the configured TTL; plain `ldap://` servers are asked only
//! for signers' certificates, never for a certificate to encrypt to),
//! then each certificate's validity, key usage, chain and revocation at
//! the evaluation time (chain and revocation verdicts kept in the
//! snapshot's [`Checked`]). The result feeds the pure policy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::x509::X509;

pub use super::checked::Verdict;
use super::checked::{self, Checked};
use super::crl_history::CrlHistory;
use super::directory::{fingerprint, Directory, Entry, Source};
use super::oces;
use super::revocation::{self, Checker};
use super::{validate, Keyring};
use crate::config::{Revocation, Settings};

/// LDAP answers by what was asked and how, with the instant they expire.
type LdapCache = HashMap<LdapKey, (Instant, Vec<X509>)>;

/// Most LDAP answers kept. Outside senders choose the From addresses whose
/// signers are looked up, so the cache must not grow with them.
const LDAP_CACHE_MAX: usize = 10_000;

/// Makes room for one more answer in `cache` at `now`: expired answers go
/// first; when the cache is still full, all of them (cheap, and a full
/// cache of live answers means lookups for many addresses at once).
fn make_room(cache: &mut LdapCache, now: Instant, max: usize) {
    if cache.len() < max {
        return;
    }
    cache.retain(|_, (until, _)| *until > now);
    if cache.len() >= max {
        cache.clear();
    }
}

/// What an LDAP answer depends on: the server, everything in its settings
/// that shapes the search or says whether the answer is authenticated
/// (StartTLS, the CA, base, filter, attribute), and the address. An
/// answer fetched under other settings (plain `ldap://` before StartTLS
/// was turned on, another base) is never taken for one under these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LdapKey {
    url: String,
    starttls: bool,
    tls_ca: Option<std::path::PathBuf>,
    base: String,
    filter: String,
    attribute: String,
    address: String,
}

impl LdapKey {
    fn new(cfg: &crate::config::LdapSettings, addr: &str) -> Self {
        let crate::config::LdapSettings {
            url,
            base,
            filter,
            attribute,
            timeout: _,
            cache_ttl: _,
            starttls,
            tls_ca,
        } = cfg;
        Self {
            url: url.clone(),
            starttls: *starttls,
            tls_ca: tls_ca.clone(),
            base: base.clone(),
            filter: filter.clone(),
            attribute: attribute.clone(),
            address: crate::mail::address::key(addr),
        }
    }
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

    /// A resolver whose CRLs are checked against `history` (the newest
    /// seen from each point).
    pub fn with_history(history: Arc<CrlHistory>) -> Self {
        Self {
            revocation: Arc::new(Checker::with_history(history)),
            ..Self::default()
        }
    }

    /// Forgets every LDAP answer and kept CRL (a reload: a CA file may
    /// have changed under the same path, a server been taken out, a
    /// revocation be known to the operator that kept CRLs do not show).
    pub fn forget_answers(&self) {
        self.ldap_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.revocation.forget();
    }

    /// The certificates of `addr` with their verdicts at `at`, and the
    /// reason when a lookup failed for now. `wanted` says which
    /// certificates would serve; LDAP is asked when no folder certificate
    /// does, and only the servers reached over verified TLS: an
    /// unauthenticated answer does not bind a certificate to its owner.
    /// An authenticated answer that serves outranks harvested
    /// certificates, which are then left out: anyone who gets a
    /// CA-issued certificate naming the address can sign mail that
    /// writes it as sender (review 24).
    #[allow(clippy::too_many_arguments)]
    pub async fn candidates(
        &self,
        keys: &Arc<Keyring>,
        directory: &Arc<Directory>,
        checked: &Arc<Checked>,
        settings: &Settings,
        addr: &str,
        at: i64,
        wanted: impl Fn(&Entry) -> bool,
    ) -> (Vec<Candidate>, Option<String>) {
        let mut local = directory.lookup(addr);
        // Certificates harvested for the organisation's own addresses
        // before they were refused (an older version kept them) bind
        // nothing: anyone outside could have written the address.
        if settings.is_own_address(addr) {
            local.retain(|e| e.source != Source::Harvested);
        }
        for e in &local {
            crate::metrics::lookup(match e.source {
                Source::Harvested => "harvested",
                _ => "local",
            });
        }
        // The directory keeps harvested certificates only for addresses
        // no folder holds one for.
        let harvested = local.iter().any(|e| e.source == Source::Harvested);
        let mut out = self
            .evaluate(keys, directory, checked, settings, local, at)
            .await;
        let serves = |c: &Candidate| matches!(c.verdict, Verdict::Usable(_)) && wanted(&c.entry);
        let satisfied = out.iter().any(serves);
        let ldap: Vec<&crate::config::LdapSettings> = settings
            .certificates
            .ldap
            .iter()
            .filter(|c| c.authenticated())
            .collect();
        if (satisfied && !harvested) || ldap.is_empty() {
            return (out, None);
        }
        let mut error = None;
        let mut answered: Vec<Candidate> = Vec::new();
        for cfg in ldap {
            let certs = match self.ldap_cached(cfg, addr).await {
                Ok(c) => c,
                Err(e) => {
                    error = Some(e);
                    continue;
                }
            };
            let known: Vec<String> = answered
                .iter()
                .map(|c| c.entry.fingerprint.clone())
                .collect();
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
            answered.extend(
                self.evaluate(keys, directory, checked, settings, entries, at)
                    .await,
            );
        }
        // A served answer from the directory leaves harvested
        // certificates out (the same certificate stays, as LDAP's).
        if answered.iter().any(serves) {
            out.retain(|c| c.entry.source != Source::Harvested);
        }
        let known: Vec<String> = out.iter().map(|c| c.entry.fingerprint.clone()).collect();
        out.extend(
            answered
                .into_iter()
                .filter(|c| !known.contains(&c.entry.fingerprint)),
        );
        let satisfied = out.iter().any(serves);
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

    /// What one configured LDAP server holds for `addr` (its cached answer
    /// first), or why it could not be asked.
    pub async fn ldap_certificates_at(
        &self,
        cfg: &crate::config::LdapSettings,
        addr: &str,
    ) -> Result<Vec<X509>, String> {
        self.ldap_cached(cfg, addr).await
    }

    /// One LDAP server's answer for `addr`, from the cache while fresh.
    async fn ldap_cached(
        &self,
        cfg: &crate::config::LdapSettings,
        addr: &str,
    ) -> Result<Vec<X509>, String> {
        let key = LdapKey::new(cfg, addr);
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
                let now = Instant::now();
                let mut cache = self.ldap_cache.lock().unwrap_or_else(|p| p.into_inner());
                make_room(&mut cache, now, LDAP_CACHE_MAX);
                cache.insert(key, (now + cfg.cache_ttl, c.clone()));
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(event = "ldap-error", address = %addr, error = %e, "certificate lookup failed");
                Err(e.to_string())
            }
        }
    }

    /// Checks each entry (validity, key usage, chain, revocation) off the
    /// async threads; chain and revocation verdicts come from `checked`
    /// while they hold there. When every entry's verdict is kept (or its
    /// dates or key usage refuse it) the answer needs no chain work and is
    /// given here, without a trip to a blocking thread.
    async fn evaluate(
        &self,
        keys: &Arc<Keyring>,
        directory: &Arc<Directory>,
        checked: &Arc<Checked>,
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
        if let Some(known) = kept_verdicts(&entries, checked, self.revocation.generation(), at, now)
        {
            return known;
        }
        let checked = Arc::clone(checked);
        let work = move || {
            // Read before checking: a CRL fetched meanwhile makes what is
            // kept now stale rather than fresh.
            let generation = checker.generation();
            let mut helpers: Option<Vec<X509>> = None;
            entries
                .into_iter()
                .map(|entry| {
                    if let Some(verdict) = known_verdict(&entry, &checked, generation, at, now) {
                        return Candidate { entry, verdict };
                    }
                    let helpers = helpers.get_or_insert_with(|| {
                        let mut h = directory.authorities();
                        for id in &keys.identities {
                            h.extend(id.chain.iter().cloned());
                        }
                        h
                    });
                    let (verdict, keep) = verdict(
                        &entry,
                        &keys.anchors,
                        helpers,
                        at,
                        now,
                        mode,
                        timeout,
                        &checker,
                    );
                    if let Some((window, expires)) = keep {
                        checked.put(
                            &entry.fingerprint,
                            verdict.clone(),
                            generation,
                            window,
                            expires,
                        );
                    }
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

/// Every entry's verdict without chain work: its dates or key usage
/// refuse it, or `checked` keeps one for it (formed with revocation data
/// of `generation`); `None` when any entry needs its chain checked.
fn kept_verdicts(
    entries: &[Entry],
    checked: &Checked,
    generation: u64,
    at: i64,
    now: i64,
) -> Option<Vec<Candidate>> {
    entries
        .iter()
        .map(|entry| {
            known_verdict(entry, checked, generation, at, now).map(|verdict| Candidate {
                entry: entry.clone(),
                verdict,
            })
        })
        .collect()
}

/// An entry's verdict without chain work: refused by its dates or key
/// usage, or kept in `checked`; `None` when its chain must be checked.
fn known_verdict(
    entry: &Entry,
    checked: &Checked,
    generation: u64,
    at: i64,
    now: i64,
) -> Option<Verdict> {
    match validate::basic(entry, at) {
        Err(why) => Some(Verdict::Refused(why)),
        Ok(()) => checked.get(&entry.fingerprint, generation, at, now),
    }
}

/// How long a verdict may be kept: the evaluation times its chain holds
/// for, and until when.
type Keep = Option<((i64, i64), i64)>;

/// The verdict on `entry` (its validity and key usage already checked),
/// and how long it may be kept; verdicts that depend on a source that did
/// not answer with hard-fail, and chains that do not verify, are not kept.
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
) -> (Verdict, Keep) {
    let chain = match validate::chain(&entry.cert, anchors, helpers, at) {
        Ok(c) => c,
        Err(why) => return (Verdict::Refused(why), None),
    };
    // The chain holds while every certificate in it is valid.
    let mut window = (i64::MIN, i64::MAX);
    for c in &chain {
        match validate::period(c) {
            Some((from, until)) => window = (window.0.max(from), window.1.min(until)),
            None => window = (1, 0),
        }
    }
    let keep = |secs: i64| (window.0 <= window.1).then_some((window, now.saturating_add(secs)));
    if mode == Revocation::Off {
        return (
            Verdict::Usable("valid, chain trusted, revocation not checked (off)".into()),
            keep(checked::KEEP),
        );
    }
    // Every link up to the anchor: a revoked issuing CA revokes the leaf.
    match checker.check(
        &entry.cert,
        chain.get(1..).unwrap_or(&[]),
        anchors,
        now,
        timeout,
    ) {
        revocation::Status::Good(src) => (
            Verdict::Usable(format!("valid, chain trusted, not revoked ({src})")),
            keep(checked::KEEP),
        ),
        revocation::Status::NoSources => (
            Verdict::Usable("valid, chain trusted, no revocation source named".into()),
            keep(checked::KEEP),
        ),
        revocation::Status::Revoked(why) => (Verdict::Refused(why), keep(checked::KEEP)),
        revocation::Status::Unknown(why) => match mode {
            Revocation::HardFail => (
                Verdict::Unknown(format!("revocation status unknown: {why}")),
                None,
            ),
            _ => (
                Verdict::Usable(format!(
                    "valid, chain trusted, revocation unknown, accepted (soft-fail): {why}"
                )),
                keep(checked::KEEP_UNKNOWN),
            ),
        },
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn kept_verdicts_answer_without_chain_work_only_when_every_entry_has_one() {
        use crate::pki::directory::Source;
        let id = crate::pki::testkit::identity(1024, "Recipient").unwrap();
        let entry = |fingerprint: &str| Entry {
            cert: id.cert.clone(),
            info: id.info.clone(),
            source: Source::Directory,
            fingerprint: fingerprint.into(),
            capabilities: Vec::new(),
            signed_at: None,
        };
        let at = id.info.not_before + 60;
        let checked = Checked::new();
        let usable = Verdict::Usable("valid, chain trusted".into());
        checked.put(
            "kept",
            usable.clone(),
            3,
            (id.info.not_before, id.info.not_after),
            at + 3600,
        );
        let got = kept_verdicts(&[entry("kept")], &checked, 3, at, at).unwrap();
        assert_eq!(got[0].verdict, usable);
        // One entry without a kept verdict: the chain must be checked.
        assert!(kept_verdicts(&[entry("kept"), entry("new")], &checked, 3, at, at).is_none());
        // Revocation data moved on: not kept any more.
        assert!(kept_verdicts(&[entry("kept")], &checked, 4, at, at).is_none());
        // Refused by its dates without any chain work, kept verdict or not.
        let late = id.info.not_after + 1;
        let got = kept_verdicts(&[entry("new")], &checked, 3, late, at).unwrap();
        assert!(matches!(&got[0].verdict, Verdict::Refused(why) if why.starts_with("expired")));
    }

    #[test]
    fn the_ldap_cache_stays_bounded() {
        let cfg = crate::config::load::test_settings(
            "[[certificates.ldap]]\nurl = \"ldaps://d.example\"\nbase = \"c=DK\"\n",
        )
        .certificates
        .ldap[0]
            .clone();
        let now = Instant::now();
        let mut cache = LdapCache::new();
        let key = |i: usize| LdapKey::new(&cfg, &format!("a{i}@x.dk"));
        for i in 0..3 {
            make_room(&mut cache, now, 4);
            cache.insert(key(i), (now + Duration::from_secs(60), Vec::new()));
        }
        make_room(&mut cache, now, 4);
        cache.insert(key(3), (now - Duration::from_secs(1), Vec::new()));
        assert_eq!(cache.len(), 4);
        // Full: the expired answer goes, the live ones stay.
        make_room(&mut cache, now, 4);
        assert_eq!(cache.len(), 3);
        assert!(cache.contains_key(&key(0)) && !cache.contains_key(&key(3)));
        // Full of live answers: emptied, never over the bound.
        cache.insert(key(4), (now + Duration::from_secs(60), Vec::new()));
        make_room(&mut cache, now, 4);
        assert!(cache.is_empty());
    }

    use super::*;
    use crate::config::LdapSettings;

    fn plain() -> LdapSettings {
        LdapSettings {
            url: "ldap://127.0.0.1:1".into(),
            base: "c=DK".into(),
            filter: "(mail={address})".into(),
            attribute: "userCertificate;binary".into(),
            timeout: Duration::from_millis(500),
            cache_ttl: Duration::from_secs(3600),
            starttls: false,
            tls_ca: None,
        }
    }

    #[test]
    fn every_setting_that_shapes_an_answer_is_in_its_key() {
        let a = plain();
        let changed = [
            LdapSettings {
                starttls: true,
                ..plain()
            },
            LdapSettings {
                tls_ca: Some("/etc/ldap-ca.pem".into()),
                ..plain()
            },
            LdapSettings {
                base: "o=Other,c=DK".into(),
                ..plain()
            },
            LdapSettings {
                filter: "(cn={address})".into(),
                ..plain()
            },
            LdapSettings {
                attribute: "userSMIMECertificate".into(),
                ..plain()
            },
            LdapSettings {
                url: "ldap://127.0.0.1:2".into(),
                ..plain()
            },
        ];
        for b in &changed {
            assert_ne!(
                LdapKey::new(&a, "x@y.dk"),
                LdapKey::new(b, "x@y.dk"),
                "{b:?}"
            );
        }
        // Neither how long to wait nor how long to keep changes an answer.
        let same = LdapSettings {
            timeout: Duration::from_secs(9),
            cache_ttl: Duration::from_secs(1),
            ..plain()
        };
        assert_eq!(LdapKey::new(&a, "X@Y.dk"), LdapKey::new(&same, "x@y.dk"));
    }

    /// An answer kept under plain `ldap://` is not the answer once
    /// StartTLS is on for the same URL (the server is asked, and here
    /// cannot be reached); a reload forgets answers altogether.
    #[tokio::test]
    async fn an_answer_is_used_only_under_the_settings_it_was_fetched_with() {
        let r = Resolver::new();
        let before = plain();
        r.ldap_cache.lock().unwrap().insert(
            LdapKey::new(&before, "x@y.dk"),
            (Instant::now() + Duration::from_secs(3600), Vec::new()),
        );
        assert!(r.ldap_cached(&before, "x@y.dk").await.is_ok());
        let after = LdapSettings {
            starttls: true,
            ..plain()
        };
        assert!(r.ldap_cached(&after, "x@y.dk").await.is_err());
        r.forget_answers();
        assert!(r.ldap_cached(&before, "x@y.dk").await.is_err());
    }

    #[tokio::test]
    async fn a_harvested_certificate_never_answers_for_an_own_address() {
        // As an older version might have kept it: one certificate
        // harvested for an internal address and for a counterparty.
        let id = crate::pki::testkit::identity(1024, "Harvested").unwrap();
        let directory = Arc::new(Directory::load(&[], None).unwrap());
        for addr in ["archive@example-law.dk", "post@domstol.dk"] {
            assert!(directory.harvest(&id.cert, addr, &[], None).unwrap());
        }
        let settings = crate::config::load::test_settings("");
        let (keys, checked) = (Arc::new(Keyring::default()), Arc::new(Checked::new()));
        let r = Resolver::new();
        let found = |addr: &'static str| {
            let (r, keys, directory, checked, settings) =
                (&r, &keys, &directory, &checked, &settings);
            async move {
                r.candidates(keys, directory, checked, settings, addr, 0, |_| true)
                    .await
                    .0
                    .len()
            }
        };
        assert_eq!(found("archive@example-law.dk").await, 0);
        assert_eq!(found("post@domstol.dk").await, 1, "control");
    }
}

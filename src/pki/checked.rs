//! Verdicts of recipient certificates already checked (chain to the trust
//! anchors and revocation), so a certificate is not verified again for
//! every message and attempt. A verdict is kept by the certificate's
//! fingerprint together with the revocation data's generation it was
//! formed with, and holds only
//! - while that generation is current (a CRL fetched since makes it stale),
//! - for evaluation times inside the validity of every certificate in the
//!   chain it was formed with,
//! - until it expires (an hour; five minutes when no revocation source
//!   answered), like the answers kept for signers.
//!
//! The cache belongs to one [`crate::snapshot::Snapshot`]: a reload (new
//! anchors, settings or folders) starts with an empty one.
//!
//! Signers' chains are kept the same way ([`SignerChains`], held by the
//! [`super::Keyring`] whose anchors they were checked against): by the
//! fingerprints of the signer certificates and of the certificates the
//! signature carried, with the signers' revocation data's generation,
//! within the validity of the chain that was built, an hour at most. Only
//! chains found trusted are kept: an expired, untrusted or not yet valid
//! signer is verified again every time and reads as such.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use openssl::x509::X509;

use super::revocation::Checker;

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

/// How long a verdict is kept (seconds).
pub const KEEP: i64 = 3600;
/// How long a verdict formed without a revocation answer is kept.
pub const KEEP_UNKNOWN: i64 = 300;
/// Certificates remembered at most; beyond, the cache starts again.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone)]
struct Kept {
    verdict: Verdict,
    generation: u64,
    /// Evaluation times the chain holds for (both ends included).
    window: (i64, i64),
    /// Kept until this time (Unix seconds, the clock of the check).
    expires: i64,
}

/// The verdicts of one snapshot.
#[derive(Debug, Default)]
pub struct Checked {
    kept: Mutex<HashMap<String, Kept>>,
    hits: AtomicU64,
}

impl Checked {
    pub fn new() -> Self {
        Self::default()
    }

    /// The verdict kept for `fingerprint`, if it holds for evaluation time
    /// `at`, with revocation data of `generation`, at clock time `now`.
    pub fn get(&self, fingerprint: &str, generation: u64, at: i64, now: i64) -> Option<Verdict> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let k = kept.get(fingerprint)?;
        let holds =
            k.generation == generation && k.window.0 <= at && at <= k.window.1 && now < k.expires;
        if holds {
            self.hits.fetch_add(1, Ordering::Relaxed);
            Some(k.verdict.clone())
        } else {
            None
        }
    }

    /// Keeps `verdict` for `fingerprint`: formed with revocation data of
    /// `generation`, holding for evaluation times in `window`, until
    /// `expires`.
    pub fn put(
        &self,
        fingerprint: &str,
        verdict: Verdict,
        generation: u64,
        window: (i64, i64),
        expires: i64,
    ) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MAX_ENTRIES && !kept.contains_key(fingerprint) {
            kept.clear();
        }
        kept.insert(
            fingerprint.to_string(),
            Kept {
                verdict,
                generation,
                window,
                expires,
            },
        );
    }

    /// How many verdicts were served from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// A signer chain found trusted: with which revocation data, for which
/// evaluation times, until when, and the certificates OpenSSL verified
/// above each signer (what revocation is checked along).
#[derive(Debug, Clone)]
struct KeptChain {
    generation: u64,
    window: (i64, i64),
    expires: i64,
    paths: Paths,
}

/// For each signer, the certificates of its verified chain above it,
/// nearest first (the signer itself when it is an anchor).
pub type Paths = Arc<Vec<Vec<X509>>>;

/// The signer chains found trusted under one keyring's anchors.
#[derive(Debug, Default)]
pub struct SignerChains {
    kept: Mutex<HashMap<String, KeptChain>>,
    hits: AtomicU64,
    /// Where the signers' revocation data's generation is read (set when
    /// the keyring is put in force; generation 0 until then).
    revocation: OnceLock<Arc<Checker>>,
}

impl SignerChains {
    /// Reads the revocation data's generation from `checker` from now on
    /// (the first call wins: one keyring, one daemon).
    pub fn follow(&self, checker: Arc<Checker>) {
        let _ = self.revocation.set(checker);
    }

    /// The signers' revocation data's generation now.
    pub fn generation(&self) -> u64 {
        self.revocation.get().map_or(0, |c| c.generation())
    }

    /// The verified paths of the chain kept under `key`, when it holds for
    /// evaluation time `at` with revocation data of `generation`, at clock
    /// time `now`.
    pub fn trusted(&self, key: &str, generation: u64, at: i64, now: i64) -> Option<Paths> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let holds = kept.get(key).filter(|k| {
            k.generation == generation && k.window.0 <= at && at <= k.window.1 && now < k.expires
        });
        if holds.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        holds.map(|k| Arc::clone(&k.paths))
    }

    /// Keeps the chain of `key`, found trusted with revocation data of
    /// `generation`, for evaluation times in `window`, until `expires`,
    /// with its verified `paths`.
    pub fn keep(&self, key: &str, generation: u64, window: (i64, i64), expires: i64, paths: Paths) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MAX_ENTRIES && !kept.contains_key(key) {
            kept.clear();
        }
        kept.insert(
            key.to_string(),
            KeptChain {
                generation,
                window,
                expires,
                paths,
            },
        );
    }

    /// How many chains were served from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// The key of a signer chain: the fingerprints of the signer certificates
/// (in the signature's order), then those of the certificates the
/// signature carried (in any order).
pub fn chain_key(signers: &[String], carried: &[String]) -> String {
    let mut carried: Vec<&str> = carried.iter().map(String::as_str).collect();
    carried.sort_unstable();
    carried.dedup();
    let mut key = String::with_capacity(65 * (signers.len() + carried.len()) + 1);
    for f in signers {
        key.push_str(f);
        key.push(',');
    }
    key.push('/');
    for f in carried {
        key.push_str(f);
        key.push(',');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable() -> Verdict {
        Verdict::Usable("valid, chain trusted".into())
    }

    #[test]
    fn a_kept_verdict_holds_only_for_its_generation_window_and_time() {
        let c = Checked::new();
        c.put("aa", usable(), 7, (100, 200), 1000);
        assert_eq!(c.get("aa", 7, 150, 500), Some(usable()));
        assert_eq!(c.hits(), 1);
        // A CRL fetched since: the revocation data moved on.
        assert_eq!(c.get("aa", 8, 150, 500), None);
        // Evaluated outside the chain's validity (explain --at, or later).
        assert_eq!(c.get("aa", 7, 99, 500), None);
        assert_eq!(c.get("aa", 7, 201, 500), None);
        assert_eq!(c.get("aa", 7, 200, 500), Some(usable()));
        // Expired.
        assert_eq!(c.get("aa", 7, 150, 1000), None);
        // Another certificate.
        assert_eq!(c.get("bb", 7, 150, 500), None);
        assert_eq!(c.hits(), 2);
        // Checked again with new data: the new verdict replaces the old.
        let revoked = Verdict::Refused("revoked (CRL http://x)".into());
        c.put("aa", revoked.clone(), 8, (100, 200), 1000);
        assert_eq!(c.get("aa", 8, 150, 500), Some(revoked));
        assert_eq!(c.get("aa", 7, 150, 500), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = Checked::new();
        for i in 0..MAX_ENTRIES + 5 {
            c.put(&format!("{i:x}"), usable(), 0, (0, 10), 10);
        }
        assert!(c.kept.lock().unwrap().len() <= MAX_ENTRIES);
        let last = format!("{:x}", MAX_ENTRIES + 4);
        assert_eq!(c.get(&last, 0, 5, 5), Some(usable()));
    }

    #[test]
    fn a_kept_signer_chain_holds_only_for_its_generation_window_and_time() {
        let c = SignerChains::default();
        let key = chain_key(&["aa".into()], &["cc".into(), "bb".into()]);
        // Positive control first: nothing kept, nothing served.
        assert!(c.trusted(&key, 0, 150, 500).is_none());
        c.keep(&key, 0, (100, 200), 1000, Paths::default());
        assert!(c.trusted(&key, 0, 150, 500).is_some(), "hit");
        assert_eq!(c.hits(), 1);
        // A CRL fetched since.
        assert!(c.trusted(&key, 1, 150, 500).is_none(), "generation moved");
        // Outside the chain's validity (the signer expired, or not yet valid).
        assert!(c.trusted(&key, 0, 201, 500).is_none());
        assert!(c.trusted(&key, 0, 99, 500).is_none());
        // Kept too long.
        assert!(c.trusted(&key, 0, 150, 1000).is_none());
        // The same signer with other certificates carried is another chain;
        // the order they were carried in is not.
        assert!(c
            .trusted(&chain_key(&["aa".into()], &["bb".into()]), 0, 150, 500)
            .is_none());
        assert!(c
            .trusted(
                &chain_key(&["aa".into()], &["bb".into(), "cc".into()]),
                0,
                150,
                500
            )
            .is_some());
        assert_eq!(c.hits(), 2);
    }

    #[test]
    fn signer_chains_follow_the_revocation_data_they_are_given() {
        let c = SignerChains::default();
        assert_eq!(c.generation(), 0);
        let checker = Arc::new(Checker::default());
        c.follow(Arc::clone(&checker));
        assert_eq!(c.generation(), checker.generation());
    }
}

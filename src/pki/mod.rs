//! Keys and certificates: the organisation's identities (private keys of
//! both generations, expired and revoked ones included), trust anchors,
//! OCES classification, recipients' certificates (directory, harvest,
//! LDAP) and their validation (chain, CRL, OCSP).

pub mod directory;
pub mod identity;
pub mod ldap;
pub mod oces;
pub mod provider;
pub mod resolve;
pub mod revocation;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod trust;
pub mod validate;

use openssl::x509::X509;

pub use identity::Identity;

use crate::config::Settings;

/// The organisation's keys and the trust anchors: immutable, loaded with
/// the configuration and swapped with it in one snapshot. What changes
/// while the daemon runs (harvested certificates, revocation found later)
/// lives in the shared services [`CertStore`] and
/// [`revocation::RevokedIdentities`].
#[derive(Debug, Default)]
pub struct Keyring {
    pub identities: Vec<Identity>,
    pub anchors: Vec<X509>,
}

/// Recipients' certificates: the operator's folders, harvested signer
/// certificates and LDAP answers. A service shared by every delivery: it
/// grows as certificates are harvested, and is replaced as a whole when
/// the configuration is reloaded.
#[derive(Debug, Default)]
pub struct CertStore {
    current: arc_swap::ArcSwap<directory::Directory>,
}

impl CertStore {
    /// Loads the folders `settings` name and the certificates harvested
    /// earlier (kept under the spool folder).
    pub fn load(settings: &Settings) -> Result<Self, directory::DirectoryError> {
        Ok(Self {
            current: arc_swap::ArcSwap::from_pointee(Self::read(settings)?),
        })
    }

    fn read(settings: &Settings) -> Result<directory::Directory, directory::DirectoryError> {
        let harvest = settings.spool.dir.join("harvested");
        directory::Directory::load(&settings.certificates.dirs, Some(&harvest))
    }

    /// Reads the folders again (after a reload of the configuration).
    pub fn reload(&self, settings: &Settings) -> Result<(), directory::DirectoryError> {
        self.current
            .store(std::sync::Arc::new(Self::read(settings)?));
        Ok(())
    }

    /// The directory in force.
    pub fn directory(&self) -> std::sync::Arc<directory::Directory> {
        self.current.load_full()
    }
}

/// What went wrong loading keys and anchors; every problem is listed.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct KeyringError(pub Vec<String>);

impl Keyring {
    /// Loads the identities and trust anchors `settings` name; every
    /// problem is reported, not only the first.
    pub fn load(settings: &Settings) -> Result<Self, KeyringError> {
        let mut problems = Vec::new();
        let mut identities = Vec::new();
        for (i, cfg) in settings.identities.iter().enumerate() {
            match identity::load(i, cfg, settings.smime.strict_permissions) {
                Ok(id) => identities.push(id),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let anchors = match trust::load_anchors(&settings.trust.anchors) {
            Ok(a) => a,
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        if problems.is_empty() {
            Ok(Self {
                identities,
                anchors,
            })
        } else {
            Err(KeyringError(problems))
        }
    }

    /// Identities to try for mail to `rcpt`: those serving it first, then
    /// the organisation-wide ones.
    pub fn candidates<'a>(&'a self, rcpt: &'a str) -> impl Iterator<Item = &'a Identity> + 'a {
        self.identities
            .iter()
            .filter(move |i| i.serves(rcpt))
            .chain(self.identities.iter().filter(|i| i.is_organisation_wide()))
    }

    /// Positions in `identities` of the candidates for `rcpt`, in order.
    pub fn candidate_indices(&self, rcpt: &str) -> Vec<usize> {
        let serving = (0..self.identities.len()).filter(|&i| self.identities[i].serves(rcpt));
        let wide =
            (0..self.identities.len()).filter(|&i| self.identities[i].is_organisation_wide());
        serving.chain(wide).collect()
    }

    /// The current OCES3 identity for `rcpt` (valid at `now`, may receive
    /// encrypted mail), newest first: what re-encryption targets.
    pub fn current_oces3<'a>(&'a self, rcpt: &'a str, now: i64) -> Option<&'a Identity> {
        let mut best: Option<&Identity> = None;
        for id in self.candidates(rcpt) {
            let ok = id.info.generation == oces::Generation::Oces3
                && id.info.valid_at(now)
                && id.info.can_encrypt();
            if ok && best.is_none_or(|b| b.info.not_after < id.info.not_after) {
                best = Some(id);
            }
        }
        best
    }
}

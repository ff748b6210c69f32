//! The configuration in force, as one value: settings (rules included),
//! the organisation's keys and the recipients' certificate directory,
//! loaded and validated together and swapped in one slot, so a delivery
//! never pairs new keys or certificates with old settings. The directory
//! grows by harvest while it is in force (its own lock; harvested
//! certificates are also written to disk and read again by the next
//! snapshot). Next to the slot, the services that outlive a reload:
//! identities found revoked, the lookup caches and signers' revocation
//! answers.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{self, ConfigError, Settings, SettingsSource};
use crate::pki::checked::Checked;
use crate::pki::crl_history::CrlHistory;
use crate::pki::directory::{Directory, DirectoryError};
use crate::pki::resolve::Resolver;
use crate::pki::revocation::RevokedIdentities;
use crate::pki::signer::SignerChecks;
use crate::pki::{Keyring, KeyringError};

/// Settings, keys and recipients' certificates that belong together.
#[derive(Debug)]
pub struct Snapshot {
    pub settings: Arc<Settings>,
    pub keys: Arc<Keyring>,
    pub certs: Arc<Directory>,
    /// Chain and revocation verdicts on recipients' certificates, kept
    /// while this snapshot is in force (a reload starts afresh).
    pub checked: Arc<Checked>,
}

/// Why a configuration could not be taken into use.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Keys(#[from] KeyringError),
    #[error("{0}")]
    Certificates(#[from] DirectoryError),
}

impl Snapshot {
    /// Loads and checks the configuration at `path`, the keys and the
    /// certificate folders it names.
    pub fn load(path: &Path) -> Result<Self, SnapshotError> {
        Self::from_settings(config::load(path)?)
    }

    /// The keys and certificate folders `settings` names, with them.
    pub fn from_settings(settings: Settings) -> Result<Self, SnapshotError> {
        let keys = Keyring::load(&settings)?;
        let certs = Directory::for_settings(&settings)?;
        Ok(Self {
            settings: Arc::new(settings),
            keys: Arc::new(keys),
            certs: Arc::new(certs),
            checked: Arc::new(Checked::new()),
        })
    }
}

/// The slot holding the snapshot in force, and the shared services.
#[derive(Debug)]
pub struct Live {
    slot: ArcSwap<Snapshot>,
    pub revoked: RevokedIdentities,
    pub resolver: Resolver,
    /// Revocation answers for the signers of incoming mail.
    pub signers: SignerChecks,
    /// The newest CRL seen from each distribution point.
    pub crl_history: Arc<CrlHistory>,
}

impl Live {
    /// The daemon's: the newest CRL seen from each point outlives
    /// reloads and, written to the spool, restarts.
    pub fn new(snapshot: Snapshot) -> Self {
        let history = Arc::new(CrlHistory::of_spool(&snapshot.settings.spool.dir));
        Self::with_history(snapshot, history)
    }

    /// An operator command's: it reads the daemon's CRL history and
    /// writes nothing to it.
    pub fn for_command(snapshot: Snapshot) -> Self {
        let history = Arc::new(CrlHistory::read_from_spool(&snapshot.settings.spool.dir));
        Self::with_history(snapshot, history)
    }

    /// Recipients' and signers' revocation checks share `history`.
    fn with_history(snapshot: Snapshot, history: Arc<CrlHistory>) -> Self {
        let signers = SignerChecks::with_history(Arc::clone(&history));
        snapshot.keys.signer_chains.follow(signers.checker());
        Self {
            slot: ArcSwap::from_pointee(snapshot),
            revoked: RevokedIdentities::default(),
            resolver: Resolver::with_history(Arc::clone(&history)),
            signers,
            crl_history: history,
        }
    }

    /// The snapshot in force now; a caller keeps it for a whole job.
    pub fn current(&self) -> Arc<Snapshot> {
        self.slot.load_full()
    }

    /// Puts `snapshot` in force, all of it at once. Signers' revocation
    /// answers and LDAP answers are asked again under it (its anchors and
    /// directory settings may differ); the signer chains its keyring
    /// keeps (empty: a new keyring) follow the signers' revocation data.
    pub fn replace(&self, snapshot: Snapshot) {
        snapshot.keys.signer_chains.follow(self.signers.checker());
        self.slot.store(Arc::new(snapshot));
        self.signers.clear();
        self.resolver.forget_answers();
    }
}

impl SettingsSource for Live {
    fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.slot.load().settings)
    }
}

//! The configuration in force, as one value: settings (rules included) and
//! the organisation's keys, loaded and validated together and swapped in
//! one slot, so a delivery never pairs new keys with old settings. Next to
//! it, the services that change while the daemon runs and are shared by
//! every delivery: recipients' certificates (harvest, reload), identities
//! found revoked, and the lookup caches.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{self, ConfigError, Settings, SettingsSource};
use crate::pki::directory::DirectoryError;
use crate::pki::resolve::Resolver;
use crate::pki::revocation::RevokedIdentities;
use crate::pki::{CertStore, Keyring, KeyringError};

/// Settings and keys that belong together.
#[derive(Debug)]
pub struct Snapshot {
    pub settings: Arc<Settings>,
    pub keys: Arc<Keyring>,
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
    /// Loads and checks the configuration at `path` and the keys it names.
    pub fn load(path: &Path) -> Result<Self, SnapshotError> {
        let settings = config::load(path)?;
        let keys = Keyring::load(&settings)?;
        Ok(Self {
            settings: Arc::new(settings),
            keys: Arc::new(keys),
        })
    }
}

/// The slot holding the snapshot in force, and the shared services.
#[derive(Debug)]
pub struct Live {
    slot: ArcSwap<Snapshot>,
    pub certs: CertStore,
    pub revoked: RevokedIdentities,
    pub resolver: Resolver,
}

impl Live {
    /// Starts from `snapshot`, reading the certificate folders it names.
    pub fn new(snapshot: Snapshot) -> Result<Self, SnapshotError> {
        let certs = CertStore::load(&snapshot.settings)?;
        Ok(Self {
            slot: ArcSwap::from_pointee(snapshot),
            certs,
            revoked: RevokedIdentities::default(),
            resolver: Resolver::new(),
        })
    }

    /// The snapshot in force now; a caller keeps it for a whole job.
    pub fn current(&self) -> Arc<Snapshot> {
        self.slot.load_full()
    }

    /// Puts `snapshot` in force and reads the certificate folders it names.
    /// When those cannot be read, nothing changes.
    pub fn replace(&self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        self.certs.reload(&snapshot.settings)?;
        self.slot.store(Arc::new(snapshot));
        Ok(())
    }
}

impl SettingsSource for Live {
    fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.slot.load().settings)
    }
}

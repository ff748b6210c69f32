//! OpenSSL's `legacy` provider, which the Danish CAs' PKCS#12 files need
//! (3DES and RC2-40 bags, SHA-1 MAC). Loaded once, kept for the process.

use std::sync::OnceLock;

use openssl::provider::Provider;

/// OpenSSL's legacy provider could not be loaded (what OpenSSL said).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot load OpenSSL's legacy provider (needed for OCES PKCS#12 files): {0}")]
pub struct LegacyProviderError(String);

static LEGACY: OnceLock<Result<Provider, LegacyProviderError>> = OnceLock::new();

/// Loads the legacy provider (the default one stays available). The error
/// says what is missing on this system.
pub fn ensure_legacy() -> Result<(), LegacyProviderError> {
    LEGACY
        .get_or_init(|| {
            Provider::try_load(None, "legacy", true).map_err(|e| LegacyProviderError(e.to_string()))
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

//! OpenSSL's `legacy` provider, which the Danish CAs' PKCS#12 files need
//! (3DES and RC2-40 bags, SHA-1 MAC). Loaded once, kept for the process.

use std::sync::OnceLock;

use openssl::provider::Provider;

static LEGACY: OnceLock<Result<Provider, String>> = OnceLock::new();

/// Loads the legacy provider (the default one stays available). The error
/// says what is missing on this system.
pub fn ensure_legacy() -> Result<(), String> {
    LEGACY
        .get_or_init(|| {
            Provider::try_load(None, "legacy", true).map_err(|e| {
                format!(
                    "cannot load OpenSSL's legacy provider (needed for OCES PKCS#12 files): {e}"
                )
            })
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

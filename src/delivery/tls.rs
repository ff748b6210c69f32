//! What a next hop's certificate must be under `relay.tls`, as a rustls
//! client configuration: "required" verifies a chain to the hop's CA file
//! (or `relay.tls_ca`, or the system's roots) for the expected name, or a
//! pinned SHA-256 fingerprint (checked by the caller after the handshake,
//! before any mail is sent); "opportunistic" takes any certificate. In
//! every case the handshake itself is checked (the server proves the key
//! of the certificate it shows).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

use crate::config::RelaySettings;

/// What a next hop's certificate must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Anything ("opportunistic": encryption against listening only).
    Nothing,
    /// This SHA-256 fingerprint (lower-case hex).
    Pinned(String),
    /// A chain to these CAs (PEM file) or, without one, the system's
    /// roots, for this name.
    Chain { ca: Option<PathBuf>, name: String },
}

impl Expect {
    /// What `hop` (whose host is `host`) must prove with `tls = "required"`.
    pub fn for_hop(relay: &RelaySettings, hop: &str, host: &str) -> Self {
        let hop_tls = relay.hop_tls(hop);
        if let Some(pin) = hop_tls.pin() {
            return Expect::Pinned(pin);
        }
        Expect::Chain {
            ca: relay.hop_ca(hop).cloned(),
            name: hop_tls.name.clone().unwrap_or_else(|| host.to_string()),
        }
    }
}

/// Why TLS parameters could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the CA file {0}: {1}")]
    CaFile(String, String),
    #[error("the CA file {0} holds no usable certificate")]
    NoCaCerts(String),
    #[error("{0:?} is not a usable server name")]
    Name(String),
    #[error("TLS setup failed: {0}")]
    Build(TlsError),
}

/// The client configuration and the name to ask for, for `expect` towards
/// `host`.
pub fn client_config(
    expect: &Expect,
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), TlsSetupError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Build)?;
    let (config, name) = match expect {
        Expect::Nothing | Expect::Pinned(_) => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
                .with_no_client_auth(),
            host,
        ),
        Expect::Chain { ca, name } => (
            builder
                .with_root_certificates(roots(ca.as_ref())?)
                .with_no_client_auth(),
            name.as_str(),
        ),
    };
    let name = ServerName::try_from(name.to_string())
        .map_err(|_| TlsSetupError::Name(name.to_string()))?;
    Ok((Arc::new(config), name))
}

/// The CAs of `ca` (PEM), or the system's roots.
fn roots(ca: Option<&PathBuf>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(file) => {
            let shown = file.display().to_string();
            let certs = CertificateDer::pem_file_iter(file)
                .map_err(|e| TlsSetupError::CaFile(shown.clone(), e.to_string()))?;
            for c in certs {
                let c = c.map_err(|e| TlsSetupError::CaFile(shown.clone(), e.to_string()))?;
                roots
                    .add(c)
                    .map_err(|_| TlsSetupError::NoCaCerts(shown.clone()))?;
            }
            if roots.is_empty() {
                return Err(TlsSetupError::NoCaCerts(shown));
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

/// Takes any certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// SHA-256 of a certificate, lower-case hex (as [`Expect::Pinned`]).
pub fn sha256_hex(der: &[u8]) -> String {
    crate::ossl::sha256_hex(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("empty.pem");
        std::fs::write(&file, "no certificate here\n").unwrap();
        let expect = Expect::Chain {
            ca: Some(file),
            name: "mail.test".into(),
        };
        assert!(matches!(
            client_config(&expect, "127.0.0.1"),
            Err(TlsSetupError::NoCaCerts(_))
        ));
        let missing = Expect::Chain {
            ca: Some(dir.path().join("missing.pem")),
            name: "mail.test".into(),
        };
        assert!(matches!(
            client_config(&missing, "127.0.0.1"),
            Err(TlsSetupError::CaFile(..))
        ));
        // Control: the system's roots and an IP address as the name.
        let system = Expect::Chain {
            ca: None,
            name: "127.0.0.1".into(),
        };
        assert!(client_config(&system, "127.0.0.1").is_ok());
        assert!(client_config(&Expect::Nothing, "127.0.0.1").is_ok());
    }

    #[test]
    fn fingerprints_are_lower_case_hex() {
        let hex = sha256_hex(b"abc");
        assert_eq!(hex.len(), 64);
        assert!(hex.starts_with("ba7816bf"));
    }
}

//! Trust anchors: the CA certificates signatures must chain to, read from
//! the files and directories in `[trust] anchors` (PEM or DER).

use std::fs;
use std::path::Path;

use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::X509;

#[derive(Debug, thiserror::Error)]
#[error("trust anchor {file}: {message}")]
pub struct TrustError {
    pub file: String,
    pub message: String,
}

/// Reads every certificate under `paths` (directories: files ending in
/// .pem, .crt, .cer or .der).
pub fn load_anchors(paths: &[impl AsRef<Path>]) -> Result<Vec<X509>, TrustError> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        if p.is_dir() {
            let mut entries: Vec<_> = fs::read_dir(p)
                .map_err(|e| TrustError {
                    file: p.display().to_string(),
                    message: e.to_string(),
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| {
                    f.extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| ["pem", "crt", "cer", "der"].contains(&x))
                })
                .collect();
            entries.sort();
            for f in entries {
                out.extend(read_certs(&f)?);
            }
        } else {
            out.extend(read_certs(p)?);
        }
    }
    Ok(out)
}

fn read_certs(file: &Path) -> Result<Vec<X509>, TrustError> {
    let fail = |message: String| TrustError {
        file: file.display().to_string(),
        message,
    };
    let bytes = fs::read(file).map_err(|e| fail(e.to_string()))?;
    if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        X509::stack_from_pem(&bytes).map_err(|e| fail(format!("not PEM certificates: {e}")))
    } else {
        X509::from_der(&bytes)
            .map(|c| vec![c])
            .map_err(|e| fail(format!("not a DER certificate: {e}")))
    }
}

/// A store of `anchors` checking validity as of `at` (Unix seconds).
pub fn store_at(anchors: &[X509], at: i64) -> Result<X509Store, openssl::error::ErrorStack> {
    let mut b = X509StoreBuilder::new()?;
    for a in anchors {
        // A duplicate anchor is reported as an error by OpenSSL; harmless.
        let _ = b.add_cert(a.clone());
    }
    let mut param = X509VerifyParam::new()?;
    param.set_time(at as libc::time_t);
    b.set_param(&param)?;
    Ok(b.build())
}

/// A store of `anchors` that ignores validity periods: tells a chain that
/// fails only on time from one that fails otherwise.
pub fn store_any_time(anchors: &[X509]) -> Result<X509Store, openssl::error::ErrorStack> {
    let mut b = X509StoreBuilder::new()?;
    for a in anchors {
        let _ = b.add_cert(a.clone());
    }
    b.set_flags(openssl::x509::verify::X509VerifyFlags::NO_CHECK_TIME)?;
    Ok(b.build())
}

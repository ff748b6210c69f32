//! Is a recipient's certificate fit to encrypt to at a given time? Its
//! validity period, its key usage (keyEncipherment; no CA certificate,
//! no extended key usage without e-mail protection), and its chain to the
//! trust anchors (RSASSA-PSS included) as of that time. Revocation is
//! `revocation`'s job; this module does no I/O.

use openssl::stack::Stack;
use openssl::x509::{X509StoreContext, X509};

use super::directory::Entry;

/// A Unix time as its UTC day, `YYYY-MM-DD`.
pub fn day(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// The validity period of `cert` (Unix seconds, both ends included).
pub fn period(cert: &X509) -> Option<(i64, i64)> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let secs = |t: &openssl::asn1::Asn1TimeRef| -> Option<i64> {
        let d = epoch.diff(t).ok()?;
        Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
    };
    Some((secs(cert.not_before())?, secs(cert.not_after())?))
}

/// Checks that need nothing but the certificate and the time.
pub fn basic(entry: &Entry, at: i64) -> Result<(), String> {
    let i = &entry.info;
    if at > i.not_after {
        return Err(format!("expired on {}", day(i.not_after)));
    }
    if at < i.not_before {
        return Err(format!("not valid before {}", day(i.not_before)));
    }
    if !i.can_encrypt() {
        return Err("key usage does not allow encryption (no keyEncipherment)".into());
    }
    // Review 24: a CA certificate chains to the anchors as well as any
    // leaf; an extended key usage without e-mail protection (RFC 8550
    // 4.4.4) was issued for something else (a TLS server, a system).
    if i.kind == super::oces::Kind::Authority {
        return Err("a CA certificate, not a recipient's".into());
    }
    if i.email_protection == Some(false) {
        return Err("extended key usage does not allow e-mail protection".into());
    }
    Ok(())
}

/// Builds and verifies the chain of `cert` to `anchors` as of `at`, with
/// `intermediates` as helpers. Returns the chain (leaf first).
pub fn chain(
    cert: &X509,
    anchors: &[X509],
    intermediates: &[X509],
    at: i64,
) -> Result<Vec<X509>, String> {
    let build = || -> Result<Result<Vec<X509>, String>, openssl::error::ErrorStack> {
        let store = super::trust::store_at(anchors, at)?;
        let mut untrusted = Stack::new()?;
        for c in intermediates {
            untrusted.push(c.clone())?;
        }
        let mut ctx = X509StoreContext::new()?;
        ctx.init(&store, cert, &untrusted, |c| {
            if c.verify_cert()? {
                Ok(Ok(c
                    .chain()
                    .map(|s| s.iter().map(|x| x.to_owned()).collect())
                    .unwrap_or_default()))
            } else {
                Ok(Err(format!("untrusted: {}", c.error().error_string())))
            }
        })
    };
    build().map_err(|e| format!("chain check failed: {e}"))?
}

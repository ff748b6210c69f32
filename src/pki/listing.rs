//! `smime-gateway keys list`: a table of the organisation's identities.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::Keyring;

fn day(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    httpdate::fmt_http_date(t)
        .get(5..16)
        .unwrap_or_default()
        .to_string()
}

/// The columns both tables share: CN, generation, kind, CVR, e-mails,
/// not-after.
fn columns(i: &super::oces::CertInfo) -> String {
    let cn: String = i.subject_cn.chars().take(40).collect();
    let emails = if i.emails.is_empty() {
        "-".to_string()
    } else {
        i.emails.join(",")
    };
    format!(
        "{cn:<40} {:<6} {:<12} {:<9} {emails:<28} {:<11}",
        i.generation.to_string(),
        i.kind.to_string(),
        i.cvr.as_deref().unwrap_or("-"),
        day(i.not_after),
    )
}

/// One line per identity: CN, generation, kind, CVR, e-mails, not-after,
/// state at `now` (revoked where `revoked` says so), and what the key may
/// do: decrypt always, sign only while valid.
pub fn keys_table(keys: &Keyring, now: i64, revoked: &[bool]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<6} {:<12} {:<9} {:<28} {:<11} {:<13} may",
        "SUBJECT CN", "GEN", "KIND", "CVR", "E-MAIL", "NOT AFTER", "STATE"
    );
    for (n, id) in keys.identities.iter().enumerate() {
        let i = &id.info;
        let state = if revoked.get(n).copied().unwrap_or(false) {
            "revoked"
        } else if now < i.not_before {
            "not yet valid"
        } else if now > i.not_after {
            "expired"
        } else {
            "valid"
        };
        let may = if state == "valid" && i.can_sign() {
            "decrypt, sign"
        } else {
            "decrypt"
        };
        let _ = writeln!(out, "{} {state:<13} {may}", columns(i));
        if !id.mailboxes.is_empty() {
            let _ = writeln!(out, "{:<40} serves: {}", "", id.mailboxes.join(", "));
        }
    }
    let _ = writeln!(
        out,
        "{} identit{}",
        keys.identities.len(),
        if keys.identities.len() == 1 {
            "y"
        } else {
            "ies"
        }
    );
    out
}

/// `certs list`: every certificate in the directory.
pub fn certs_table(dir: &super::directory::Directory) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<6} {:<12} {:<9} {:<28} {:<11} source",
        "SUBJECT CN", "GEN", "KIND", "CVR", "E-MAIL", "NOT AFTER"
    );
    let all = dir.all();
    for e in &all {
        let _ = writeln!(out, "{} {}", columns(&e.info), e.source);
    }
    let _ = writeln!(out, "{} certificate(s)", all.len());
    out
}

/// `certs import`: copies the certificates in `file` into `dir` (one PEM
/// file each, named by fingerprint). Returns how many were new.
pub fn import(file: &std::path::Path, dir: &std::path::Path) -> Result<(usize, usize), String> {
    let certs = super::directory::read_any(file).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut new = 0;
    for c in &certs {
        let path = dir.join(format!("{}.pem", super::directory::fingerprint(c)));
        if path.exists() {
            continue;
        }
        let pem = c.to_pem().map_err(|e| e.to_string())?;
        crate::spool::durable_write(&path, &pem).map_err(|e| format!("{}: {e}", path.display()))?;
        new += 1;
    }
    Ok((certs.len(), new))
}

/// Which identities their CA says are revoked (CRL or OCSP), as far as the
/// sources can be reached; `[trust] revocation = "off"` checks nothing.
/// Blocking (HTTP).
pub fn revoked_identities(
    keys: &Keyring,
    settings: &crate::config::Settings,
    now: i64,
) -> Vec<bool> {
    if settings.trust.revocation == crate::config::Revocation::Off {
        return vec![false; keys.identities.len()];
    }
    let checker = super::revocation::Checker::default();
    keys.identities
        .iter()
        .map(|id| {
            let issuer = id
                .chain
                .iter()
                .find(|c| c.issued(&id.cert) == openssl::x509::X509VerifyResult::OK);
            match issuer {
                Some(issuer) => matches!(
                    checker.check(
                        &id.cert,
                        issuer,
                        &keys.anchors,
                        now,
                        settings.trust.revocation_timeout
                    ),
                    super::revocation::Status::Revoked(_)
                ),
                None => false,
            }
        })
        .collect()
}

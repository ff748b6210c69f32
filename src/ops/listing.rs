//! `smime-gateway keys list` and `certs list|import`: tables of the
//! organisation's identities and of recipients' certificates, and copying
//! certificates into the operator's folder.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::pki::{directory, oces, Keyring};

fn day(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    httpdate::fmt_http_date(t)
        .get(5..16)
        .unwrap_or_default()
        .to_string()
}

/// The columns both tables share: CN, generation, kind, CVR, e-mails,
/// not-after.
fn columns(i: &oces::CertInfo) -> String {
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
        let state = i.state_at(now, revoked.get(n).copied().unwrap_or(false));
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
pub fn certs_table(dir: &directory::Directory) -> String {
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

/// Why `certs import` failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("certs import: no [certificates] dirs configured")]
    NoFolder,
    #[error("certs import: {0}")]
    Read(#[from] directory::DirectoryError),
    #[error("certs import: {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("certs import: cannot write PEM: {0}")]
    Pem(#[from] openssl::error::ErrorStack),
}

/// `certs import`: copies the certificates in `file` into `dir` (one PEM
/// file each, named by fingerprint). Returns how many there were and how
/// many were new.
pub fn import(
    file: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(usize, usize), ImportError> {
    let certs = directory::read_any(file)?;
    let write_error = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    let mut new = 0;
    for c in &certs {
        let path = dir.join(format!("{}.pem", directory::fingerprint(c)));
        if path.exists() {
            continue;
        }
        let pem = c.to_pem()?;
        crate::durable::write_atomic(&path, &pem).map_err(write_error(&path))?;
        new += 1;
    }
    Ok((certs.len(), new))
}

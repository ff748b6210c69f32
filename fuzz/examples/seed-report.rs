//! What the `unwrap` target makes of each seed: decrypted (with which key),
//! signature status, or why it failed; then the counts. Shows that the
//! fixed keys and the seeds reach decryption and verification.
//!   cargo run --manifest-path fuzz/Cargo.toml --example seed-report [DIR]

use std::path::PathBuf;

use smime_gateway::smime::mime::{self, Shape};
use smime_gateway::smime::unwrap::{Report, Unwrapped, Verdict};
use smime_gateway_fuzz::unwrap_input;

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds/unwrap"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let (mut decrypted, mut signed, mut valid) = (0, 0, 0);
    for f in &files {
        let bytes = std::fs::read(f).expect("seed readable");
        let (what, report) = match unwrap_input(&bytes) {
            Unwrapped::Opened { report, message } => {
                // More layers than the gateway takes off: still encrypted.
                if matches!(mime::shape(&message), Shape::Enveloped { .. }) {
                    ("opened, still enveloped", Some(report))
                } else {
                    ("opened", Some(report))
                }
            }
            Unwrapped::Unchanged { report } => ("unchanged", Some(report)),
            Unwrapped::Failed { error, .. } => {
                println!("{:<42} failed: {error}", name(f));
                continue;
            }
        };
        let report = report.unwrap_or_else(Report::default);
        let key = report.key().map(|k| {
            decrypted += 1;
            format!("key {} ({})", k.subject_cn, k.generation)
        });
        let sig = report.signatures().next().map(|s| {
            signed += 1;
            // Pure verification (no From, no revocation): as unwrap sees it.
            if matches!(s.verdict(), Verdict::Valid | Verdict::SignerDiffers) {
                valid += 1;
            }
            format!("signature {:?}", s.verdict())
        });
        let parts: Vec<String> = [key, sig].into_iter().flatten().collect();
        let parts = if parts.is_empty() {
            "not S/MIME".to_string()
        } else {
            parts.join(", ")
        };
        println!("{:<42} {what}: {parts}", name(f));
    }
    println!(
        "{} seeds: {decrypted} decrypted, {signed} with a signature verified, {valid} of them valid",
        files.len()
    );
}

fn name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

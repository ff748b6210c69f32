//! RSA costs of the OpenSSL this crate links, printed as `openssl speed`
//! prints them, for scripts/bench: the gateway may link another OpenSSL
//! than the `openssl` command on the PATH (the vendored one by default),
//! and the bound per message must be the gateway's own.
//!
//!   cargo run --release --example rsa_speed [SECONDS]

use std::time::{Duration, Instant};

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::sign::{Signer, Verifier};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 2.0,
    };
    let budget = Duration::from_secs_f64(seconds);
    println!("{}", openssl::version::version());
    println!("                  sign    verify    sign/s verify/s");
    for bits in [2048u32, 3072] {
        let key = PKey::from_rsa(Rsa::generate(bits)?)?;
        let data = [0x5au8; 32];
        let sign_once = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
            let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
            signer.update(&data)?;
            signer.sign_to_vec()
        };
        let signature = sign_once()?;
        let per_sign = time_per_op(budget, || sign_once().map(|_| ()))?;
        let per_verify = time_per_op(budget, || {
            let mut verifier = Verifier::new(MessageDigest::sha256(), &key)?;
            verifier.update(&data)?;
            verifier.verify(&signature).map(|_| ())
        })?;
        println!(
            "rsa {bits} bits {:.6}s {:.6}s {:8.1} {:8.1}",
            per_sign,
            per_verify,
            1.0 / per_sign,
            1.0 / per_verify
        );
    }
    Ok(())
}

/// Seconds per call of `op`, run for about `budget`.
fn time_per_op(
    budget: Duration,
    mut op: impl FnMut() -> Result<(), openssl::error::ErrorStack>,
) -> Result<f64, openssl::error::ErrorStack> {
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < budget {
        op()?;
        count += 1;
    }
    Ok(start.elapsed().as_secs_f64() / count.max(1) as f64)
}

//! Fuzz target: a CRL as served by anyone on the path to a CRL server,
//! read by `pki::revocation::scope` (strict DER through x509-cert: the
//! update times, delta indicator, Issuing Distribution Point, critical
//! extensions). It must answer, never panic or run away, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let point = ["http://crl.example/full.crl".to_string()];
    let _ = smime_gateway::pki::revocation::scope(data, &point, 1_800_000_000);
});

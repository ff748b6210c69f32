//! Fuzz target for the inbound path: any bytes as a message, taken through
//! S/MIME recognition, decryption with a real key and signature
//! verification. Must never panic. Run with (nightly toolchain):
//!   cargo fuzz run unwrap -- -max_total_time=60
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smime_gateway::pki::Identity;
use smime_gateway::smime::unwrap::unwrap;

fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| smime_gateway::pki::testkit::identity(2048, "Fuzz").expect("test identity"))
}

fuzz_target!(|data: &[u8]| {
    let _ = unwrap(data, &[identity()], &[], 0);
});

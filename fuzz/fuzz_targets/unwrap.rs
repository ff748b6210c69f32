//! The inbound path: any bytes as a message to the organisation, through
//! S/MIME recognition, decryption with the fixed OCES2-like and OCES3-like
//! keys (fuzz/keys/), signature verification against the fixed anchors at
//! a fixed `now`, and the rebuilt clean message. Seeds for every inbound
//! form are made by fuzz/seeds/make-seeds.sh. Run with `scripts/fuzz unwrap`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smime_gateway::smime::header;
use smime_gateway::smime::unwrap::Unwrapped;
use smime_gateway_fuzz::unwrap_input;

fuzz_target!(|data: &[u8]| {
    match unwrap_input(data) {
        Unwrapped::Opened { message, report } => {
            // The trace header the mailbox trusts is the gateway's alone:
            // none survives from the sender's outer or inner fields.
            assert!(!header::present(&message), "trace header kept");
            assert!(message.ends_with(b"\r\n"));
            let value = report.header_value().expect("opened: something to report");
            assert!(!value.contains(['\r', '\n']), "line break in {value:?}");
        }
        Unwrapped::Unchanged { report } => {
            if let Some(value) = report.header_value() {
                assert!(!value.contains(['\r', '\n']), "line break in {value:?}");
            }
        }
        Unwrapped::Failed { error, .. } => {
            let value = header::quote(&error.to_string());
            assert!(!value.contains(['\r', '\n']));
        }
    }
});

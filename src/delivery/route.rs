//! Which next hop a recipient goes to: `relay.internal` for the internal
//! domains, `relay.external` for everything else.

use crate::config::Settings;
use crate::mail::address::domain_of;

/// The next hop (`host:port`) for `rcpt`.
pub fn next_hop<'a>(settings: &'a Settings, rcpt: &str) -> &'a str {
    match domain_of(rcpt) {
        Some(d) if settings.server.is_internal_domain(&d) => &settings.relay.internal,
        _ => &settings.relay.external,
    }
}

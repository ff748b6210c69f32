//! Recipient address checks: which domain a recipient is in, and whether an
//! untrusted client may use it (no open relay).
//!
//! The relay decision looks at the address as the client wrote it, not only
//! at the parsed form: parsers drop source routes and quotes, which is how
//! `@local:u@ext` and `"u@ext"@local` slip past a check on the domain
//! alone. For untrusted clients the local part of an internal address must
//! not carry routing characters (`%`, `!`, `@`, quotes), so a later hop
//! cannot turn `u%ext@local` into mail for `ext`.

use crate::mail::address::domain_of;

/// Why a recipient is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayDenied {
    /// The domain is not ours and the client may not relay.
    ExternalDomain,
    /// The address carries a source route or routing characters.
    Routing(&'static str),
}

impl RelayDenied {
    pub fn explain(&self) -> &'static str {
        match self {
            RelayDenied::ExternalDomain => "relay access denied",
            RelayDenied::Routing(why) => why,
        }
    }
}

/// Decides whether a client outside the trusted networks may send to the
/// recipient written as `raw` (parsed by the protocol parser as `parsed`).
pub fn check_untrusted(
    raw: &str,
    parsed: &str,
    is_internal: impl Fn(&str) -> bool,
) -> Result<(), RelayDenied> {
    let domain = domain_of(parsed).ok_or(RelayDenied::ExternalDomain)?;
    if !is_internal(&domain) {
        return Err(RelayDenied::ExternalDomain);
    }
    if raw.starts_with('@') {
        return Err(RelayDenied::Routing("source routes are not accepted"));
    }
    // An SMTP path has no comments; the parser drops them, so what is
    // checked would not be what was written.
    if raw.contains(['(', ')']) {
        return Err(RelayDenied::Routing(
            "comments in an address are not accepted",
        ));
    }
    let local = match raw.rsplit_once('@') {
        Some((local, _)) => local,
        None => return Err(RelayDenied::ExternalDomain),
    };
    if local.contains('"') || local.contains('@') {
        return Err(RelayDenied::Routing(
            "quoted local parts with routing characters are not accepted",
        ));
    }
    if local.contains('%') || local.contains('!') {
        return Err(RelayDenied::Routing(
            "'%' and '!' routing in the local part is not accepted",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(d: &str) -> bool {
        d == "example-law.dk"
    }

    #[test]
    fn relay_tricks_are_refused() {
        let cases = [
            ("u@example-law.dk", true),
            ("U@Example-Law.DK", true),
            ("u@example-law.dk.", true),
            ("u@ext.example", false),
            ("u%ext.example@example-law.dk", false),
            ("\"u@ext.example\"@example-law.dk", false),
            ("@example-law.dk:u@ext.example", false),
            ("@ext.example:u@example-law.dk", false),
            ("ext.example!u@example-law.dk", false),
            ("u(x@ext.example)@example-law.dk", false),
            ("u(comment)@example-law.dk", false),
        ];
        for (raw, ok) in cases {
            // The parser strips quotes and source routes; model that.
            let parsed = raw
                .rsplit_once(':')
                .map(|(_, a)| a)
                .unwrap_or(raw)
                .replace('"', "")
                .replace("(comment)", "");
            assert_eq!(check_untrusted(raw, &parsed, internal).is_ok(), ok, "{raw}");
        }
    }
}

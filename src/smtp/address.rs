//! Recipient address checks: which domain a recipient is in, and whether an
//! untrusted client may use it (no open relay).
//!
//! The relay decision looks at the address as the client wrote it, not only
//! at the parsed form: parsers drop source routes and quotes, which is how
//! `@local:u@ext` and `"u@ext"@local` slip past a check on the domain
//! alone. For untrusted clients the local part of an internal address must
//! not carry routing characters (`%`, `!`, `@`, quotes), so a later hop
//! cannot turn `u%ext@local` into mail for `ext`.

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

/// The text between `<` and `>` of a MAIL or RCPT argument, as written.
pub fn raw_path(line: &str) -> Option<&str> {
    let start = line.find('<')? + 1;
    let end = start + line[start..].rfind('>')?;
    Some(&line[start..end])
}

/// The domain of a parsed address (after the last `@`), lower-cased and
/// without a trailing dot.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// The form an address is kept in: the domain in lower case without a
/// trailing dot (the local part is left as it is: it may be case-sensitive).
/// `Example@Court.DK.` and `Example@court.dk` are one recipient to rules,
/// mailboxes and keys.
pub fn normalize(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            format!(
                "{local}@{}",
                domain.trim_end_matches('.').to_ascii_lowercase()
            )
        }
        None => address.to_string(),
    }
}

/// False for addresses that cannot be written back into an SMTP command
/// safely (spaces, angle brackets, control characters), whatever quoting
/// the client used.
pub fn is_clean(address: &str) -> bool {
    !address
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

/// `address` as an SMTP path body: the local part quoted when it is not a
/// dot-atom (the parser hands it over unquoted).
pub fn smtp_path(address: &str) -> String {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address.to_string();
    };
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_atom = !local.is_empty()
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c == '.' || atext(c));
    if dot_atom {
        return address.to_string();
    }
    let quoted: String = local
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("\"{quoted}\"@{domain}")
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
        ];
        for (raw, ok) in cases {
            // The parser strips quotes and source routes; model that.
            let parsed = raw
                .rsplit_once(':')
                .map(|(_, a)| a)
                .unwrap_or(raw)
                .replace('"', "");
            assert_eq!(check_untrusted(raw, &parsed, internal).is_ok(), ok, "{raw}");
        }
    }

    #[test]
    fn normal_forms_and_quoting() {
        assert_eq!(normalize("Bob@Court.DK."), "Bob@court.dk");
        assert_eq!(smtp_path("a.b@x"), "a.b@x");
        assert_eq!(smtp_path("a,b@x"), "\"a,b\"@x");
        assert_eq!(smtp_path("a\"b@x"), "\"a\\\"b\"@x");
        assert!(!is_clean("x> RET=FULL@z"));
        assert!(is_clean("alice@example.org"));
    }

    #[test]
    fn raw_path_extraction() {
        assert_eq!(raw_path("RCPT TO:<a@b> NOTIFY=NEVER"), Some("a@b"));
        assert_eq!(raw_path("RCPT TO:a@b"), None);
    }
}

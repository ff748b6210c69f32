//! Mail addresses as the gateway keeps them: the domain of an address, its
//! normal form (domain as its lower-case A-label, no trailing dot), and how
//! to write it back into an SMTP command. Ground floor: used by every room
//! that handles envelopes, imports nothing of the gateway.
//!
//! Domains are compared as DNS sees them: `dømstol.dk`, `DØMSTOL.dk` and
//! `xn--dmstol-bya.dk` are one domain (UTS-46 to ASCII), so a rule or an
//! internal domain written one way also holds for mail addressed another.
//! Whole addresses are compared by their [`key`]: that form with letters
//! in lower case, the same way everywhere (rules, mailboxes, `send_as`,
//! keys, certificate lookups), and never folding a non-ASCII letter into
//! an ASCII one.

/// The text between `<` and `>` of a MAIL or RCPT argument, as written.
pub fn raw_path(line: &str) -> Option<&str> {
    let start = line.find('<')? + 1;
    let end = start + line[start..].rfind('>')?;
    Some(&line[start..end])
}

/// The domain of a parsed address (after the last `@`) in its normal form
/// (`domain_key`).
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain_key(domain);
    (!domain.is_empty()).then_some(domain)
}

/// The normal form of a domain: without a trailing dot, mapped and
/// lower-cased by UTS-46 and written as A-labels (`DØMSTOL.dk.` ->
/// `xn--dmstol-bya.dk`). An address literal (`[192.0.2.1]`) is only
/// lower-cased; a name UTS-46 refuses is lower-cased as Unicode (it names
/// no host, so it matches no rule written as a valid name either).
///
/// The mapping runs with STD3 rules and its result must be a host name
/// (letters, digits, hyphens, dots): UTS-46 alone maps look-alikes such
/// as `＠` (U+FF20), `＞` and `¨` to `@`, `>` and a space, which would
/// turn `x@evil.example＠firm.dk` into an address of the firm's domain
/// after every check had passed.
pub fn domain_key(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    if domain.starts_with('[') {
        return domain.to_ascii_lowercase();
    }
    // Already a host name in ASCII (nearly every domain): UTS-46 would
    // give back the same name lower-cased, or refuse it and fall back to
    // that, so it is not asked (this runs for every recipient and rule).
    if is_host_name(domain) && !domain.contains("xn--") && !domain.contains("XN--") {
        return domain.to_ascii_lowercase();
    }
    match idna::domain_to_ascii_cow(domain.as_bytes(), idna::AsciiDenyList::STD3) {
        Ok(ascii) if is_host_name(&ascii) => ascii.into_owned(),
        _ => domain.to_lowercase(),
    }
}

/// True for a host name as DNS writes it: dot-separated labels of ASCII
/// letters, digits and hyphens, none empty.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The form an address is kept in: the domain in its normal form
/// (`domain_key`; the local part is left as it is: it may be
/// case-sensitive). `Example@Court.DK.` and `Example@court.dk` are one
/// recipient to rules, mailboxes and keys, and so are `x@dømstol.dk` and
/// `x@xn--dmstol-bya.dk`.
pub fn normalize(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain_key(domain)),
        None => address.to_string(),
    }
}

/// `text` (an address or pattern in normal form) with its letters in
/// lower case, as addresses are compared: ASCII letters always, and any
/// other letter whose lower case holds no ASCII character (`Ø` -> `ø`).
/// A letter whose lower case is or holds ASCII stays as written: KELVIN
/// SIGN (U+212A) lower-cases to a plain `k` and `İ` (U+0130) to `i` and a
/// combining dot, which would make an address no mail server holds
/// (`\u{212A}im@court.dk`) the same recipient as `kim@court.dk` to rules,
/// mailboxes and keys, while the next hop delivers it elsewhere.
pub fn fold_case(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if c.to_lowercase().any(|l| l.is_ascii()) {
            out.push(c);
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The key an address is compared and looked up by: its normal form
/// (`normalize`) in lower case (`fold_case`). `Ærlig@ÅBY.dk.` and
/// `ærlig@xn--by-xia.dk` have one key.
pub fn key(address: &str) -> String {
    fold_case(&normalize(address))
}

/// True when `a` and `b` are one recipient (their `key`s are equal).
pub fn same(a: &str, b: &str) -> bool {
    key(a) == key(b)
}

/// The normal form of a configured address pattern (`*`, `*@domain`,
/// `*.domain` or an address): its domain as `domain_key` gives it, the
/// rest as written.
pub fn pattern_key(pattern: &str) -> String {
    if pattern == "*" {
        return pattern.to_string();
    }
    if let Some(d) = pattern.strip_prefix("*@") {
        return format!("*@{}", domain_key(d));
    }
    if let Some(d) = pattern.strip_prefix("*.") {
        return format!("*.{}", domain_key(d));
    }
    normalize(pattern)
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

#[cfg(test)]
mod tests {

    #[test]
    fn look_alikes_never_become_address_syntax() {
        // Full-width @ and >, and a diaeresis UTS-46 alone would map to a
        // space: the domain stays what it was (lower-cased), never an
        // address of the domain after the look-alike.
        for (raw, domain) in [
            (
                "x@attacker.example\u{FF20}example-law.dk",
                "attacker.example\u{FF20}example-law.dk",
            ),
            (
                "x@attacker.example\u{FE6B}example-law.dk",
                "attacker.example\u{FE6B}example-law.dk",
            ),
            (
                "a@b\u{FF1E}\u{00A8}ret\u{FF1D}full.example",
                "b\u{FF1E}\u{00A8}ret\u{FF1D}full.example",
            ),
        ] {
            let n = normalize(raw);
            assert_eq!(domain_of(&n).as_deref(), Some(domain), "{raw}");
            assert_eq!(n.matches('@').count(), 1, "{n}");
            assert!(is_clean(&n), "{n}");
        }
        // Control: real IDN still maps.
        assert_eq!(domain_key("DØMSTOL.dk."), "xn--dmstol-bya.dk");
        assert_eq!(domain_key("Example.DK"), "example.dk");
        assert!(!is_host_name("a..b") && !is_host_name("a b") && is_host_name("xn--d-1.dk"));
    }

    use super::*;

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
    fn domains_are_compared_as_a_labels() {
        let a = "xn--dmstol-bya.dk";
        for d in [
            "dømstol.dk",
            "DØMSTOL.dk",
            "Dømstol.DK.",
            "XN--DMSTOL-BYA.dk",
            a,
        ] {
            assert_eq!(domain_key(d), a, "{d}");
            assert_eq!(domain_of(&format!("x@{d}")).as_deref(), Some(a), "{d}");
        }
        assert_eq!(normalize("Post@DØMSTOL.dk"), format!("Post@{a}"));
        assert_eq!(normalize("ærø@Example.ORG."), "ærø@example.org");
        assert_eq!(domain_key("[192.0.2.1]"), "[192.0.2.1]");
        assert_eq!(domain_of("x@."), None);
        assert_eq!(pattern_key("*@Dømstol.dk"), format!("*@{a}"));
        assert_eq!(pattern_key("*.dømstol.dk"), format!("*.{a}"));
        assert_eq!(pattern_key("Post@dømstol.dk"), format!("Post@{a}"));
        assert_eq!(pattern_key("*"), "*");
    }

    #[test]
    fn keys_fold_case_but_never_into_ascii() {
        assert_eq!(key("Ærlig@ÅBY.dk."), "ærlig@xn--by-xia.dk");
        assert!(same("SØREN@firma.dk", "søren@FIRMA.dk"));
        assert!(same("Kim@Court.DK", "kim@court.dk"));
        // KELVIN SIGN and capital I with dot lower-case into ASCII: the
        // addresses stay apart from the ASCII ones.
        assert!(!same("\u{212A}im@court.dk", "kim@court.dk"));
        assert_eq!(key("\u{212A}IM@court.dk"), "\u{212A}im@court.dk");
        assert!(!same("\u{130}b@court.dk", "ib@court.dk"));
        assert_eq!(fold_case("*@XN--BY-XIA.dk"), "*@xn--by-xia.dk");
    }

    #[test]
    fn raw_path_extraction() {
        assert_eq!(raw_path("RCPT TO:<a@b> NOTIFY=NEVER"), Some("a@b"));
        assert_eq!(raw_path("RCPT TO:a@b"), None);
    }
}

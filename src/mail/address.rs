//! Mail addresses as the gateway keeps them: the domain of an address, its
//! normal form (domain lower-case, no trailing dot), and how to write it
//! back into an SMTP command. Ground floor: used by every room that
//! handles envelopes, imports nothing of the gateway.

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

#[cfg(test)]
mod tests {
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
    fn raw_path_extraction() {
        assert_eq!(raw_path("RCPT TO:<a@b> NOTIFY=NEVER"), Some("a@b"));
        assert_eq!(raw_path("RCPT TO:a@b"), None);
    }
}

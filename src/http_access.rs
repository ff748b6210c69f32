//! Who may read the operator's HTTP pages (`/metrics`, the status page).
//! They count per message what was decrypted, quarantined or refused, so
//! whoever reads them and can send mail learns, message by message,
//! whether a ciphertext opened: a padding oracle. With a token configured
//! (`token_file`) they are served to whoever presents it, from any host:
//! `Authorization: Bearer TOKEN`, or HTTP Basic with any user name and the
//! token as password (what a browser asks for). Without one, to clients
//! on this host (loopback) only, and only under a name of this host in
//! `Host` (`localhost` or a loopback address): a web page the operator
//! opens could otherwise point its own name at 127.0.0.1 (DNS rebinding)
//! and read the pages through the operator's browser. Pure: the caller
//! reads the token file and the peer address.

use std::net::IpAddr;

use base64::Engine;

/// What a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// Without the right token, one being configured (401, with a
    /// challenge).
    WrongToken,
    /// From another host, and no token is configured (403).
    HostOnly,
    /// From this host, but under another name than this host's (403).
    ForeignName,
}

/// Whether a request from `peer` with the `Host` header `host` and the
/// `Authorization` header `authorization` may read, when the configured
/// token is `token`.
pub fn decide(
    peer: IpAddr,
    host: Option<&[u8]>,
    authorization: Option<&[u8]>,
    token: Option<&str>,
) -> Access {
    match token {
        Some(token) => match authorization.and_then(presented) {
            Some(given) if same(&given, token.as_bytes()) => Access::Allowed,
            _ => Access::WrongToken,
        },
        None if !is_loopback(peer) => Access::HostOnly,
        // A client that names no host is not a browser.
        None if host.is_none_or(names_this_host) => Access::Allowed,
        None => Access::ForeignName,
    }
}

/// Whether a `Host` value names this host: `localhost` or a loopback
/// address, with or without a port.
fn names_this_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// 127.0.0.0/8, ::1, and IPv4 loopback written as IPv6.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

/// The secret a header presents: a Bearer token, or a Basic password.
fn presented(header: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let pair = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = pair.iter().position(|b| *b == b':')?;
        return Some(pair[colon + 1..].to_vec());
    }
    None
}

/// Compares without a timing difference that depends on where they
/// differ (their digests, compared in constant time).
fn same(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (openssl::sha::sha256(a), openssl::sha::sha256(b));
    openssl::memcmp::eq(&x, &y)
}

/// The token in `text` (a token file's content): without surrounding
/// white space; `None` when that leaves fewer than 16 characters.
pub fn token_of(text: &str) -> Option<&str> {
    let t = text.trim();
    (t.chars().count() >= 16).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-token-0123456789";

    fn from(ip: &str, header: Option<&str>, token: Option<&str>) -> Access {
        decide(ip.parse().unwrap(), None, header.map(str::as_bytes), token)
    }

    #[test]
    fn without_a_token_only_under_a_name_of_this_host() {
        let at = |host: &str| {
            decide(
                "127.0.0.1".parse().unwrap(),
                Some(host.as_bytes()),
                None,
                None,
            )
        };
        for ok in [
            "localhost",
            "localhost:9325",
            "LocalHost.:80",
            "127.0.0.1",
            "127.0.0.1:9325",
            "127.1.2.3:1",
            "[::1]:9325",
            "[::1]",
        ] {
            assert_eq!(at(ok), Access::Allowed, "{ok}");
        }
        for foreign in [
            "rebind.attacker.example:9325",
            "rebind.attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.7:9325",
            "",
            "[::2]:1",
        ] {
            assert_eq!(at(foreign), Access::ForeignName, "{foreign}");
        }
        // With a token, the token decides, whatever the name.
        assert_eq!(
            decide(
                "127.0.0.1".parse().unwrap(),
                Some(b"rebind.attacker.example"),
                Some(format!("Bearer {TOKEN}").as_bytes()),
                Some(TOKEN)
            ),
            Access::Allowed
        );
    }

    #[test]
    fn without_a_token_this_host_only_with_one_whoever_has_it() {
        assert_eq!(from("127.0.0.1", None, None), Access::Allowed);
        assert_eq!(from("::1", None, None), Access::Allowed);
        assert_eq!(from("::ffff:127.0.0.1", None, None), Access::Allowed);
        assert_eq!(from("127.0.0.1", None, Some(TOKEN)), Access::WrongToken);
        assert_eq!(
            from("127.0.0.1", Some(&format!("Bearer {TOKEN}")), Some(TOKEN)),
            Access::Allowed
        );
        assert_eq!(from("10.0.0.7", None, None), Access::HostOnly);
        assert_eq!(
            from("10.0.0.7", Some(&format!("Bearer {TOKEN}")), None),
            Access::HostOnly
        );
        assert_eq!(from("10.0.0.7", None, Some(TOKEN)), Access::WrongToken);
        assert_eq!(
            from("10.0.0.7", Some(&format!("Bearer {TOKEN}")), Some(TOKEN)),
            Access::Allowed
        );
        assert_eq!(
            from("10.0.0.7", Some(&format!("bearer  {TOKEN} ")), Some(TOKEN)),
            Access::Allowed
        );
        assert_eq!(
            from(
                "10.0.0.7",
                Some("Bearer s3cret-token-012345678"),
                Some(TOKEN)
            ),
            Access::WrongToken
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"));
        assert_eq!(
            from("10.0.0.7", Some(&format!("Basic {basic}")), Some(TOKEN)),
            Access::Allowed
        );
        let wrong = base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}:x"));
        assert_eq!(
            from("10.0.0.7", Some(&format!("Basic {wrong}")), Some(TOKEN)),
            Access::WrongToken
        );
        assert_eq!(
            from("10.0.0.7", Some("Basic !!!"), Some(TOKEN)),
            Access::WrongToken
        );
        assert_eq!(
            from("10.0.0.7", Some(TOKEN), Some(TOKEN)),
            Access::WrongToken
        );
    }

    #[test]
    fn a_token_is_at_least_sixteen_characters() {
        assert_eq!(token_of("  abcdefghijklmnop\n"), Some("abcdefghijklmnop"));
        assert_eq!(token_of("short\n"), None);
        assert_eq!(token_of(""), None);
    }
}

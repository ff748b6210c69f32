//! Semantic checks on a deserialized configuration: values that parse but
//! cannot work. Every problem is collected, none stops the others.

use std::time::Duration;

use super::{Problem, Settings, ValueError};

pub(super) fn check(s: &Settings) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |key: &str, message: String| {
        out.push(Problem {
            key: key.to_string(),
            message,
        })
    };

    let host = &s.server.hostname;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        bad(
            "server.hostname",
            format!("{host:?} is not a host name (empty or contains spaces)"),
        );
    }
    if s.server.listen.is_empty() {
        bad(
            "server.listen",
            "at least one address is needed, e.g. [\"127.0.0.1:2525\"]".into(),
        );
    }
    for (i, d) in s.server.internal_domains.iter().enumerate() {
        if !is_domain(d) {
            bad(
                &format!("server.internal_domains[{i}]"),
                format!("{d:?} is not a domain name (write \"example.dk\", without '@')"),
            );
        }
    }
    for (key, value) in [
        ("server.max_message_size", s.server.max_message_size),
        ("server.max_recipients", s.server.max_recipients as u64),
        ("server.max_connections", s.server.max_connections as u64),
        (
            "server.max_connections_per_ip",
            s.server.max_connections_per_ip as u64,
        ),
        ("queue.max_deliveries", s.queue.max_deliveries as u64),
        ("queue.memory_budget", s.queue.memory_budget),
    ] {
        if value == 0 {
            bad(key, "must be at least 1".into());
        }
    }
    for (key, value) in [
        ("server.command_timeout", s.server.command_timeout),
        ("server.data_timeout", s.server.data_timeout),
        ("server.session_timeout", s.server.session_timeout),
        ("relay.connect_timeout", s.relay.connect_timeout),
        ("relay.timeout", s.relay.timeout),
        ("relay.reuse_idle", s.relay.reuse_idle),
        ("queue.max_lifetime", s.queue.max_lifetime),
        ("queue.scan_interval", s.queue.scan_interval),
        ("status.refresh", s.status.refresh),
        ("journal.keep", s.journal.keep),
        ("migrate.imap_timeout", s.migrate.imap_timeout),
    ] {
        if value == Duration::ZERO {
            bad(key, "must be longer than zero".into());
        }
    }
    // Each listener on an address of its own: the health listener is
    // there so that connections to the others do not reach it.
    let listeners = [
        ("metrics.listen", s.metrics.listen),
        ("metrics.health_listen", s.metrics.health_listen),
        ("status.listen", s.status.listen),
    ];
    for (i, (key, addr)) in listeners.iter().enumerate() {
        let Some(addr) = addr else { continue };
        if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| *a == Some(*addr)) {
            bad(
                key,
                format!("{addr} is also {other}: give each listener its own address"),
            );
        }
    }
    for (key, file) in [
        ("metrics.token_file", &s.metrics.token_file),
        ("status.token_file", &s.status.token_file),
    ] {
        let Some(file) = file else { continue };
        match std::fs::read_to_string(file) {
            Ok(text) if crate::http_access::token_of(&text).is_some() => {}
            Ok(_) => bad(
                key,
                format!(
                    "{}: the token must be at least 16 characters",
                    file.display()
                ),
            ),
            Err(e) => bad(key, format!("{}: {e}", file.display())),
        }
    }
    if s.server.ipv6_prefix > 128 {
        bad(
            "server.ipv6_prefix",
            format!("{} is not a prefix length (0 to 128)", s.server.ipv6_prefix),
        );
    }
    if let Some(tls) = &s.server.tls {
        for (key, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
            if !path.is_file() {
                bad(key, format!("{}: no such file", path.display()));
            }
        }
    }
    let rp = &s.smime.return_path;
    if rp.is_empty()
        || rp.starts_with('.')
        || rp.ends_with('.')
        || !rp
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bad(
            "smime.return_path",
            format!(
                "{rp:?} is not a local part (letters, digits, '-', '_' and '.'; no '+' or '@')"
            ),
        );
    }
    if s.smime.quarantine_keep_free > 100 {
        bad(
            "smime.quarantine_keep_free",
            format!(
                "{}% is not a share of the file system",
                s.smime.quarantine_keep_free
            ),
        );
    }
    if s.spool.dir.as_os_str().is_empty() {
        bad("spool.dir", "must name a directory".into());
    }
    for (key, hop) in [
        ("relay.internal", &s.relay.internal),
        ("relay.external", &s.relay.external),
    ] {
        if let Err(e) = parse_host_port(hop) {
            bad(key, e.to_string());
        }
    }
    if let Some(ca) = &s.relay.tls_ca {
        if !ca.is_file() {
            bad("relay.tls_ca", format!("{}: no such file", ca.display()));
        }
    }
    for (key, hop) in [
        ("relay.internal_tls", &s.relay.internal_tls),
        ("relay.external_tls", &s.relay.external_tls),
    ] {
        if let Some(ca) = &hop.ca {
            if !ca.is_file() {
                bad(
                    &format!("{key}.ca"),
                    format!("{}: no such file", ca.display()),
                );
            }
        }
        if let Some(fp) = &hop.fingerprint {
            if super::normal_fingerprint(fp).is_none() {
                bad(
                    &format!("{key}.fingerprint"),
                    format!("{fp:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"),
                );
            }
            if hop.ca.is_some() {
                bad(
                    &format!("{key}.fingerprint"),
                    "give ca or fingerprint, not both (a pinned certificate needs no CA)".into(),
                );
            }
        }
        if hop.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            bad(&format!("{key}.name"), "must not be empty".into());
        }
    }
    // What a hop must prove is asked only with `tls = "required"`: with
    // another mode a table or CA would be ignored, and mail would leave
    // over plain TCP when STARTTLS is stripped on the path.
    if s.relay.tls != super::RelayTls::Required {
        for (key, set) in [
            ("relay.tls_ca", s.relay.tls_ca.is_some()),
            (
                "relay.internal_tls",
                s.relay.internal_tls != super::HopTls::default(),
            ),
            (
                "relay.external_tls",
                s.relay.external_tls != super::HopTls::default(),
            ),
        ] {
            if set {
                bad(
                    key,
                    "is checked only with relay.tls = \"required\": set that, or remove it".into(),
                );
            }
        }
    }
    if s.relay.internal == s.relay.external && s.relay.internal_tls != s.relay.external_tls {
        bad(
            "relay.external_tls",
            "relay.internal and relay.external are the same hop; give it one TLS table".into(),
        );
    }
    if s.queue.retry_intervals.is_empty() {
        bad(
            "queue.retry_intervals",
            "at least one interval is needed, e.g. [\"1m\", \"5m\"]".into(),
        );
    }
    for (i, d) in s.queue.retry_intervals.iter().enumerate() {
        if *d == Duration::ZERO {
            bad(
                &format!("queue.retry_intervals[{i}]"),
                "must be longer than zero".into(),
            );
        }
    }
    for (i, id) in s.identities.iter().enumerate() {
        let key = format!("identity[{i}]");
        match (&id.pkcs12, &id.cert, &id.key) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => bad(
                &key,
                "give either pkcs12 = \"file.p12\", or cert = \"file.pem\" with key = \"file.pem\""
                    .into(),
            ),
        }
        if id.pkcs12.is_some() && id.password_file.is_none() && id.password_env.is_none() {
            bad(
                &key,
                "a PKCS#12 file needs password_file or password_env (never the password itself)"
                    .into(),
            );
        }
        if id.password_file.is_some() && id.password_env.is_some() {
            bad(&key, "give password_file or password_env, not both".into());
        }
        for (j, m) in id.mailboxes.iter().enumerate() {
            if !m.contains('@') {
                bad(
                    &format!("{key}.mailboxes[{j}]"),
                    format!("{m:?} is not an address"),
                );
            }
        }
        for (j, m) in id.decrypt_for.iter().flatten().enumerate() {
            let ok = m == "*"
                || m.strip_prefix("*@").is_some_and(is_domain)
                || (m.contains('@') && !m.contains('*'));
            if !ok {
                bad(
                    &format!("{key}.decrypt_for[{j}]"),
                    format!("{m:?} is not an address, \"*@domain\" or \"*\""),
                );
            }
        }
    }
    for (i, m) in s.mailboxes.iter().enumerate() {
        let domain = m.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !m.address.contains('@') || !is_domain(domain) {
            bad(
                &format!("mailbox[{i}].address"),
                format!("{:?} is not an address or *@domain", m.address),
            );
        }
        if !m.send_as.is_empty() && m.address.starts_with("*@") {
            bad(
                &format!("mailbox[{i}].send_as"),
                "send_as belongs to one address (a shared mailbox), not to *@domain".into(),
            );
        }
        if !m.migrate_from.is_empty() && m.address.starts_with("*@") {
            bad(
                &format!("mailbox[{i}].migrate_from"),
                "migrate_from names one mailbox's stored mail: an address, not *@domain".into(),
            );
        }
        for (j, p) in m.send_as.iter().enumerate() {
            let domain = p.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            let local = p.rsplit_once('@').map(|(l, _)| l).unwrap_or("");
            if !is_domain(domain) || local.is_empty() || (local.contains('*') && local != "*") {
                bad(
                    &format!("mailbox[{i}].send_as[{j}]"),
                    format!("{p:?} is not an address or *@domain"),
                );
            }
        }
    }
    for (i, a) in s.migrate.extra_recipients.iter().enumerate() {
        let (local, domain) = a.rsplit_once('@').unwrap_or(("", ""));
        if local.is_empty() || local.contains('*') || !is_domain(domain) {
            bad(
                &format!("migrate.extra_recipients[{i}]"),
                format!("{a:?} is not an address"),
            );
        }
    }
    for (i, r) in s.rules.iter().enumerate() {
        let key = format!("rule[{i}]");
        if r.name.trim().is_empty() {
            bad(&format!("{key}.name"), "every rule needs a name".into());
        }
        if r.patterns.is_empty() {
            bad(
                &format!("{key}.match"),
                "at least one pattern is needed, e.g. [\"*@domstol.dk\"]".into(),
            );
        }
        for (j, p) in r.patterns.iter().enumerate() {
            let ok = p == "*"
                || p.strip_prefix("*@").is_some_and(is_domain)
                || p.strip_prefix("*.").is_some_and(is_domain)
                || (p.contains('@') && !p.contains('*'));
            if !ok {
                bad(
                    &format!("{key}.match[{j}]"),
                    format!("{p:?}: write \"*\", \"*@domain\", \"*.domain\" or an address"),
                );
            }
        }
        if r.encrypt == crate::config::EncryptMode::Required
            && r.on_missing_certificate == crate::config::OnMissing::SendPlain
        {
            bad(
                &format!("{key}.on_missing_certificate"),
                "\"send-plain\" contradicts encrypt = \"required\"; use \"bounce\" or \"hold\""
                    .into(),
            );
        }
        if let (Some(f), Some(u)) = (r.from, r.until) {
            if f >= u {
                bad(&format!("{key}.until"), "must be later than from".into());
            }
        }
    }
    for (i, l) in s.certificates.ldap.iter().enumerate() {
        if !(l.url.starts_with("ldap://") || l.url.starts_with("ldaps://")) {
            bad(
                &format!("certificates.ldap[{i}].url"),
                format!("{:?} is not an ldap:// or ldaps:// URL", l.url),
            );
        }
        if l.starttls && l.url.starts_with("ldaps://") {
            bad(
                &format!("certificates.ldap[{i}].starttls"),
                "ldaps:// is TLS already; StartTLS is for ldap:// URLs".into(),
            );
        }
        if let Some(ca) = &l.tls_ca {
            if !ca.is_file() {
                bad(
                    &format!("certificates.ldap[{i}].tls_ca"),
                    format!("{}: no such file", ca.display()),
                );
            }
        }
        if !l.filter.contains("{address}") {
            bad(
                &format!("certificates.ldap[{i}].filter"),
                "must contain {address}".into(),
            );
        }
    }
    for (i, d) in s.certificates.dirs.iter().enumerate() {
        if !d.exists() {
            bad(
                &format!("certificates.dirs[{i}]"),
                format!("{}: no such file or directory", d.display()),
            );
        }
    }
    for (i, a) in s.trust.anchors.iter().enumerate() {
        if !a.exists() {
            bad(
                &format!("trust.anchors[{i}]"),
                format!("{}: no such file or directory", a.display()),
            );
        }
    }
    for (i, t) in s.trust.organisations.iter().enumerate() {
        if t.domains.is_empty() {
            bad(
                &format!("trust.organisation[{i}].domains"),
                "names no domain".into(),
            );
        }
        for d in t.domains.iter().filter(|d| !is_domain(d)) {
            bad(
                &format!("trust.organisation[{i}].domains"),
                format!("{d:?} is not a domain"),
            );
        }
        if let Some(cvr) = &t.cvr {
            if cvr.len() != 8 || !cvr.chars().all(|c| c.is_ascii_digit()) {
                bad(
                    &format!("trust.organisation[{i}].cvr"),
                    format!("{cvr:?} is not a CVR number (8 digits)"),
                );
            }
        }
    }
    if let Some(ca) = &s.journal.tls_ca {
        if !s.journal.is_postgres() {
            bad(
                "journal.tls_ca",
                "only for a PostgreSQL journal (journal.database = \"postgres://…\")".into(),
            );
        } else if !ca.is_file() {
            bad("journal.tls_ca", format!("{}: no such file", ca.display()));
        }
    }
    if let Some(db) = &s.journal.database {
        if db.trim().is_empty() {
            bad(
                "journal.database",
                "empty; write \"postgres://user@host/db\" or the path of an SQLite file, or leave it out".into(),
            );
        } else if db.contains("://") && !s.journal.is_postgres() {
            bad(
                "journal.database",
                format!("{db:?}: only postgres:// (or postgresql://) URLs and SQLite file paths are understood"),
            );
        }
    }
    out
}

/// Splits `host:port` (or `[v6]:port`) into its parts.
pub fn parse_host_port(text: &str) -> Result<(String, u16), ValueError> {
    let not = |why: &'static str| ValueError::HostPort {
        text: text.to_string(),
        why,
    };
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| not("is not host:port (e.g. \"127.0.0.1:10026\")"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(not("has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(not("has port 0, which is not a port")),
        Ok(port) => Ok((host.to_string(), port)),
        Err(_) => Err(not("has no valid port number")),
    }
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests;

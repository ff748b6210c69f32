//! Certificate lookup in an LDAP directory (e.g. the OCES2 public
//! directory): `(mail=<address>)` under a base, the certificate attribute
//! in binary. A server that cannot be reached is a temporary failure.

use std::time::Duration;

use ldap3::{ldap_escape, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use openssl::x509::X509;

use crate::config::LdapSettings;

/// Certificates the directory holds for `address`.
pub async fn lookup(cfg: &LdapSettings, address: &str) -> Result<Vec<X509>, String> {
    let filter = cfg.filter.replace("{address}", &ldap_escape(address));
    let work = async {
        let settings = LdapConnSettings::new().set_conn_timeout(cfg.timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        ldap3::drive!(conn);
        let result = ldap
            .with_timeout(cfg.timeout)
            .search(
                &cfg.base,
                Scope::Subtree,
                &filter,
                vec![cfg.attribute.as_str()],
            )
            .await
            .map_err(|e| format!("search failed: {e}"))?
            .success()
            .map_err(|e| format!("search failed: {e}"));
        let _ = ldap.unbind().await;
        let (entries, _) = result?;
        let mut certs = Vec::new();
        for entry in entries {
            let entry = SearchEntry::construct(entry);
            for values in entry.bin_attrs.values().chain(std::iter::empty()) {
                for der in values {
                    if let Ok(c) = X509::from_der(der) {
                        certs.push(c);
                    }
                }
            }
        }
        Ok(certs)
    };
    match tokio::time::timeout(cfg.timeout + Duration::from_secs(1), work).await {
        Ok(r) => r.map_err(|e: String| format!("LDAP {}: {e}", cfg.url)),
        Err(_) => Err(format!("LDAP {}: timed out", cfg.url)),
    }
}

//! Typed settings of the gateway: what `config/gateway.toml` may contain.
//!
//! The structs here are the public configuration interface; every key is
//! documented in `config/gateway.toml`. Loading (file, then `SMIMEGW__`
//! environment overrides) lives in `load`, semantic checks in `validate`.

mod duration;
mod load;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use load::{load, ConfigError, Problem};

/// The whole configuration, one immutable snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub spool: SpoolSettings,
    pub relay: RelaySettings,
    #[serde(default)]
    pub queue: QueueSettings,
    /// `[[identity]]`: the organisation's private keys.
    #[serde(default, rename = "identity")]
    pub identities: Vec<IdentitySettings>,
    /// `[[mailbox]]`: how mail for internal addresses is handed on.
    #[serde(default, rename = "mailbox")]
    pub mailboxes: Vec<MailboxSettings>,
    #[serde(default)]
    pub trust: TrustSettings,
    #[serde(default)]
    pub smime: SmimeSettings,
}

/// `[[identity]]`: one private key with its certificate.
#[derive(Debug, Clone, Deserialize)]
pub struct IdentitySettings {
    /// PKCS#12 file (certificate, key and chain).
    pub pkcs12: Option<PathBuf>,
    /// PEM certificate (chain after the leaf), with `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key, with `cert`.
    pub key: Option<PathBuf>,
    /// File holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Addresses this key serves; empty means the whole organisation.
    #[serde(default)]
    pub mailboxes: Vec<String>,
}

/// `[[mailbox]]`: delivery of decrypted mail to an address or a domain.
#[derive(Debug, Clone, Deserialize)]
pub struct MailboxSettings {
    /// `user@domain` or `*@domain`.
    pub address: String,
    #[serde(default)]
    pub deliver: Deliver,
    #[serde(default)]
    pub encryption: Encryption,
}

/// What the mailbox receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Deliver {
    /// Decrypted.
    #[default]
    Plain,
    /// Decrypted, then encrypted again to the mailbox's current OCES3 key.
    Reencrypt,
}

/// Content encryption and key transport for mail the gateway encrypts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// AES-256-CBC with RSA PKCS#1 v1.5: what every client reads.
    #[default]
    Aes256Cbc,
    /// AES-256-GCM (AuthEnvelopedData) with RSA-OAEP.
    Aes256GcmOaep,
}

/// `[trust]`: certificates that signatures must chain to.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrustSettings {
    /// Files or directories of PEM/DER CA certificates.
    #[serde(default)]
    pub anchors: Vec<PathBuf>,
}

/// `[smime]`: handling of S/MIME mail.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SmimeSettings {
    #[serde(default)]
    pub on_undecryptable: OnUndecryptable,
    /// Refuse key files readable by group or others (otherwise a warning).
    #[serde(default)]
    pub strict_permissions: bool,
}

/// What happens to encrypted mail the gateway cannot open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUndecryptable {
    /// Delivered unchanged, with a header saying why.
    #[default]
    Deliver,
    /// Kept in the spool's quarantine until an operator releases it.
    Quarantine,
}

/// `[server]`: the inbound ESMTP listener.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    #[serde(default)]
    pub internal_domains: Vec<String>,
    #[serde(default)]
    pub trusted_networks: Vec<IpNet>,
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: u64,
    #[serde(default = "defaults::max_recipients")]
    pub max_recipients: usize,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    #[serde(default = "defaults::command_timeout", with = "duration")]
    pub command_timeout: Duration,
    #[serde(default = "defaults::data_timeout", with = "duration")]
    pub data_timeout: Duration,
    #[serde(default = "defaults::shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    pub tls: Option<ServerTls>,
}

/// `[server.tls]`: certificate and key offered with STARTTLS.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[spool]`: where accepted mail is kept until delivered.
#[derive(Debug, Clone, Deserialize)]
pub struct SpoolSettings {
    pub dir: PathBuf,
}

/// `[relay]`: next hops for outgoing mail.
#[derive(Debug, Clone, Deserialize)]
pub struct RelaySettings {
    pub internal: String,
    pub external: String,
    #[serde(default)]
    pub tls: RelayTls,
    #[serde(default = "defaults::connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::relay_timeout", with = "duration")]
    pub timeout: Duration,
}

/// How the gateway uses STARTTLS towards a next hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// STARTTLS when the next hop offers it, plain otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS or no delivery (a temporary failure).
    Required,
    /// Never STARTTLS.
    None,
}

/// `[queue]`: retry schedule and lifetime of queued mail.
#[derive(Debug, Clone, Deserialize)]
pub struct QueueSettings {
    #[serde(default = "defaults::retry_intervals", with = "duration::list")]
    pub retry_intervals: Vec<Duration>,
    #[serde(default = "defaults::max_lifetime", with = "duration")]
    pub max_lifetime: Duration,
    #[serde(default = "defaults::max_deliveries")]
    pub max_deliveries: usize,
    #[serde(default = "defaults::scan_interval", with = "duration")]
    pub scan_interval: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            retry_intervals: defaults::retry_intervals(),
            max_lifetime: defaults::max_lifetime(),
            max_deliveries: defaults::max_deliveries(),
            scan_interval: defaults::scan_interval(),
        }
    }
}

impl ServerSettings {
    /// True when `domain` (any case) is one of `internal_domains`.
    pub fn is_internal_domain(&self, domain: &str) -> bool {
        self.internal_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// True when `ip` lies in one of `trusted_networks`.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_networks.iter().any(|n| n.contains(&ip))
    }
}

impl Settings {
    /// The `[[mailbox]]` entry for `addr`: an exact address first, then
    /// `*@domain`.
    pub fn mailbox(&self, addr: &str) -> Option<&MailboxSettings> {
        let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.mailboxes
            .iter()
            .find(|m| m.address.eq_ignore_ascii_case(addr))
            .or_else(|| {
                self.mailboxes.iter().find(|m| {
                    m.address
                        .strip_prefix("*@")
                        .is_some_and(|d| d.eq_ignore_ascii_case(domain))
                })
            })
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) to plain IPv4.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

mod defaults {
    use std::time::Duration;

    pub fn max_message_size() -> u64 {
        50 * 1024 * 1024
    }
    pub fn max_recipients() -> usize {
        100
    }
    pub fn max_connections() -> usize {
        1000
    }
    pub fn max_connections_per_ip() -> usize {
        50
    }
    pub fn command_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn data_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn shutdown_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn relay_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn retry_intervals() -> Vec<Duration> {
        [60, 300, 900, 3600]
            .into_iter()
            .map(Duration::from_secs)
            .collect()
    }
    pub fn max_lifetime() -> Duration {
        Duration::from_secs(5 * 24 * 3600)
    }
    pub fn max_deliveries() -> usize {
        20
    }
    pub fn scan_interval() -> Duration {
        Duration::from_secs(30)
    }
}

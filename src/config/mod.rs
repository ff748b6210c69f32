//! Typed settings of the gateway: what `config/gateway.toml` may contain.
//!
//! The structs here are the public configuration interface; every key is
//! documented in `config/gateway.toml`. Loading (file, then `SMIMEGW__`
//! environment overrides) lives in `load`, semantic checks in `validate`.
//!
//! Why one long file: it mirrors `config/gateway.toml` section by
//! section, with each key's meaning and default where a reader looks.

mod duration;
pub mod load;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::mail::address::{domain_key, fold_case, key, normalize, pattern_key};

pub use duration::parse as parse_duration;
pub use load::{load, ConfigError, Problem};

/// Where a long-running part (the SMTP listener, the metrics probe, the
/// recipient verifier) reads the settings in force: it sees a reload at
/// its next read.
pub trait SettingsSource: Send + Sync {
    fn settings(&self) -> std::sync::Arc<Settings>;
}

/// Fixed settings, for tools and tests.
impl SettingsSource for std::sync::Arc<Settings> {
    fn settings(&self) -> std::sync::Arc<Settings> {
        std::sync::Arc::clone(self)
    }
}

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
    #[serde(default)]
    pub certificates: CertificateSettings,
    #[serde(default)]
    pub policy: PolicySettings,
    /// `[[rule]]`: per-recipient outbound rules, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSettings>,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub status: StatusSettings,
    #[serde(default)]
    pub journal: JournalSettings,
    #[serde(default)]
    pub migrate: MigrateSettings,
}

/// `[migrate]`: what `smime-gateway migrate` adds to every re-keyed copy,
/// and how long it waits for an IMAP server.
#[derive(Debug, Clone, Deserialize)]
pub struct MigrateSettings {
    /// Addresses (e.g. the firm's archive or escrow) whose certificate
    /// every re-keyed copy is also encrypted to, besides the mailbox's
    /// current OCES3 certificate; found in the certificate sources and
    /// checked as any recipient's.
    #[serde(default)]
    pub extra_recipients: Vec<String>,
    /// How long an IMAP server may take to accept the connection and to
    /// answer each command (an APPEND or a FETCH of messages also gets
    /// time for its size).
    #[serde(default = "defaults::imap_timeout", with = "duration")]
    pub imap_timeout: Duration,
}

impl Default for MigrateSettings {
    fn default() -> Self {
        Self {
            extra_recipients: Vec::new(),
            imap_timeout: defaults::imap_timeout(),
        }
    }
}

/// `[journal]`: the record of outbound decisions and inbound key use that
/// `cutoff report` and `keys usage` read.
#[derive(Debug, Clone, Deserialize)]
pub struct JournalSettings {
    /// Keep a journal at all.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// `postgres://…` (shared by several gateways), or the path of an
    /// SQLite file; none: `<spool>/journal/journal.db`.
    pub database: Option<String>,
    /// Records older than this are deleted.
    #[serde(default = "defaults::journal_keep", with = "duration")]
    pub keep: Duration,
    /// CA certificates (PEM file) that PostgreSQL's TLS certificate must
    /// chain to, besides the system's roots.
    pub tls_ca: Option<PathBuf>,
}

impl Default for JournalSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            database: None,
            keep: defaults::journal_keep(),
            tls_ca: None,
        }
    }
}

impl JournalSettings {
    /// True when the journal lives in PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.database
            .as_deref()
            .is_some_and(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"))
    }
}

/// `[metrics]`: the Prometheus and health listener.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetricsSettings {
    /// Address for /metrics, /healthz and /readyz; none: no listener.
    pub listen: Option<SocketAddr>,
    /// A listener of its own for /healthz and /readyz only (no /metrics),
    /// for the liveness and readiness prober: connections to `listen`,
    /// however many and from wherever, do not take its places. A bare
    /// port means 127.0.0.1; none: no such listener.
    #[serde(default, deserialize_with = "listen_address")]
    pub health_listen: Option<SocketAddr>,
    /// A file holding the token (16 characters or more) a scraper must
    /// present to read /metrics (Bearer, or Basic with any user name);
    /// without it, /metrics is served to this host only. /healthz and
    /// /readyz are served to anyone.
    pub token_file: Option<PathBuf>,
}

/// `[status]`: the read-only status page (identities, queue, cutoff
/// readiness). It shows addresses: only operators should reach it.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusSettings {
    /// Address of the page; a bare port means 127.0.0.1; none: no page.
    #[serde(default, deserialize_with = "listen_address")]
    pub listen: Option<SocketAddr>,
    /// How often the readiness at the configured cutoff (the page's
    /// default table and the readiness gauges) is computed again; a
    /// reload recomputes it at once.
    #[serde(default = "defaults::status_refresh", with = "duration")]
    pub refresh: Duration,
    /// A file holding the token a browser must present (HTTP Basic, any
    /// user name); without it, the page is served to this host only.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for StatusSettings {
    fn default() -> Self {
        Self {
            listen: None,
            refresh: defaults::status_refresh(),
            token_file: None,
        }
    }
}

/// `"HOST:PORT"`, or a bare port (`9326` or `"9326"`) on 127.0.0.1.
fn listen_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Port(u16),
        Text(String),
    }
    let text = match Written::deserialize(d)? {
        Written::Port(p) => return Ok(Some(SocketAddr::from(([127, 0, 0, 1], p)))),
        Written::Text(t) => t,
    };
    let text = text.trim();
    if let Ok(p) = text.parse::<u16>() {
        return Ok(Some(SocketAddr::from(([127, 0, 0, 1], p))));
    }
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address; write \"127.0.0.1:9326\" or a port alone (loopback)"
        ))
    })
}

/// `[certificates]`: where recipients' certificates come from.
#[derive(Debug, Clone, Deserialize)]
pub struct CertificateSettings {
    /// Folders (or files) of PEM, DER and PKCS#7 certificates.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Keep the signer certificates of validly signed incoming mail.
    #[serde(default = "defaults::yes")]
    pub harvest: bool,
    #[serde(default)]
    pub ldap: Vec<LdapSettings>,
}

impl Default for CertificateSettings {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            harvest: true,
            ldap: Vec::new(),
        }
    }
}

/// `[[certificates.ldap]]`: a directory asked when no local certificate
/// is usable.
#[derive(Debug, Clone, Deserialize)]
pub struct LdapSettings {
    pub url: String,
    pub base: String,
    #[serde(default = "defaults::ldap_filter")]
    pub filter: String,
    #[serde(default = "defaults::ldap_attribute")]
    pub attribute: String,
    #[serde(default = "defaults::ldap_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "defaults::ldap_cache_ttl", with = "duration")]
    pub cache_ttl: Duration,
    /// StartTLS on an `ldap://` URL (verified like `ldaps://`).
    #[serde(default)]
    pub starttls: bool,
    /// PEM CA certificates the server must chain to (`ldaps://` and
    /// StartTLS), instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
}

impl LdapSettings {
    /// True when the server is reached over verified TLS (`ldaps://`, or
    /// StartTLS on `ldap://`): only then is its answer for an address a
    /// reason to encrypt to a certificate. Plain `ldap://` can be answered
    /// by anyone on the path, so it serves only to find signers'
    /// certificates, which their signatures then bind.
    pub fn authenticated(&self) -> bool {
        self.starttls || self.url.starts_with("ldaps://")
    }
}

/// How certificate revocation is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Revocation {
    /// Check CRL and OCSP; accept when no source can be reached (so
    /// whoever can block the sources makes a revoked certificate usable).
    SoftFail,
    /// Check; when no source can be reached, defer the message.
    #[default]
    HardFail,
    Off,
}

/// A configuration value that does not parse, with the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid duration {text:?} ({reason}); write e.g. \"30s\", \"5m\", \"1h\", \"5d\"")]
    Duration { text: String, reason: String },
    #[error(
        "{text:?} is not an RFC 3339 time ({reason}); write e.g. \"2023-10-31T23:59:59+01:00\""
    )]
    Instant { text: String, reason: String },
    #[error("{text:?} {why}")]
    HostPort { text: String, why: &'static str },
    #[error(
        "{text:?} is neither a date nor an RFC 3339 time; write e.g. \"2027-03-01\" (the start of that day in Danish time) or \"2027-03-01T12:00:00+01:00\""
    )]
    When { text: String },
}

/// An instant written in RFC 3339 (`2023-10-31T23:59:59+01:00`), or a
/// bare date (`2027-03-01`: the start of that day in Danish time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant {
    /// Unix seconds.
    pub unix: i64,
}

impl Instant {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| Instant {
                unix: t.timestamp(),
            })
            .map_err(|e| ValueError::Instant {
                text: text.to_string(),
                reason: e.to_string(),
            })
    }
}

impl Instant {
    /// A time as operators write it on the command line (`explain --at`,
    /// `cutoff report --at`): an RFC 3339 time, or a bare date
    /// (`YYYY-MM-DD`), which means the start of that day in Danish time
    /// (Europe/Copenhagen, summer time included).
    pub fn parse_when(text: &str) -> Result<Self, ValueError> {
        use chrono::TimeZone;
        let t = text.trim();
        if let Ok(day) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return day
                .and_hms_opt(0, 0, 0)
                .and_then(|m| {
                    chrono_tz::Europe::Copenhagen
                        .from_local_datetime(&m)
                        .earliest()
                })
                .map(|d| Instant {
                    unix: d.timestamp(),
                })
                .ok_or_else(|| ValueError::When {
                    text: text.to_string(),
                });
        }
        Self::parse(t).map_err(|_| ValueError::When {
            text: text.to_string(),
        })
    }
}

impl std::fmt::Display for Instant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match chrono::DateTime::from_timestamp(self.unix, 0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%SZ")),
            None => write!(f, "@{}", self.unix),
        }
    }
}

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Instant::parse_when(&text).map_err(serde::de::Error::custom)
    }
}

/// `[policy]`: what holds for every outbound rule.
#[derive(Debug, Clone, Deserialize)]
pub struct PolicySettings {
    /// After this instant OCES2 certificates are not used for signing or
    /// encryption, unless a rule asks for OCES2 explicitly.
    pub oces2_cutoff: Option<Instant>,
    /// Also encrypt to the organisation's own OCES3 certificate.
    #[serde(default = "defaults::yes")]
    pub encrypt_to_self: bool,
    /// Signature scheme: "pkcs1" (RSASSA-PKCS1-v1_5) or "pss".
    #[serde(default)]
    pub signature: SignatureScheme,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            oces2_cutoff: None,
            encrypt_to_self: true,
            signature: SignatureScheme::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureScheme {
    #[default]
    Pkcs1,
    Pss,
}

/// Which certificate generation a rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerationChoice {
    Oces2,
    Oces3,
    #[default]
    Any,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptMode {
    Required,
    #[default]
    IfPossible,
    Never,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMissing {
    Bounce,
    Hold,
    #[default]
    SendPlain,
}

/// `[[rule]]`: what mail to matching recipients gets.
#[derive(Debug, Clone, Deserialize)]
pub struct RuleSettings {
    pub name: String,
    /// `*`, `*@domain`, `*.domain` (subdomains) or an address.
    #[serde(rename = "match")]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub generation: GenerationChoice,
    /// The rule applies from this instant on (optional).
    pub from: Option<Instant>,
    /// ... and until this instant (optional).
    pub until: Option<Instant>,
    #[serde(default)]
    pub encrypt: EncryptMode,
    #[serde(default)]
    pub sign: Sign,
    #[serde(default)]
    pub on_missing_certificate: OnMissing,
    /// Content encryption for this rule (default: `aes256-cbc`).
    pub encryption: Option<Encryption>,
}

/// Whether a rule signs: `true` (sign when the sender may have mail
/// signed, else send unsigned and log it), `false`, or `"required"`
/// (bounce to the sender when the mail may not be signed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sign {
    Never,
    #[default]
    WhenAllowed,
    Required,
}

impl Sign {
    pub fn wanted(self) -> bool {
        self != Sign::Never
    }
}

impl std::fmt::Display for Sign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sign::Never => "false",
            Sign::WhenAllowed => "true",
            Sign::Required => "\"required\"",
        })
    }
}

impl<'de> Deserialize<'de> for Sign {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Word(String),
        }
        match Written::deserialize(d)? {
            Written::Flag(true) => Ok(Sign::WhenAllowed),
            Written::Flag(false) => Ok(Sign::Never),
            Written::Word(w) => match w.as_str() {
                "required" => Ok(Sign::Required),
                "true" => Ok(Sign::WhenAllowed),
                "false" => Ok(Sign::Never),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?}: write true, false or \"required\""
                ))),
            },
        }
    }
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
    /// What the key is: the personal key of these addresses; empty means
    /// an organisation key (it signs and is encrypted to for the whole
    /// organisation).
    #[serde(default)]
    pub mailboxes: Vec<String>,
    /// Whose mail the key opens: addresses, `*@domain`, or `*` (every
    /// internal address). Default: every internal address for an
    /// organisation key, its own `mailboxes` for a personal key.
    pub decrypt_for: Option<Vec<String>>,
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
    /// Envelope senders (addresses or `*@domain`) allowed to send mail with
    /// this address in the header From and have it signed (shared
    /// mailboxes).
    #[serde(default)]
    pub send_as: Vec<String>,
    /// For `migrate`: IMAP logins and archive folder names (a Maildir,
    /// mbox or `.eml` folder's own name) whose stored mail is this
    /// mailbox's; `--mailbox` on the command line wins.
    #[serde(default)]
    pub migrate_from: Vec<String>,
}

impl MailboxSettings {
    /// True when `send_as` lists `sender` (an address, any case) or its
    /// domain.
    pub fn lets_send_as(&self, sender: &str) -> bool {
        let sender = normalize(sender);
        let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let wanted = key(&sender);
        self.send_as.iter().any(|p| match p.strip_prefix("*@") {
            Some(d) => !domain.is_empty() && domain_key(d) == domain,
            None => key(p) == wanted,
        })
    }
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

/// `[trust]`: certificates that signatures and recipient certificates
/// must chain to, and how revocation is checked.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrustSettings {
    /// Files or directories of PEM/DER CA certificates.
    #[serde(default)]
    pub anchors: Vec<PathBuf>,
    #[serde(default)]
    pub revocation: Revocation,
    /// Time allowed for one CRL or OCSP request.
    #[serde(default = "defaults::revocation_timeout", with = "duration")]
    pub revocation_timeout: Duration,
    /// `[[trust.organisation]]`: organisation certificates that sign for
    /// the staff of the domains named (inbound signatures: `from=organisation`).
    #[serde(default, rename = "organisation")]
    pub organisations: Vec<OrganisationTie>,
}

/// One organisation whose organisation certificates (by CVR number, or by
/// an address in one of the domains) sign mail for all its domains.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OrganisationTie {
    /// The organisation's CVR number.
    #[serde(default)]
    pub cvr: Option<String>,
    /// The From domains its organisation certificates sign for.
    pub domains: Vec<String>,
}

/// `[smime]`: handling of S/MIME mail.
#[derive(Debug, Clone, Deserialize)]
pub struct SmimeSettings {
    #[serde(default)]
    pub on_undecryptable: OnUndecryptable,
    /// Refuse key files readable by group or others (otherwise a warning).
    #[serde(default)]
    pub strict_permissions: bool,
    /// Local part of the gateway's own envelope sender for S/MIME mail to
    /// internal mailboxes: `<return_path>+<queue id>@<server.hostname>`.
    #[serde(default = "defaults::return_path")]
    pub return_path: String,
    /// Percent of the spool's file system the quarantine leaves free:
    /// below it, mail `on_undecryptable = "quarantine"` would keep is
    /// delivered unchanged with the reason (anyone outside can send junk
    /// that no key opens; it must not fill the disk the queue needs).
    #[serde(default = "defaults::quarantine_keep_free")]
    pub quarantine_keep_free: u8,
}

impl Default for SmimeSettings {
    fn default() -> Self {
        Self {
            on_undecryptable: OnUndecryptable::default(),
            strict_permissions: false,
            return_path: defaults::return_path(),
            quarantine_keep_free: defaults::quarantine_keep_free(),
        }
    }
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
    /// The submission path: when set, only mail taken here may be signed.
    #[serde(default)]
    pub submission_listen: Vec<SocketAddr>,
    /// Without a submission path, mail from `trusted_networks` on `listen`
    /// may be signed only when this is true: the operator vouches that the
    /// mail server ties MAIL FROM to a logged-in user for everything it
    /// hands the gateway (port 25 and re-injected mail included). Off by
    /// default: nothing is signed until one of the two is set.
    #[serde(default)]
    pub sign_without_submission_path: bool,
    #[serde(default)]
    pub internal_domains: Vec<String>,
    /// The characters that start an address extension (`alice+x@…` is
    /// delivered to `alice@…`), as Postfix's `recipient_delimiter` and
    /// Dovecot's: `[[mailbox]]` entries and rules on an exact address hold
    /// for its extensions too. Empty: none.
    #[serde(default = "defaults::recipient_delimiter")]
    pub recipient_delimiter: String,
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
    /// IPv6 clients are counted per network of this prefix length.
    #[serde(default = "defaults::ipv6_prefix")]
    pub ipv6_prefix: u8,
    #[serde(default = "defaults::command_timeout", with = "duration")]
    pub command_timeout: Duration,
    #[serde(default = "defaults::data_timeout", with = "duration")]
    pub data_timeout: Duration,
    /// The longest a whole session may last.
    #[serde(default = "defaults::session_timeout", with = "duration")]
    pub session_timeout: Duration,
    /// Octets per second a client must average during DATA (0: no check),
    /// measured once DATA has run for `data_rate_grace`.
    #[serde(default = "defaults::min_data_rate")]
    pub min_data_rate: u64,
    #[serde(default = "defaults::data_rate_grace", with = "duration")]
    pub data_rate_grace: Duration,
    #[serde(default = "defaults::shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    /// Ask `relay.internal` at RCPT time whether an internal recipient
    /// exists (clients outside trusted_networks only).
    #[serde(default)]
    pub verify_recipients: bool,
    /// How long an answer to such a question is remembered.
    #[serde(default = "defaults::verify_cache_ttl", with = "duration")]
    pub verify_cache_ttl: Duration,
    /// How many answers are remembered at most.
    #[serde(default = "defaults::verify_cache_size")]
    pub verify_cache_size: usize,
    /// Questions per second to the mailbox server at most.
    #[serde(default = "defaults::verify_rate")]
    pub verify_rate: u32,
    /// Of those, per client (network of `ipv6_prefix` for IPv6).
    #[serde(default = "defaults::verify_rate_per_client")]
    pub verify_rate_per_client: u32,
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
    /// PEM CA certificates a next hop's certificate must chain to with
    /// `tls = "required"` (instead of the system's roots), for both hops
    /// unless a hop's own table names others.
    pub tls_ca: Option<PathBuf>,
    /// `[relay.internal_tls]`: what `relay.internal` must prove.
    #[serde(default)]
    pub internal_tls: HopTls,
    /// `[relay.external_tls]`: what `relay.external` must prove.
    #[serde(default)]
    pub external_tls: HopTls,
    #[serde(default = "defaults::connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::relay_timeout", with = "duration")]
    pub timeout: Duration,
    /// Idle connections kept per next hop for further messages (RSET
    /// between transactions); 0: one connection per message.
    #[serde(default = "defaults::reuse_connections")]
    pub reuse_connections: usize,
    /// A kept connection idle this long is closed.
    #[serde(default = "defaults::reuse_idle", with = "duration")]
    pub reuse_idle: Duration,
}

/// How the gateway uses STARTTLS towards a next hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// STARTTLS when the next hop offers it, plain otherwise; the
    /// certificate is not verified (protects against listening only).
    #[default]
    Opportunistic,
    /// STARTTLS with a verified certificate, or no delivery (a temporary
    /// failure).
    Required,
    /// Never STARTTLS.
    None,
}

/// What one next hop's certificate must be with `tls = "required"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct HopTls {
    /// The name the certificate must carry; default: the hop's host.
    pub name: Option<String>,
    /// PEM CA certificates for this hop (instead of `relay.tls_ca` or the
    /// system's roots).
    pub ca: Option<PathBuf>,
    /// SHA-256 of the hop's certificate (hex, colons allowed): this
    /// certificate and no other, whoever issued it and whatever it names.
    pub fingerprint: Option<String>,
}

impl HopTls {
    /// The pinned fingerprint as 64 lower-case hex digits, when one is set
    /// and well formed.
    pub fn pin(&self) -> Option<String> {
        self.fingerprint.as_deref().and_then(normal_fingerprint)
    }
}

/// A SHA-256 fingerprint written in hex (any case, `:` or spaces between
/// bytes allowed, optional `sha256:` prefix) as 64 lower-case hex digits.
pub fn normal_fingerprint(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: String = t
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

impl RelaySettings {
    /// What `hop` must prove with `tls = "required"`: the internal hop's
    /// table when `hop` is `relay.internal`, the external one's otherwise.
    pub fn hop_tls(&self, hop: &str) -> &HopTls {
        if hop == self.internal {
            &self.internal_tls
        } else {
            &self.external_tls
        }
    }

    /// The CA file for `hop`: its own, else `relay.tls_ca`; none means the
    /// system's roots.
    pub fn hop_ca(&self, hop: &str) -> Option<&PathBuf> {
        self.hop_tls(hop).ca.as_ref().or(self.tls_ca.as_ref())
    }
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
    /// Octets of messages in the pipeline and delivery at once.
    #[serde(default = "defaults::memory_budget")]
    pub memory_budget: u64,
    /// Messages of at least this many octets are transformed through
    /// files in the spool's work folder instead of memory.
    #[serde(default = "defaults::stream_threshold")]
    pub stream_threshold: u64,
    #[serde(default = "defaults::scan_interval", with = "duration")]
    pub scan_interval: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            retry_intervals: defaults::retry_intervals(),
            max_lifetime: defaults::max_lifetime(),
            max_deliveries: defaults::max_deliveries(),
            memory_budget: defaults::memory_budget(),
            stream_threshold: defaults::stream_threshold(),
            scan_interval: defaults::scan_interval(),
        }
    }
}

impl ServerSettings {
    /// True when `domain` (any case, U- or A-labels) is one of
    /// `internal_domains`.
    pub fn is_internal_domain(&self, domain: &str) -> bool {
        let domain = domain_key(domain);
        self.internal_domains
            .iter()
            .any(|d| domain_key(d) == domain)
    }

    /// True when `ip` lies in one of `trusted_networks`.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_networks.iter().any(|n| n.contains(&ip))
    }
}

impl RuleSettings {
    /// True when `rcpt` matches one of the patterns. Domains compare as
    /// A-labels (`domain_key`), local parts without regard to case (as
    /// `mail::address::key` compares them).
    pub fn matches(&self, rcpt: &str) -> bool {
        let rcpt = key(rcpt);
        let domain = rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.patterns.iter().any(|p| {
            let p = fold_case(&pattern_key(p));
            if p == "*" {
                true
            } else if let Some(d) = p.strip_prefix("*@") {
                domain == d
            } else if let Some(suffix) = p.strip_prefix("*.") {
                domain.ends_with(&format!(".{suffix}"))
            } else {
                rcpt == p
            }
        })
    }

    /// True when the rule's window contains `at` (Unix seconds).
    pub fn applies_at(&self, at: i64) -> bool {
        self.from.is_none_or(|f| at >= f.unix) && self.until.is_none_or(|u| at < u.unix)
    }
}

impl Settings {
    /// The gateway's return path for S/MIME mail with queue id `id`.
    pub fn return_path(&self, id: &str) -> String {
        crate::mail::return_path::tagged(&self.smime.return_path, &self.server.hostname, id)
    }

    /// When `addr` is one of the gateway's return paths: its tag.
    pub fn return_path_tag<'a>(&self, addr: &'a str) -> Option<&'a str> {
        crate::mail::return_path::tag_of(&self.smime.return_path, &self.server.hostname, addr)
    }

    /// Whether `addr` is in one of the internal domains.
    pub fn is_internal_address(&self, addr: &str) -> bool {
        crate::mail::address::domain_of(addr).is_some_and(|d| self.server.is_internal_domain(&d))
    }

    /// Whether `addr` is the organisation's own: in an internal domain or
    /// a configured mailbox. Nothing a message says binds a certificate
    /// to such an address.
    pub fn is_own_address(&self, addr: &str) -> bool {
        self.is_internal_address(addr) || self.mailbox(addr).is_some()
    }

    /// What a valid configuration does that an operator may not mean:
    /// one sentence each, said at start, on reload and by `check-config`.
    pub fn cautions(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.trust.revocation == Revocation::SoftFail {
            out.push(
                "trust.revocation = \"soft-fail\": whoever can block the CRL and OCSP servers \
                 makes a revoked certificate usable; \"hard-fail\" defers instead"
                    .to_string(),
            );
        }
        for (i, m) in self.mailboxes.iter().enumerate() {
            let internal = match m.address.strip_prefix("*@") {
                Some(domain) => self.server.is_internal_domain(domain),
                None => self.is_internal_address(&m.address),
            };
            if !internal {
                out.push(format!(
                    "mailbox[{i}] {:?} is outside server.internal_domains: mail to it is \
                     relayed outside like anyone's, and its deliver and encryption settings \
                     do not apply to it (add its domain to internal_domains if it is the \
                     organisation's)",
                    m.address
                ));
            }
        }
        out
    }

    /// `addr` without its extension (`alice+x@d` → `alice@d`, by
    /// `server.recipient_delimiter`), when it has one: where the mailbox
    /// server delivers it.
    pub fn base_address(&self, addr: &str) -> Option<String> {
        let delimiters = &self.server.recipient_delimiter;
        let (local, domain) = addr.rsplit_once('@')?;
        let cut = local.find(|c: char| delimiters.contains(c))?;
        (cut > 0).then(|| format!("{}@{domain}", &local[..cut]))
    }

    /// The `[[mailbox]]` entry for `addr`: an exact address first, then
    /// the address without its extension (mail to `alice+x@` reaches
    /// alice's mailbox, and must be treated as hers), then `*@domain`.
    pub fn mailbox(&self, addr: &str) -> Option<&MailboxSettings> {
        let addr = normalize(addr);
        let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let wanted = key(&addr);
        let base = self.base_address(&addr).map(|b| key(&b));
        self.mailboxes
            .iter()
            .find(|m| key(&m.address) == wanted)
            .or_else(|| {
                let base = base.as_ref()?;
                self.mailboxes.iter().find(|m| key(&m.address) == *base)
            })
            .or_else(|| {
                self.mailboxes.iter().find(|m| {
                    m.address
                        .strip_prefix("*@")
                        .is_some_and(|d| domain_key(d) == domain)
                })
            })
    }

    /// Writes every configured domain and address in its normal form
    /// (`mail::address`: domains as lower-case A-labels), so that what
    /// the rooms compare with an envelope's normalised addresses is
    /// written the same way: internal domains, rule patterns, mailboxes
    /// and whom they may send as, identities' mailboxes, the domains
    /// tied to organisations and the extra recipients of `migrate`.
    pub fn normalize_addresses(&mut self) {
        let all = |list: &mut Vec<String>, f: fn(&str) -> String| {
            for item in list.iter_mut() {
                *item = f(item);
            }
        };
        all(&mut self.server.internal_domains, domain_key);
        for r in &mut self.rules {
            all(&mut r.patterns, pattern_key);
        }
        for m in &mut self.mailboxes {
            m.address = pattern_key(&m.address);
            all(&mut m.send_as, pattern_key);
        }
        for id in &mut self.identities {
            all(&mut id.mailboxes, normalize);
            if let Some(list) = id.decrypt_for.as_mut() {
                all(list, pattern_key);
            }
        }
        for t in &mut self.trust.organisations {
            all(&mut t.domains, domain_key);
        }
        all(&mut self.migrate.extra_recipients, normalize);
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) to plain IPv4.
/// What per-client connection limits count: the address itself for IPv4,
/// its network of `ipv6_prefix` bits for IPv6 (one client easily holds a
/// whole /64).
pub fn limit_key(ip: std::net::IpAddr, ipv6_prefix: u8) -> std::net::IpAddr {
    match canonical_ip(ip) {
        std::net::IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            std::net::IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

mod defaults {
    use std::time::Duration;

    pub fn recipient_delimiter() -> String {
        "+".into()
    }

    pub fn quarantine_keep_free() -> u8 {
        10
    }

    pub fn yes() -> bool {
        true
    }
    pub fn imap_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn journal_keep() -> Duration {
        Duration::from_secs(400 * 86_400)
    }
    pub fn return_path() -> String {
        "smimegw-bounce".into()
    }
    pub fn verify_cache_ttl() -> Duration {
        Duration::from_secs(600)
    }
    pub fn ldap_filter() -> String {
        "(mail={address})".into()
    }
    pub fn ldap_attribute() -> String {
        "userCertificate;binary".into()
    }
    pub fn ldap_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn ldap_cache_ttl() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn revocation_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn status_refresh() -> Duration {
        Duration::from_secs(300)
    }

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
    pub fn verify_cache_size() -> usize {
        100_000
    }
    pub fn verify_rate() -> u32 {
        20
    }
    pub fn verify_rate_per_client() -> u32 {
        5
    }
    pub fn memory_budget() -> u64 {
        256 * 1024 * 1024
    }
    pub fn stream_threshold() -> u64 {
        4 * 1024 * 1024
    }
    pub fn ipv6_prefix() -> u8 {
        64
    }
    pub fn session_timeout() -> Duration {
        Duration::from_secs(30 * 60)
    }
    pub fn min_data_rate() -> u64 {
        1024
    }
    pub fn data_rate_grace() -> Duration {
        Duration::from_secs(30)
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
    pub fn reuse_connections() -> usize {
        20
    }
    pub fn reuse_idle() -> Duration {
        Duration::from_secs(5)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn own_addresses_are_internal_domains_and_mailboxes() {
        let s = super::load::test_settings(
            "[[mailbox]]\naddress = \"arkiv@partner-firm.dk\"\ndeliver = \"plain\"\n",
        );
        assert!(s.is_own_address("Archive@EXAMPLE-LAW.dk"));
        assert!(s.is_own_address("arkiv@partner-firm.dk"));
        assert!(!s.is_own_address("post@domstol.dk"));
        assert!(!s.is_own_address("x@example-law.dk.evil.example"));
    }

    #[test]
    fn cautions_name_soft_fail_and_mailboxes_outside_the_internal_domains() {
        assert!(super::load::test_settings("").cautions().is_empty());
        let s = super::load::test_settings(
            "[trust]\nrevocation = \"soft-fail\"\n\
             [[mailbox]]\naddress = \"arkiv@example-law.dk\"\n\
             [[mailbox]]\naddress = \"arkiv@old-law.dk\"\ndeliver = \"reencrypt\"\n\
             [[mailbox]]\naddress = \"*@old-law.dk\"\n\
             [[mailbox]]\naddress = \"*@EXAMPLE-law.dk\"\n",
        );
        let c = s.cautions();
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(c[0].contains("soft-fail"));
        assert!(c[1].starts_with("mailbox[1] \"arkiv@old-law.dk\" is outside"));
        assert!(c[2].starts_with("mailbox[2] \"*@old-law.dk\" is outside"));
    }

    #[test]
    fn revocation_fails_closed_unless_told_otherwise() {
        let s = super::load::test_settings("");
        assert_eq!(s.trust.revocation, Revocation::HardFail);
        let s = super::load::test_settings("[trust]\nrevocation = \"soft-fail\"\n");
        assert_eq!(s.trust.revocation, Revocation::SoftFail);
    }

    #[test]
    fn only_ldaps_and_starttls_are_authenticated_directories() {
        let s = load::test_settings(
            "[[certificates.ldap]]\nurl = \"ldap://d.example\"\nbase = \"c=DK\"\n\
             [[certificates.ldap]]\nurl = \"ldap://d.example\"\nbase = \"c=DK\"\nstarttls = true\n\
             [[certificates.ldap]]\nurl = \"ldaps://d.example\"\nbase = \"c=DK\"\n",
        );
        let got: Vec<bool> = s
            .certificates
            .ldap
            .iter()
            .map(|l| l.authenticated())
            .collect();
        assert_eq!(got, [false, true, true]);
    }

    #[test]
    fn rules_mailboxes_and_send_as_compare_addresses_alike() {
        let s = load::test_settings(
            "[[rule]]\nname = \"kim\"\nmatch = [\"Kim@Court.dk\", \"Søren@court.dk\"]\n\
             [[mailbox]]\naddress = \"Søren@firma.dk\"\nsend_as = [\"ÅSE@firma.dk\"]\n",
        );
        let rule = &s.rules[0];
        // Upper and lower case, ASCII or not, are one address everywhere
        // (before, mailboxes and send_as ignored only ASCII case).
        assert!(rule.matches("KIM@court.dk") && rule.matches("SØREN@COURT.dk"));
        assert!(s.mailbox("SØREN@firma.dk").is_some());
        assert!(s.mailbox("søren@FIRMA.dk").is_some());
        assert!(s.mailboxes[0].lets_send_as("åse@firma.dk"));
        // KELVIN SIGN lower-cases to an ASCII k: not the rule's address.
        assert!(!rule.matches("\u{212A}im@court.dk"));
        assert!(s.mailbox("s\u{F8}ren2@firma.dk").is_none());
        assert!(!s.mailboxes[0].lets_send_as("ase@firma.dk"));
    }

    #[test]
    fn rules_and_internal_domains_hold_for_u_and_a_labels() {
        let s = load::test_settings(
            "[[rule]]\nname = \"u\"\nmatch = [\"*@dømstol.dk\", \"*.rét.dk\", \"Ærlig@ÅBY.dk\"]\n\
             [[rule]]\nname = \"a\"\nmatch = [\"*@xn--tnder-vua.dk\"]\n\
             [[mailbox]]\naddress = \"*@Kontor-Ø.dk\"\n",
        );
        let (u, a) = (&s.rules[0], &s.rules[1]);
        // Loaded in normal form.
        assert_eq!(u.patterns[0], "*@xn--dmstol-bya.dk");
        for rcpt in [
            "x@xn--dmstol-bya.dk",
            "x@XN--DMSTOL-BYA.DK.",
            "x@dømstol.dk",
            "x@DØMSTOL.dk",
            "y@a.xn--rt-bja.dk",
            "y@b.RÉT.dk",
            "ærlig@xn--by-xia.dk",
            "ÆRLIG@åby.dk",
        ] {
            assert!(u.matches(rcpt), "{rcpt}");
        }
        for rcpt in [
            "x@domstol.dk",
            "x@dømstol.dk.evil",
            "y@rét.dk",
            "ærlig2@åby.dk",
        ] {
            assert!(!u.matches(rcpt), "{rcpt}");
        }
        assert!(a.matches("x@tønder.dk") && a.matches("x@TØNDER.dk"));
        assert!(!a.matches("x@tonder.dk"));
        // A rule written in code (not loaded) matches the same way.
        let raw = RuleSettings {
            patterns: vec!["*@Dømstol.dk".into()],
            ..u.clone()
        };
        assert!(raw.matches("x@xn--dmstol-bya.dk"));

        let server = ServerSettings {
            internal_domains: vec!["kontor-ø.dk".into()],
            ..s.server.clone()
        };
        for d in ["xn--kontor--w1a.dk", "KONTOR-Ø.DK", "kontor-ø.dk."] {
            assert!(server.is_internal_domain(d), "{d}");
        }
        assert!(!server.is_internal_domain("kontor-o.dk"));
        assert!(s.mailbox("bo@xn--kontor--w1a.dk").is_some());
        assert!(s.mailbox("bo@KONTOR-Ø.dk").is_some());
        assert!(s.mailbox("bo@kontor-o.dk").is_none());
    }

    #[test]
    fn a_mailbox_holds_for_its_address_extensions() {
        let s = load::test_settings(
            "[[mailbox]]\naddress = \"alice@example-law.dk\"\ndeliver = \"reencrypt\"\n\
             [[mailbox]]\naddress = \"alice+open@example-law.dk\"\n",
        );
        let deliver = |a: &str| s.mailbox(a).map(|m| m.deliver);
        assert_eq!(deliver("alice+x@example-law.dk"), Some(Deliver::Reencrypt));
        assert_eq!(
            deliver("ALICE+x+y@example-law.dk"),
            Some(Deliver::Reencrypt)
        );
        // An entry for the extension itself wins.
        assert_eq!(deliver("alice+open@example-law.dk"), Some(Deliver::Plain));
        assert_eq!(deliver("+x@example-law.dk"), None);
        assert_eq!(deliver("alicex@example-law.dk"), None);
        assert_eq!(s.base_address("a+b@d"), Some("a@d".into()));
        assert_eq!(s.base_address("a@d"), None);
        let with = |d: &str| {
            let mut s = load::test_settings("");
            s.server.recipient_delimiter = d.into();
            s
        };
        assert_eq!(with("").base_address("a+b@d"), None);
        assert_eq!(with("+-").base_address("a-b@d"), Some("a@d".into()));
    }

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a, 64), limit_key(b, 64));
        assert_ne!(limit_key(a, 64), limit_key(c, 64));
        assert_ne!(limit_key(a, 128), limit_key(b, 128));
        assert_eq!(limit_key(a, 0), limit_key(c, 0));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limit_key(v4, 64), v4);
        assert_eq!(limit_key(mapped, 64), v4);
    }

    #[test]
    fn a_bare_date_is_the_start_of_that_day_in_danish_time() {
        // Winter: UTC+1; summer: UTC+2.
        let winter = Instant::parse_when("2027-03-01").unwrap();
        assert_eq!(winter, Instant::parse("2027-02-28T23:00:00Z").unwrap());
        let summer = Instant::parse_when(" 2026-07-01 ").unwrap();
        assert_eq!(summer, Instant::parse("2026-06-30T22:00:00Z").unwrap());
        // The day summer time starts begins in winter time.
        let spring = Instant::parse_when("2027-03-28").unwrap();
        assert_eq!(spring, Instant::parse("2027-03-27T23:00:00Z").unwrap());
        let time = Instant::parse_when("2027-03-01T12:00:00+01:00").unwrap();
        assert_eq!(time.unix, winter.unix + 12 * 3600);
        for bad in ["2027-02-30", "tomorrow", "01-03-2027", ""] {
            assert!(
                matches!(Instant::parse_when(bad), Err(ValueError::When { .. })),
                "{bad}"
            );
        }
    }
}

//! smime-gateway: an SMTP-in / SMTP-out S/MIME gateway for the Danish
//! OCES2 → OCES3 move. Mail is accepted by `smtp`, made durable by
//! `spool`, taken through `pipeline` (unwrap → decide → wrap) by the
//! `queue` manager, and handed on by `delivery`. `daemon` wires them
//! together around one `snapshot` of settings and keys; `ops` holds the
//! operator commands. docs/architecture.md has the map.

pub mod blob;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod durable;
pub mod http_access;
pub mod http_stack;
pub mod journal;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod migrate;
pub mod observe;
pub mod open_files;
pub mod ops;
pub mod ossl;
pub mod pipeline;
pub mod pki;
pub mod policy;
pub mod queue;
pub mod readiness;
pub mod smime;
pub mod smtp;
pub mod snapshot;
pub mod spool;
pub mod status;
pub mod systemd;

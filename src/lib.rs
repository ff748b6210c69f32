//! smime-gateway: an SMTP-in / SMTP-out S/MIME gateway for the Danish
//! OCES2 → OCES3 move. Mail is accepted by `smtp`, made durable by
//! `spool`, taken through `pipeline` by the `runner`, and handed on by
//! `delivery`. `daemon` wires them together; `admin` holds the operator
//! commands.

pub mod config;
pub mod daemon;
pub mod delivery;
pub mod durable;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod observe;
pub mod ops;
pub mod ossl;
pub mod pipeline;
pub mod pki;
pub mod policy;
pub mod runner;
pub mod smime;
pub mod smtp;
pub mod spool;
pub mod systemd;

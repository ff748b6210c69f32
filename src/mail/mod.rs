//! The ground floor for mail: addresses (normal form, quoting), line ends
//! and small reads of a message's header section. Every room may use it; it uses no
//! other room of the gateway.

pub mod address;
pub mod headers;
pub mod lines;

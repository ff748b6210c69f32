//! The ground floor for mail: addresses (normal form, quoting), line ends,
//! the header section as RFC 5322 reads it and where mail-parser reads a
//! message otherwise, small reads of a message's header section, every reading of a part's file name, the gateway's return path and
//! reading delivery status notifications. Every room may use it; it uses no
//! other room of the gateway.

pub mod address;
pub mod dsn;
pub mod file_names;
pub mod headers;
pub mod lines;
pub mod nesting;
pub mod readings;
pub mod return_path;
pub mod section;

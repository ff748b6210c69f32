//! The durable queue: accepted mail on disk until every recipient is
//! delivered or bounced. Only this room writes the spool directory.

pub mod dsn;
mod durable;
pub mod envelope;
pub mod id;
pub mod retry;
pub mod store;

pub use envelope::{Envelope, QueueState, RcptState, RcptStatus};

/// Writes a small file durably (temporary file, fsync, rename, fsync the
/// directory), for the few other rooms that keep state on disk.
pub fn durable_write(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    durable::write_atomic(path, bytes)
}
pub use store::{Incoming, SpoolError, Spooled, Store};

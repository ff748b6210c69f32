//! The durable queue: accepted mail on disk until every recipient is
//! delivered or bounced, and the work folders of large messages being
//! transformed (`work`). Only this room writes the spool directory.

mod departures;
pub mod dsn;
pub mod envelope;
pub mod format;
pub mod group;
pub mod id;
pub mod retry;
pub mod store;
pub mod time;
pub mod work;

pub use envelope::{Envelope, QueueState, RcptState, RcptStatus};

pub use store::{Incoming, SpoolError, Spooled, Store};

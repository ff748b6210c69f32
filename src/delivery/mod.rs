//! Outbound SMTP: routing recipients to next hops and handing one copy of a
//! message to a next hop with a reply per recipient. Only this room talks
//! SMTP to other servers.

mod client;
pub mod data;
pub mod pool;
pub mod route;
mod smtp;
mod tls;
pub mod verify;

pub use client::{send, Outbound, RcptOutcome};
pub use pool::Pool;

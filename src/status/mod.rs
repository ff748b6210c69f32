//! The read-only status page (`[status] listen`): the organisation's
//! identities with generation and days to expiry, queue and quarantine
//! counts, and the cutoff readiness table with a date picker; and the
//! readiness gauges for `/metrics`. `board` keeps the table (made by
//! `readiness`), `page` writes HTML (pure, escaped), `dates` reads and
//! writes Danish dates, `server` answers requests on `observe`'s HTTP
//! stack.

pub mod board;
pub mod dates;
pub mod page;
pub mod server;

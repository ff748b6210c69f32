//! The journal's tables and statements, in SQL both SQLite and
//! PostgreSQL read (`$n` parameters; SQLite gets them as `?n`).

/// The tables, in SQL both databases read. One row per message and
/// recipient (outbound) or message and key (inbound).
pub(crate) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS outbound (
        gateway TEXT NOT NULL,
        message TEXT NOT NULL,
        recipient TEXT NOT NULL,
        day TEXT NOT NULL,
        rule TEXT NOT NULL,
        outcome TEXT NOT NULL,
        generation TEXT NOT NULL,
        certificates TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        PRIMARY KEY (gateway, message, recipient))",
    "CREATE INDEX IF NOT EXISTS outbound_last_seen ON outbound (last_seen)",
    "CREATE TABLE IF NOT EXISTS inbound (
        gateway TEXT NOT NULL,
        message TEXT NOT NULL,
        identity TEXT NOT NULL,
        sender TEXT NOT NULL,
        subject TEXT NOT NULL,
        generation TEXT NOT NULL,
        day TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        PRIMARY KEY (gateway, message, identity))",
    "CREATE INDEX IF NOT EXISTS inbound_last_seen ON inbound (last_seen)",
];

/// A second decision for the same message and recipient (a retry)
/// replaces the first; it is not counted again.
pub(crate) const UPSERT_OUTBOUND: &str = "INSERT INTO outbound
    (gateway, message, recipient, day, rule, outcome, generation, certificates, first_seen, last_seen)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
    ON CONFLICT (gateway, message, recipient) DO UPDATE SET
    rule = excluded.rule, outcome = excluded.outcome, generation = excluded.generation,
    certificates = excluded.certificates, last_seen = excluded.last_seen";

pub(crate) const UPSERT_INBOUND: &str = "INSERT INTO inbound
    (gateway, message, identity, sender, subject, generation, day, first_seen, last_seen)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
    ON CONFLICT (gateway, message, identity) DO UPDATE SET last_seen = excluded.last_seen";

pub(crate) const SELECT_OUTBOUND: &str =
    "SELECT recipient, rule, outcome, generation, certificates, day,
    COUNT(*), MAX(last_seen) FROM outbound WHERE last_seen >= $1
    GROUP BY recipient, rule, outcome, generation, certificates, day
    ORDER BY recipient, day";

pub(crate) const SELECT_INBOUND: &str = "SELECT sender, identity, subject, generation,
    COUNT(*), MAX(last_seen) FROM inbound WHERE last_seen >= $1
    GROUP BY sender, identity, subject, generation ORDER BY sender, identity";

pub(crate) const PRUNE: &[&str] = &[
    "DELETE FROM outbound WHERE last_seen < $1",
    "DELETE FROM inbound WHERE last_seen < $1",
];

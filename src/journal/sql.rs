//! The journal's tables and statements, in SQL both SQLite and
//! PostgreSQL read (`$n` parameters; SQLite gets them as `?n`), and the
//! one reading of their result rows both drivers go through.

use super::{InboundUse, OutboundUse};

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

/// A result row as the shared reading needs it: text and integer columns
/// by position, with the driver's own error.
pub(crate) trait Columns {
    type Error;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
}

/// A row of [`SELECT_OUTBOUND`].
pub(crate) fn outbound_use<R: Columns>(r: &R) -> Result<OutboundUse, R::Error> {
    Ok(OutboundUse {
        recipient: r.text(0)?,
        rule: r.text(1)?,
        outcome: r.text(2)?,
        generation: r.text(3)?,
        certificates: r.text(4)?,
        day: r.text(5)?,
        count: count(r.int(6)?),
        last_seen: r.int(7)?,
    })
}

/// A row of [`SELECT_INBOUND`].
pub(crate) fn inbound_use<R: Columns>(r: &R) -> Result<InboundUse, R::Error> {
    Ok(InboundUse {
        sender: r.text(0)?,
        identity: r.text(1)?,
        subject: r.text(2)?,
        generation: r.text(3)?,
        count: count(r.int(4)?),
        last_seen: r.int(5)?,
    })
}

/// `COUNT(*)` as a count (never negative; a database saying otherwise
/// reads as none).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of fixed cells, as a driver would hand it over.
    struct Row(Vec<Cell>);
    enum Cell {
        T(&'static str),
        I(i64),
    }
    impl Columns for Row {
        type Error = String;
        fn text(&self, i: usize) -> Result<String, String> {
            match self.0.get(i) {
                Some(Cell::T(t)) => Ok((*t).to_string()),
                _ => Err(format!("column {i} is not text")),
            }
        }
        fn int(&self, i: usize) -> Result<i64, String> {
            match self.0.get(i) {
                Some(Cell::I(n)) => Ok(*n),
                _ => Err(format!("column {i} is not an integer")),
            }
        }
    }

    #[test]
    fn rows_read_in_the_order_of_the_select() {
        use Cell::*;
        let out = Row(vec![
            T("post@domstol.dk"),
            T("courts"),
            T("encrypted"),
            T("oces3"),
            T("ab12"),
            T("2026-11-30"),
            I(3),
            I(1_764_460_800),
        ]);
        let o = outbound_use(&out).expect("outbound row");
        assert_eq!(o.recipient, "post@domstol.dk");
        assert_eq!(o.certificates, "ab12");
        assert_eq!(o.day, "2026-11-30");
        assert_eq!((o.count, o.last_seen), (3, 1_764_460_800));
        let inb = Row(vec![
            T("a@example.org"),
            T("org-oces2"),
            T("CN=Org"),
            T("oces2"),
            I(-1),
            I(7),
        ]);
        let i = inbound_use(&inb).expect("inbound row");
        assert_eq!(
            (i.sender.as_str(), i.subject.as_str()),
            ("a@example.org", "CN=Org")
        );
        assert_eq!((i.count, i.last_seen), (0, 7));
        // A column of the wrong kind is the driver's error, not a panic.
        assert!(outbound_use(&Row(vec![I(1)])).is_err());
    }
}

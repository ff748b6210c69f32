//! The journal in PostgreSQL (`tokio-postgres`), for several gateways that
//! share one record: `[journal] database = "postgres://user@host/db"`.
//! The same tables and SQL as the SQLite journal; the tables are created
//! under an advisory lock, so gateways starting together do not race.
//!
//! TLS through OpenSSL: the server's certificate must chain to the
//! system's roots or `[journal] tls_ca` and name the host of the URL.
//! Whether TLS is required is the URL's `sslmode`: `require` refuses a
//! server without TLS (write it whenever the database is not on the same
//! host); the default, `prefer`, takes TLS when offered.

use std::path::Path;

use openssl::ssl::{SslConnector, SslMethod};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::Client;
use tracing::warn;

use super::sql::{
    inbound_use, outbound_use, Columns, PRUNE, SCHEMA, SELECT_INBOUND, SELECT_OUTBOUND,
    UPSERT_INBOUND, UPSERT_OUTBOUND,
};
use super::{day, InboundUse, JournalError, OutboundUse, Record};

/// Any constant both gateways agree on: the advisory lock for the schema.
const SCHEMA_LOCK: i64 = 0x0073_6d69_6d65_6777;

/// An open PostgreSQL journal.
pub struct Postgres {
    client: Client,
}

impl Postgres {
    /// Connects to `url` and creates the tables when missing.
    pub async fn open(url: &str, ca: Option<&Path>) -> Result<Self, JournalError> {
        let mut p = Self::connect(url, ca).await?;
        let tx = p.client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        // "already exists, skipping" is no news.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await?;
        for statement in SCHEMA {
            tx.batch_execute(statement).await?;
        }
        tx.commit().await?;
        Ok(p)
    }

    /// Connects to `url` without touching the tables (reports).
    pub async fn connect(url: &str, ca: Option<&Path>) -> Result<Self, JournalError> {
        let mut tls = SslConnector::builder(SslMethod::tls_client())?;
        // The system's roots, read where the system keeps them: the
        // OpenSSL built into the binary looks for its own defaults under
        // its build-time directory, not Debian's /etc/ssl.
        for der in rustls_native_certs::load_native_certs().certs {
            if let Ok(root) = openssl::x509::X509::from_der(&der) {
                // A root listed twice is already there: not an error.
                let _ = tls.cert_store_mut().add_cert(root);
            }
        }
        if let Some(ca) = ca {
            tls.set_ca_file(ca)?;
        }
        let tls = MakeTlsConnector::new(tls.build());
        let (client, connection) = tokio_postgres::connect(url, tls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(event = "journal-error", error = %e, "PostgreSQL journal connection ended");
            }
        });
        Ok(Self { client })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub async fn write(&mut self, gateway: &str, records: &[Record]) -> Result<(), JournalError> {
        let tx = self.client.transaction().await?;
        let out = tx.prepare(UPSERT_OUTBOUND).await?;
        let inb = tx.prepare(UPSERT_INBOUND).await?;
        for r in records {
            match r {
                Record::Outbound(o) => {
                    tx.execute(
                        &out,
                        &[
                            &gateway,
                            &o.message,
                            &o.recipient,
                            &day(o.at),
                            &o.rule,
                            &o.outcome,
                            &o.generation,
                            &o.certificates,
                            &o.at,
                        ],
                    )
                    .await?;
                }
                Record::Inbound(i) => {
                    tx.execute(
                        &inb,
                        &[
                            &gateway,
                            &i.message,
                            &i.identity,
                            &i.sender,
                            &i.subject,
                            &i.generation,
                            &day(i.at),
                            &i.at,
                        ],
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn prune(&mut self, before: i64) -> Result<u64, JournalError> {
        let mut n = 0;
        for statement in PRUNE {
            n += self.client.execute(*statement, &[&before]).await?;
        }
        Ok(n)
    }

    pub async fn outbound(&self, since: i64) -> Result<Vec<OutboundUse>, JournalError> {
        let rows = self.client.query(SELECT_OUTBOUND, &[&since]).await?;
        rows.iter().map(|r| Ok(outbound_use(r)?)).collect()
    }

    pub async fn inbound(&self, since: i64) -> Result<Vec<InboundUse>, JournalError> {
        let rows = self.client.query(SELECT_INBOUND, &[&since]).await?;
        rows.iter().map(|r| Ok(inbound_use(r)?)).collect()
    }
}

impl Columns for tokio_postgres::Row {
    type Error = tokio_postgres::Error;
    fn text(&self, i: usize) -> Result<String, tokio_postgres::Error> {
        self.try_get(i)
    }
    fn int(&self, i: usize) -> Result<i64, tokio_postgres::Error> {
        self.try_get(i)
    }
}

//! The journal in an SQLite file (`rusqlite` with SQLite built in: nothing
//! to install). WAL mode, so a report reads while the daemon writes; a
//! database locked by someone else answers "busy" after a short wait and
//! the writer tries again later. Every call runs off the async threads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};

use super::sql::{
    inbound_use, outbound_use, Columns, PRUNE, SCHEMA, SELECT_INBOUND, SELECT_OUTBOUND,
    UPSERT_INBOUND, UPSERT_OUTBOUND,
};
use super::{day, InboundUse, JournalError, OutboundUse, Record};

/// How long one statement waits for a lock held by another connection.
const BUSY: Duration = Duration::from_millis(500);

/// An open SQLite journal.
pub struct Sqlite {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

/// The shared SQL, with SQLite's numbered parameters (`?1`).
fn sql(text: &str) -> String {
    text.replace('$', "?")
}

impl Sqlite {
    /// Opens the file at `path` (its folder and tables created when
    /// missing).
    pub async fn open(path: PathBuf) -> Result<Self, JournalError> {
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, JournalError> {
            // Private: who wrote to whom, and which key opened what.
            if let Some(dir) = p.parent() {
                use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
                let folder = |source| JournalError::Folder {
                    path: dir.to_path_buf(),
                    source,
                };
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(folder)?;
                // SQLite gives its -wal and -shm files the database's mode.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&p)
                    .map_err(folder)?;
            }
            let err = |source| JournalError::Sqlite {
                path: p.clone(),
                source,
            };
            let conn = Connection::open(&p).map_err(err)?;
            conn.busy_timeout(BUSY).map_err(err)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(err)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(err)?;
            for statement in SCHEMA {
                conn.execute(statement, []).map_err(err)?;
            }
            Ok(conn)
        })
        .await??;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Opens an existing journal for reading only (reports): a missing
    /// file is an error, never created.
    pub async fn open_existing(path: PathBuf) -> Result<Self, JournalError> {
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                | rusqlite::OpenFlags::SQLITE_OPEN_URI;
            let conn = Connection::open_with_flags(&p, flags)?;
            conn.busy_timeout(BUSY)?;
            Ok(conn)
        })
        .await?
        .map_err(|source| JournalError::Sqlite {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (conn, path) = (Arc::clone(&self.conn), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c).map_err(|source| JournalError::Sqlite { path, source })
        })
        .await?
    }

    pub async fn write(&mut self, gateway: &str, records: &[Record]) -> Result<(), JournalError> {
        let (gateway, records) = (gateway.to_string(), records.to_vec());
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut out = tx.prepare_cached(&sql(UPSERT_OUTBOUND))?;
                let mut inb = tx.prepare_cached(&sql(UPSERT_INBOUND))?;
                for r in &records {
                    match r {
                        Record::Outbound(o) => {
                            out.execute(params![
                                gateway,
                                o.message,
                                o.recipient,
                                day(o.at),
                                o.rule,
                                o.outcome,
                                o.generation,
                                o.certificates,
                                o.at
                            ])?;
                        }
                        Record::Inbound(i) => {
                            inb.execute(params![
                                gateway,
                                i.message,
                                i.identity,
                                i.sender,
                                i.subject,
                                i.generation,
                                day(i.at),
                                i.at
                            ])?;
                        }
                    }
                }
            }
            tx.commit()
        })
        .await
    }

    pub async fn prune(&mut self, before: i64) -> Result<u64, JournalError> {
        self.with(move |c| {
            let mut n = 0;
            for statement in PRUNE {
                n += c.execute(&sql(statement), params![before])? as u64;
            }
            Ok(n)
        })
        .await
    }

    pub async fn outbound(&self, since: i64) -> Result<Vec<OutboundUse>, JournalError> {
        self.with(move |c| {
            let mut s = c.prepare(&sql(SELECT_OUTBOUND))?;
            let rows = s.query_map(params![since], |r| outbound_use(r))?;
            rows.collect()
        })
        .await
    }

    pub async fn inbound(&self, since: i64) -> Result<Vec<InboundUse>, JournalError> {
        self.with(move |c| {
            let mut s = c.prepare(&sql(SELECT_INBOUND))?;
            let rows = s.query_map(params![since], |r| inbound_use(r))?;
            rows.collect()
        })
        .await
    }
}

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
}

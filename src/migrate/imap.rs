//! An IMAP account as a migration source (async-imap on a private tokio
//! runtime, driven through the synchronous [`Source`] trait). IMAPS and
//! STARTTLS verify the server's certificate (rustls: the given CA file,
//! else the system's roots) for its host name; plain IMAP only when the
//! operator asks for it. New copies are appended with the originals'
//! flags and INTERNALDATE, several per command (MULTIAPPEND,
//! [`super::multiappend`]) where the server offers it, else one APPEND
//! each, pipelined when the server takes LITERAL+ (Exchange Online offers
//! no MULTIAPPEND); each copy's UID comes from the server's `APPENDUID`
//! answer (UIDPLUS), else it is found by `UID SEARCH HEADER` for its
//! marker; the copies are read back in one `UID FETCH`. A re-run searches
//! for the marker before it appends. Originals are moved with `UID MOVE`
//! (RFC 6851) or `UID COPY` + `UID EXPUNGE` of exactly their UIDs
//! (UIDPLUS), never a bare `EXPUNGE` that would take every message marked
//! deleted; a server that offers neither is refused before anything is
//! written.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_imap::imap_proto::{RequestId, Response, ResponseCode, Status, UidSetMember};
use async_imap::types::{Fetch, Flag};
use async_imap::{Client, Session};
use futures_util::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::multiappend::{self, UidPart};
use super::source::{all_failed, Entry, NewMessage, Originals, Source, SourceError};

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (port 993).
    Imaps,
    /// STARTTLS before login (port 143).
    Starttls,
    /// No TLS: only where the operator asks (a server on the same host).
    Plain,
}

/// Where and as whom.
#[derive(Debug, Clone)]
pub struct Account {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// CA certificates (PEM) the server's certificate must chain to;
    /// `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The login (a master user login such as `alice*admin` included).
    pub user: String,
    pub password: String,
}

/// Octets of messages an APPEND or a FETCH may take a second to move, on
/// top of the command bound (a slow link): about 1 Mbit/s.
const OCTETS_PER_SECOND: u64 = 128 * 1024;

trait Conn: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> Conn for T {}

type Imap = Session<Box<dyn Conn>>;

/// A logged-in IMAP session.
pub struct ImapSource {
    rt: tokio::runtime::Runtime,
    session: Option<Imap>,
    name: String,
    account: Account,
    /// Bound on connecting and on each command.
    timeout: Duration,
    selected: Option<String>,
    /// Per folder: marker → the copy carrying it (one `UID SEARCH HEADER`
    /// for every marked message when the folder is first asked about,
    /// kept up to date as copies are appended).
    markers: std::collections::HashMap<String, std::collections::HashMap<String, Entry>>,
    /// Per folder: the highest UID listed (new copies come after it).
    last_uid: std::collections::HashMap<String, u32>,
    can_move: bool,
    uidplus: bool,
    /// MULTIAPPEND (RFC 3502) offered.
    multiappend: bool,
    /// LITERAL+ (RFC 7888) offered: literals need no `+` first.
    literal_plus: bool,
    /// Messages appended in this session.
    appended: usize,
    /// Originals to move or remove (folder, target, UID), done in batches.
    pending: Vec<(String, Option<String>, String)>,
    /// Folders known to exist (created or listed).
    created: std::collections::HashSet<String>,
}

/// A folder and where its originals go (`None`: removed).
type Batch = (String, Option<String>);

/// Originals moved or removed per command.
const REMOVE_BATCH: usize = 100;

/// A fresh session after this many APPENDs: Dovecot's imap process grows
/// with every APPEND to a Maildir in one session (seen: out of memory at
/// its default 256 MB after a few thousand).
const APPENDS_PER_SESSION: usize = 500;

fn imap_err(e: impl std::fmt::Display) -> SourceError {
    SourceError::Imap(e.to_string())
}

fn tls_config(ca: Option<&PathBuf>) -> Result<Arc<ClientConfig>, SourceError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| SourceError::Imap(format!("{}: {e}", path.display())))?;
            for c in certs {
                let c = c.map_err(|e| SourceError::Imap(format!("{}: {e}", path.display())))?;
                roots
                    .add(c)
                    .map_err(|e| SourceError::Imap(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(imap_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn tls(
    account: &Account,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SourceError> {
    let config = tls_config(account.ca.as_ref())?;
    let name = ServerName::try_from(account.host.clone())
        .map_err(|e| SourceError::Imap(format!("{}: {e}", account.host)))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| SourceError::Imap(format!("TLS with {}: {e}", account.host)))
}

/// Whether plain IMAP may go to `addresses` (what the host name gave):
/// only when every one is this host's (loopback).
pub fn plain_allowed(addresses: &[std::net::SocketAddr]) -> bool {
    !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback())
}

/// Connects and logs in, all of it within `bound` (a server that takes
/// the connection and never greets is not waited for).
async fn connect(account: &Account, bound: Duration) -> Result<Imap, SourceError> {
    let addr = format!("{}:{}", account.host, account.port);
    tokio::time::timeout(bound, connect_unbounded(account, &addr))
        .await
        .map_err(|_| {
            SourceError::Imap(format!(
                "{addr}: no answer within {}s (connecting and logging in)",
                bound.as_secs()
            ))
        })?
}

async fn connect_unbounded(account: &Account, addr: &str) -> Result<Imap, SourceError> {
    let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| SourceError::Imap(format!("{addr}: {e}")))?
        .collect();
    if account.security == Security::Plain && !plain_allowed(&found) {
        return Err(SourceError::Unsupported(format!(
            "--imap-security plain to {addr}, not this host: the password (a master user's \
             opens every mailbox) would cross the network in clear, and whoever is on the \
             path could fake the copies read back before originals are removed; use imaps \
             or starttls"
        )));
    }
    let tcp = TcpStream::connect(&found[..])
        .await
        .map_err(|e| SourceError::Imap(format!("{addr}: {e}")))?;
    // Commands and literals are small writes that wait for answers:
    // Nagle's algorithm with delayed ACKs would add ~40 ms to each.
    tcp.set_nodelay(true)
        .map_err(|e| SourceError::Imap(format!("{addr}: {e}")))?;
    let client: Client<Box<dyn Conn>> = match account.security {
        Security::Imaps => {
            let mut c = Client::new(Box::new(tls(account, tcp).await?) as Box<dyn Conn>);
            c.read_response().await.map_err(imap_err)?;
            c
        }
        Security::Plain => {
            let mut c = Client::new(Box::new(tcp) as Box<dyn Conn>);
            c.read_response().await.map_err(imap_err)?;
            c
        }
        Security::Starttls => {
            let mut c = Client::new(tcp);
            c.read_response().await.map_err(imap_err)?;
            c.run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(|e| SourceError::Imap(format!("STARTTLS refused: {e}")))?;
            let tcp = c.into_inner();
            Client::new(Box::new(tls(account, tcp).await?) as Box<dyn Conn>)
        }
    };
    client
        .login(&account.user, &account.password)
        .await
        .map_err(|(e, _)| SourceError::Login(format!("{} as {}: {e}", addr, account.user)))
}

/// A flag as IMAP writes it.
fn flag_text(f: &Flag<'_>) -> Option<String> {
    Some(match f {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent | Flag::MayCreate => return None,
        Flag::Custom(c) => c.to_string(),
    })
}

fn entry_of(f: &Fetch) -> Option<Entry> {
    Some(Entry {
        id: f.uid?.to_string(),
        flags: f.flags().filter_map(|x| flag_text(&x)).collect(),
        internal_date: f.internal_date().map(|d| d.timestamp()).unwrap_or(0),
        size: f.size.map(u64::from).unwrap_or(0),
    })
}

/// A quoted IMAP string (the marker and folder names are plain ASCII).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl ImapSource {
    /// Connects and logs in as `account`; `timeout` bounds connecting and
    /// each command (`[migrate] imap_timeout`).
    pub fn open(account: &Account, timeout: Duration) -> Result<Self, SourceError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SourceError::io("tokio runtime", e))?;
        let mut session = rt.block_on(connect(account, timeout))?;
        let caps = rt
            .block_on(async { tokio::time::timeout(timeout, session.capabilities()).await })
            .map_err(|_| SourceError::Imap("no answer to CAPABILITY".into()))?
            .map_err(imap_err)?;
        let (can_move, uidplus) = (caps.has_str("MOVE"), caps.has_str("UIDPLUS"));
        let (multiappend, literal_plus) = (caps.has_str("MULTIAPPEND"), caps.has_str("LITERAL+"));
        Ok(Self {
            rt,
            session: Some(session),
            name: account.user.clone(),
            account: account.clone(),
            timeout,
            selected: None,
            markers: Default::default(),
            last_uid: Default::default(),
            can_move,
            uidplus,
            multiappend,
            literal_plus,
            appended: 0,
            pending: Vec::new(),
            created: Default::default(),
        })
    }

    /// Moves or removes the originals waiting, one command per folder and
    /// target for all their UIDs (`UID MOVE`, or `UID COPY` + `UID
    /// EXPUNGE` of exactly those UIDs).
    fn flush(&mut self) -> Result<(), SourceError> {
        let pending = std::mem::take(&mut self.pending);
        let mut groups: Vec<(Batch, Vec<String>)> = Vec::new();
        for (folder, to, uid) in pending {
            let key = (folder, to);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, uids)) => uids.push(uid),
                None => groups.push((key, vec![uid])),
            }
        }
        for ((folder, to), uids) in groups {
            self.remove_now(&folder, &uids.join(","), to.as_deref())?;
        }
        Ok(())
    }

    fn remove_now(
        &mut self,
        folder: &str,
        uids: &str,
        to: Option<&str>,
    ) -> Result<(), SourceError> {
        let uid = uids.to_string();
        if let Some(target) = to {
            if !self.created.contains(target) && !self.exists(target)? {
                let t = target.to_string();
                self.run(move |s| Box::pin(async move { s.create(&t).await.map_err(imap_err) }))?;
            }
            self.created.insert(target.to_string());
            self.select(folder)?;
            let t = target.to_string();
            if self.can_move {
                return self.run(move |s| {
                    Box::pin(async move { s.uid_mv(&uid, &t).await.map_err(imap_err) })
                });
            }
            let u = uid.clone();
            self.run(move |s| Box::pin(async move { s.uid_copy(&u, &t).await.map_err(imap_err) }))?;
        }
        self.select(folder)?;
        self.run(move |s| {
            Box::pin(async move {
                let stored = s
                    .uid_store(&uid, "+FLAGS.SILENT (\\Deleted)")
                    .await
                    .map_err(imap_err)?;
                let _: Vec<Fetch> = stored.try_collect().await.map_err(imap_err)?;
                let gone = s.uid_expunge(&uid).await.map_err(imap_err)?;
                let _: Vec<u32> = gone.try_collect().await.map_err(imap_err)?;
                Ok(())
            })
        })
    }

    /// Whether originals can be moved to `to` (`None`: removed) without
    /// touching any other message: `UID MOVE`, or `UID COPY` + `UID
    /// EXPUNGE`, never a bare `EXPUNGE`.
    fn can_remove(&self, to: Option<&str>) -> Result<(), SourceError> {
        if to.is_some() && !self.can_move && !self.uidplus {
            return Err(SourceError::Unsupported(
                "the server offers neither MOVE nor UIDPLUS: use --originals keep".into(),
            ));
        }
        if to.is_none() && !self.uidplus {
            return Err(SourceError::Unsupported(
                "the server does not offer UIDPLUS (UID EXPUNGE): use --originals keep or move"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Logs out and in again (what was learnt of the folders is kept).
    fn reconnect(&mut self) -> Result<(), SourceError> {
        if let Some(mut old) = self.session.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), old.logout()).await
            });
        }
        self.session = Some(self.rt.block_on(connect(&self.account, self.timeout))?);
        self.selected = None;
        self.appended = 0;
        Ok(())
    }

    /// The bound on a command that carries `octets` of messages either
    /// way: the command bound plus time to move them over a slow link.
    fn bound_for(&self, octets: u64) -> Duration {
        self.timeout + Duration::from_secs(octets / OCTETS_PER_SECOND)
    }

    /// Runs `f` on the session within the time bound.
    fn run<T>(
        &mut self,
        f: impl for<'a> FnOnce(
            &'a mut Imap,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, SourceError>> + Send + 'a>,
        >,
    ) -> Result<T, SourceError> {
        self.run_for(self.timeout, f)
    }

    /// Runs `f` on the session (connected again first when an earlier
    /// command left none) within `bound`. A command that fails or runs out
    /// of time may have stopped in the middle (inside a literal, say):
    /// its connection is dropped, never used again, so nothing sent later
    /// can be read by the server as the rest of it.
    fn run_for<T>(
        &mut self,
        bound: Duration,
        f: impl for<'a> FnOnce(
            &'a mut Imap,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, SourceError>> + Send + 'a>,
        >,
    ) -> Result<T, SourceError> {
        if self.session.is_none() {
            self.session = Some(self.rt.block_on(connect(&self.account, self.timeout))?);
            self.selected = None;
            self.appended = 0;
        }
        let rt = &self.rt;
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| SourceError::Imap("the session is closed".into()))?;
        let result = rt
            .block_on(async { tokio::time::timeout(bound, f(session)).await })
            .map_err(|_| SourceError::Imap("the server did not answer in time".into()))
            .and_then(|r| r);
        if result.is_err() {
            self.session = None;
            self.selected = None;
        }
        result
    }

    fn select(&mut self, folder: &str) -> Result<(), SourceError> {
        if self.selected.as_deref() == Some(folder) {
            return Ok(());
        }
        let name = folder.to_string();
        self.run(move |s| {
            Box::pin(async move {
                s.select(&name).await.map(|_| ()).map_err(|e| match e {
                    async_imap::error::Error::No(_) => SourceError::NoFolder(name.clone()),
                    other => imap_err(other),
                })
            })
        })?;
        self.selected = Some(folder.to_string());
        Ok(())
    }

    fn fetch_meta(&mut self, set: &str) -> Result<Vec<Entry>, SourceError> {
        let set = set.to_string();
        self.run(move |s| {
            Box::pin(async move {
                let stream = s
                    .uid_fetch(&set, "(UID FLAGS INTERNALDATE RFC822.SIZE)")
                    .await
                    .map_err(imap_err)?;
                let all: Vec<Fetch> = stream.try_collect().await.map_err(imap_err)?;
                Ok(all.iter().filter_map(entry_of).collect())
            })
        })
    }

    /// UIDs (from `from` on) whose trace header contains `marker`.
    fn search_marker(&mut self, marker: &str, from: u32) -> Result<Vec<u32>, SourceError> {
        let query = format!("UID {from}:* HEADER X-SMIME-Gateway {}", quoted(marker));
        self.run(move |s| {
            Box::pin(async move {
                let found = s.uid_search(&query).await.map_err(imap_err)?;
                let mut uids: Vec<u32> = found.into_iter().filter(|u| *u >= from).collect();
                uids.sort_unstable();
                Ok(uids)
            })
        })
    }

    /// Every marked copy in the selected `folder`, by marker.
    fn index(&mut self, folder: &str) -> Result<(), SourceError> {
        if self.markers.contains_key(folder) {
            return Ok(());
        }
        let uids = self.search_marker(super::rekey::MARKER_FIELD, 1)?;
        let mut map = std::collections::HashMap::new();
        for chunk in uids.chunks(500) {
            let set: Vec<String> = chunk.iter().map(u32::to_string).collect();
            let set = set.join(",");
            let found = self.run(move |s| {
                Box::pin(async move {
                    let stream = s
                        .uid_fetch(
                            &set,
                            "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER])",
                        )
                        .await
                        .map_err(imap_err)?;
                    let all: Vec<Fetch> = stream.try_collect().await.map_err(imap_err)?;
                    Ok(all
                        .iter()
                        .filter_map(|f| {
                            let m = super::maildir::marker_in(f.header()?)?;
                            Some((m, entry_of(f)?))
                        })
                        .collect::<Vec<_>>())
                })
            })?;
            map.extend(found);
        }
        self.markers.insert(folder.to_string(), map);
        Ok(())
    }

    /// The UID of the message just appended to `folder`, found by its
    /// marker (the highest UID carrying it), for servers without UIDPLUS.
    fn locate(&mut self, folder: &str, message: &[u8]) -> Result<u32, SourceError> {
        let marker = super::maildir::marker_in(message).unwrap_or_default();
        self.select(folder)?;
        // The selected folder takes in the new message.
        self.run(|s| Box::pin(async move { s.noop().await.map_err(imap_err) }))?;
        let after = self.last_uid.get(folder).copied().unwrap_or(0) + 1;
        self.search_marker(&marker, after)?
            .last()
            .copied()
            .ok_or_else(|| SourceError::Imap("the appended copy cannot be found".into()))
    }

    /// The entry of a copy just appended as `uid` (its flags and date are
    /// the ones given; the read back checks its bytes), remembered by its
    /// marker.
    fn appended_entry(
        &mut self,
        folder: &str,
        uid: u32,
        message: &[u8],
        flags: Vec<String>,
        internal_date: i64,
    ) -> Entry {
        let entry = Entry {
            id: uid.to_string(),
            flags,
            internal_date,
            size: message.len() as u64,
        };
        if let (Some(m), Some(marker)) = (
            self.markers.get_mut(folder),
            super::maildir::marker_in(message),
        ) {
            m.insert(marker, entry.clone());
        }
        entry
    }

    /// Appends `messages` to `folder`: in one MULTIAPPEND command (one
    /// transaction: all or none) where the server offers it, else one
    /// APPEND each (servers such as Exchange Online), all of them sent
    /// before the answers are read when the server takes LITERAL+. Each
    /// copy's UID is the server's `APPENDUID` answer, else it is searched
    /// for by its marker. Each one's entry, in order.
    fn appends(
        &mut self,
        folder: &str,
        messages: &[NewMessage<'_>],
    ) -> Vec<Result<Entry, SourceError>> {
        if self.appended > 0 && self.appended + messages.len() > APPENDS_PER_SESSION {
            if let Err(e) = self.reconnect() {
                return all_failed(messages.len(), &e);
            }
        }
        self.appended += messages.len();
        let literal_plus = self.literal_plus;
        // Per command: how many messages it carries, or why it cannot be written.
        let groups: Vec<&[NewMessage<'_>]> = if self.multiappend {
            vec![messages]
        } else {
            messages.chunks(1).collect()
        };
        let mut commands = Vec::with_capacity(groups.len());
        let mut encoded: Vec<Result<usize, SourceError>> = Vec::with_capacity(groups.len());
        for g in &groups {
            match multiappend::encode(folder, g, literal_plus) {
                Ok(c) => {
                    encoded.push(Ok(commands.len()));
                    commands.push((c, g.len()));
                }
                Err(e) => encoded.push(Err(SourceError::Imap(e.to_string()))),
            }
        }
        let answers = if commands.is_empty() {
            Ok(Vec::new())
        } else {
            let octets: u64 = messages.iter().map(|m| m.message.len() as u64).sum();
            let bound = self.bound_for(octets);
            self.run_for(bound, move |s| {
                Box::pin(async move { send_appends(s, commands, literal_plus).await })
            })
        };
        let answers = match answers {
            Ok(a) => a,
            Err(e) => return all_failed(messages.len(), &e),
        };
        // The selected folder takes in the new messages before they are
        // read back.
        if self.selected.as_deref() == Some(folder) && answers.iter().any(|a| a.is_ok()) {
            if let Err(e) = self.run(|s| Box::pin(async move { s.noop().await.map_err(imap_err) }))
            {
                return all_failed(messages.len(), &e);
            }
        }
        let mut out = Vec::with_capacity(messages.len());
        for (g, e) in groups.iter().zip(encoded) {
            let answer = match e {
                Ok(i) => match answers.get(i) {
                    Some(Ok(a)) => Ok(a.clone()),
                    Some(Err(e)) => Err(imap_err(e)),
                    None => Err(SourceError::Imap("APPEND: no answer".into())),
                },
                Err(e) => Err(e),
            };
            match answer {
                Ok(Some(uids)) => {
                    for (m, uid) in g.iter().zip(uids) {
                        out.push(Ok(self.appended_copy(folder, uid, m)));
                    }
                }
                Ok(None) => {
                    for m in g.iter() {
                        let uid = self.locate(folder, m.message);
                        out.push(uid.map(|uid| self.appended_copy(folder, uid, m)));
                    }
                }
                Err(e) => out.extend(all_failed(g.len(), &e)),
            }
        }
        out
    }

    /// The entry of `m`, just appended to `folder` as `uid`.
    fn appended_copy(&mut self, folder: &str, uid: u32, m: &NewMessage<'_>) -> Entry {
        let flags = m
            .flags
            .iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
            .cloned()
            .collect();
        self.appended_entry(folder, uid, m.message, flags, m.internal_date)
    }

    fn exists(&mut self, folder: &str) -> Result<bool, SourceError> {
        Ok(self.folders()?.iter().any(|f| f == folder))
    }
}

impl Source for ImapSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn folders(&mut self) -> Result<Vec<String>, SourceError> {
        self.run(|s| {
            Box::pin(async move {
                let stream = s.list(None, Some("*")).await.map_err(imap_err)?;
                let names: Vec<async_imap::types::Name> =
                    stream.try_collect().await.map_err(imap_err)?;
                let mut out: Vec<String> = names
                    .iter()
                    .filter(|n| {
                        !n.attributes()
                            .iter()
                            .any(|a| matches!(a, async_imap::types::NameAttribute::NoSelect))
                    })
                    .map(|n| n.name().to_string())
                    .collect();
                out.sort();
                if let Some(i) = out.iter().position(|n| n.eq_ignore_ascii_case("INBOX")) {
                    let inbox = out.remove(i);
                    out.insert(0, inbox);
                }
                Ok(out)
            })
        })
    }

    fn list(&mut self, folder: &str) -> Result<Vec<Entry>, SourceError> {
        self.flush()?;
        self.selected = None;
        self.select(folder)?;
        let mut list = self.fetch_meta("1:*")?;
        list.sort_by_key(|e| e.id.parse::<u32>().unwrap_or(0));
        let last = list
            .iter()
            .filter_map(|e| e.id.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        self.last_uid.insert(folder.to_string(), last);
        Ok(list)
    }

    fn fetch(&mut self, folder: &str, entry: &Entry) -> Result<Vec<u8>, SourceError> {
        self.select(folder)?;
        let uid = entry.id.clone();
        let bound = self.bound_for(entry.size);
        let body = self.run_for(bound, move |s| {
            Box::pin(async move {
                let stream = s.uid_fetch(&uid, "BODY.PEEK[]").await.map_err(imap_err)?;
                let all: Vec<Fetch> = stream.try_collect().await.map_err(imap_err)?;
                Ok(all.iter().find_map(|f| f.body().map(<[u8]>::to_vec)))
            })
        })?;
        body.ok_or_else(|| SourceError::Gone(entry.id.clone()))
    }

    fn fetch_many(&mut self, folder: &str, entries: &[Entry]) -> Vec<Result<Vec<u8>, SourceError>> {
        if let Err(e) = self.select(folder) {
            return all_failed(entries.len(), &e);
        }
        let set: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let set = set.join(",");
        let bound = self.bound_for(entries.iter().map(|e| e.size).sum());
        let got = self.run_for(bound, move |s| {
            Box::pin(async move {
                let stream = s.uid_fetch(&set, "BODY.PEEK[]").await.map_err(imap_err)?;
                let all: Vec<Fetch> = stream.try_collect().await.map_err(imap_err)?;
                Ok(all
                    .iter()
                    .filter_map(|f| Some((f.uid?.to_string(), f.body()?.to_vec())))
                    .collect::<std::collections::HashMap<String, Vec<u8>>>())
            })
        });
        match got {
            Ok(mut map) => entries
                .iter()
                .map(|e| {
                    map.remove(&e.id)
                        .ok_or_else(|| SourceError::Gone(e.id.clone()))
                })
                .collect(),
            Err(e) => all_failed(entries.len(), &e),
        }
    }

    fn find_marker(&mut self, folder: &str, marker: &str) -> Result<Option<Entry>, SourceError> {
        self.select(folder)?;
        self.index(folder)?;
        Ok(self
            .markers
            .get(folder)
            .and_then(|m| m.get(marker))
            .cloned())
    }

    fn append_many(
        &mut self,
        folder: &str,
        messages: &[NewMessage<'_>],
    ) -> Vec<Result<Entry, SourceError>> {
        if messages.is_empty() {
            return Vec::new();
        }
        self.appends(folder, messages)
    }

    fn supports(&self, originals: &Originals) -> Result<(), SourceError> {
        let to = match originals {
            Originals::Keep => return Ok(()),
            Originals::Move(f) => Some(f.as_str()),
            Originals::Delete => None,
        };
        self.can_remove(to)
    }

    fn remove(&mut self, folder: &str, entry: &Entry, to: Option<&str>) -> Result<(), SourceError> {
        self.can_remove(to)?;
        self.pending
            .push((folder.to_string(), to.map(str::to_string), entry.id.clone()));
        if self.pending.len() >= REMOVE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// The batch's moves and removals done now, so a refusal is charged
    /// to the batch it belongs to.
    fn sync(&mut self) -> Result<(), SourceError> {
        self.flush()
    }

    fn reader(&mut self) -> Result<Option<Box<dyn Source>>, SourceError> {
        Ok(Some(Box::new(ImapSource::open(
            &self.account,
            self.timeout,
        )?)))
    }

    fn close(&mut self) -> Result<(), SourceError> {
        self.flush()?;
        if self.session.is_some() {
            let r = self.run(|s| Box::pin(async move { s.logout().await.map_err(imap_err) }));
            self.session = None;
            r?;
        }
        Ok(())
    }
}

/// One APPEND command's answer: the new UIDs in order when the server
/// names them (`APPENDUID`), `None` when it does not; or its refusal.
type Answer = Result<Option<Vec<u32>>, SourceError>;

/// Sends APPEND (or MULTIAPPEND) `commands`, each with the number of
/// messages it carries, and reads their answers, in order. With LITERAL+
/// every command goes out before the first answer is read (pipelined);
/// without it each literal waits for the server's `+` and each command
/// for its answer. The outer error is the connection's.
async fn send_appends(
    s: &mut Imap,
    commands: Vec<(multiappend::Command, usize)>,
    literal_plus: bool,
) -> Result<Vec<Answer>, SourceError> {
    let io = |e: std::io::Error| SourceError::Imap(format!("APPEND: {e}"));
    let mut answers: Vec<Option<Answer>> = commands.iter().map(|_| None).collect();
    let mut sent: Vec<(RequestId, usize, usize)> = Vec::with_capacity(commands.len());
    for (i, (command, count)) in commands.iter().enumerate() {
        let id = s.run_command(&command.first).await.map_err(imap_err)?;
        let mut refused = None;
        for piece in &command.literals {
            if !literal_plus {
                refused = ready_for_literal(s, &id).await?;
                if refused.is_some() {
                    break;
                }
            }
            s.get_mut().write_all(piece).await.map_err(io)?;
        }
        match refused {
            Some(why) => answers[i] = Some(Err(SourceError::Imap(why))),
            None => sent.push((id, i, *count)),
        }
        if !literal_plus {
            s.get_mut().flush().await.map_err(io)?;
            read_answers(s, &mut sent, &mut answers).await?;
        }
    }
    s.get_mut().flush().await.map_err(io)?;
    read_answers(s, &mut sent, &mut answers).await?;
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(SourceError::Imap("APPEND: no answer".into()))))
        .collect())
}

/// Reads responses until every command in `waiting` is answered.
async fn read_answers(
    s: &mut Imap,
    waiting: &mut Vec<(RequestId, usize, usize)>,
    answers: &mut [Option<Answer>],
) -> Result<(), SourceError> {
    while !waiting.is_empty() {
        let response = s
            .read_response()
            .await
            .map_err(|e| SourceError::Imap(format!("APPEND: {e}")))?
            .ok_or_else(|| SourceError::Imap("APPEND: connection lost".into()))?;
        let Response::Done {
            tag,
            status,
            code,
            information,
        } = response.parsed()
        else {
            continue;
        };
        let Some(at) = waiting.iter().position(|(id, _, _)| id == tag) else {
            continue;
        };
        let (_, i, count) = waiting.remove(at);
        answers[i] = Some(if *status != Status::Ok {
            Err(SourceError::Imap(format!(
                "APPEND refused: {status:?} {}",
                information.as_deref().unwrap_or("")
            )))
        } else {
            Ok(match code {
                Some(ResponseCode::AppendUid(_, set)) => {
                    let parts: Vec<UidPart> = set
                        .iter()
                        .map(|m| match m {
                            UidSetMember::Uid(u) => UidPart::One(*u),
                            UidSetMember::UidRange(r) => UidPart::Range(*r.start(), *r.end()),
                        })
                        .collect();
                    multiappend::uids_in_order(&parts, count)
                }
                _ => None,
            })
        });
    }
    Ok(())
}

/// Waits for the server's `+` before a synchronising literal: `None`
/// when it came, the server's reason when it refused the command instead.
async fn ready_for_literal(s: &mut Imap, id: &RequestId) -> Result<Option<String>, SourceError> {
    loop {
        let response = s
            .read_response()
            .await
            .map_err(|e| SourceError::Imap(format!("APPEND: {e}")))?
            .ok_or_else(|| SourceError::Imap("APPEND: connection lost".into()))?;
        match response.parsed() {
            Response::Continue { .. } => return Ok(None),
            Response::Done {
                tag, information, ..
            } if tag == id => {
                return Ok(Some(format!(
                    "APPEND refused: {}",
                    information.as_deref().unwrap_or("")
                )));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_strings_are_written_as_imap_wants() {
        assert_eq!(
            multiappend::imap_date(1_600_000_000),
            "\"13-Sep-2020 12:26:40 +0000\""
        );
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn plain_imap_only_to_this_host() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(plain_allowed(&[a("127.0.0.1:143"), a("[::1]:143")]));
        assert!(!plain_allowed(&[a("127.0.0.1:143"), a("192.0.2.7:143")]));
        assert!(!plain_allowed(&[a("10.0.0.5:143")]));
        assert!(!plain_allowed(&[]));
    }
}

//! Where stored mail lives, as migration sees it: folders of messages,
//! each with its flags and arrival time, that can be fetched, appended to
//! (with the original's flags and time), searched for the copy carrying a
//! marker, and from which one original can be moved or removed by its own
//! identifier (never "everything marked deleted").

/// A message in a folder, before its bytes are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The source's identifier for this message within its folder (a
    /// Maildir file name, an mbox offset, an IMAP UID).
    pub id: String,
    /// IMAP-style flags (`\Seen`, `\Answered`, `\Flagged`, `\Draft`,
    /// `\Deleted`, keywords).
    pub flags: Vec<String>,
    /// The arrival time (IMAP INTERNALDATE, a Maildir file's mtime), Unix
    /// seconds.
    pub internal_date: i64,
    /// Size in octets as stored.
    pub size: u64,
}

/// A message to write into a folder.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// CRLF line ends.
    pub message: &'a [u8],
    pub flags: &'a [String],
    /// Unix seconds (the arrival time to give it).
    pub internal_date: i64,
}

/// What becomes of an original once its new copy is written and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Originals {
    /// Left where it is (next to its copy).
    Keep,
    /// Moved to this folder (created when missing).
    Move(String),
    /// Removed.
    Delete,
}

impl Originals {
    /// Reads `keep`, `delete` or `move:FOLDER`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "keep" => Some(Self::Keep),
            "delete" => Some(Self::Delete),
            _ => {
                let folder = text.strip_prefix("move:")?.trim();
                (!folder.is_empty()).then(|| Self::Move(folder.to_string()))
            }
        }
    }

    /// The folder originals are moved to, which migration never reads.
    pub fn folder(&self) -> Option<&str> {
        match self {
            Self::Move(f) => Some(f),
            _ => None,
        }
    }
}

impl std::fmt::Display for Originals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Keep => f.write_str("keep"),
            Self::Delete => f.write_str("delete"),
            Self::Move(folder) => write!(f, "move:{folder}"),
        }
    }
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("folder {0:?} does not exist")]
    NoFolder(String),
    #[error("message {0} is no longer in its folder")]
    Gone(String),
    #[error("{0}: locked by another program")]
    Locked(String),
    #[error("login refused: {0}")]
    Login(String),
    #[error("IMAP: {0}")]
    Imap(String),
    #[error("{0}")]
    Unsupported(String),
    /// One failure shared by every message of a batch.
    #[error("{0}")]
    Batch(String),
}

/// The same failure for each of `n` messages of a batch.
pub fn all_failed<T>(n: usize, why: &dyn std::fmt::Display) -> Vec<Result<T, SourceError>> {
    let why = why.to_string();
    (0..n)
        .map(|_| Err(SourceError::Batch(why.clone())))
        .collect()
}

impl SourceError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// A store of mail: a Maildir, an mbox file, a folder of `.eml` files or
/// an IMAP account.
pub trait Source: Send {
    /// What the operator names this source by (a login, a path).
    fn name(&self) -> String;
    /// Every folder, in a stable order.
    fn folders(&mut self) -> Result<Vec<String>, SourceError>;
    /// The messages of `folder`.
    fn list(&mut self, folder: &str) -> Result<Vec<Entry>, SourceError>;
    /// The bytes of one message, as stored.
    fn fetch(&mut self, folder: &str, entry: &Entry) -> Result<Vec<u8>, SourceError>;
    /// The bytes of several messages (one round trip where the source
    /// allows), in the order asked.
    fn fetch_many(&mut self, folder: &str, entries: &[Entry]) -> Vec<Result<Vec<u8>, SourceError>> {
        entries.iter().map(|e| self.fetch(folder, e)).collect()
    }
    /// The identifier of a message in `folder` whose `X-SMIME-Gateway`
    /// field contains `marker`, if any.
    fn find_marker(&mut self, folder: &str, marker: &str) -> Result<Option<Entry>, SourceError>;
    /// Writes `message` (CRLF line ends) into `folder` with `flags` and
    /// `internal_date`, durably; the new message's entry. By default a
    /// batch of one.
    fn append(
        &mut self,
        folder: &str,
        message: &[u8],
        flags: &[String],
        internal_date: i64,
    ) -> Result<Entry, SourceError> {
        let one = NewMessage {
            message,
            flags,
            internal_date,
        };
        self.append_many(folder, std::slice::from_ref(&one))
            .pop()
            .unwrap_or_else(|| Err(SourceError::Batch("nothing written".into())))
    }
    /// Writes several messages into `folder` (one transaction where the
    /// source allows: IMAP MULTIAPPEND), durably; each one's entry, in
    /// order.
    fn append_many(
        &mut self,
        folder: &str,
        messages: &[NewMessage<'_>],
    ) -> Vec<Result<Entry, SourceError>>;
    /// Whether this source can deal with the originals as asked (IMAP:
    /// the server's capabilities); asked before anything is written.
    fn supports(&self, _originals: &Originals) -> Result<(), SourceError> {
        Ok(())
    }
    /// Moves `entry` out of `folder` into `to` (created when missing), or
    /// removes it (`to` = `None`), touching no other message.
    fn remove(&mut self, folder: &str, entry: &Entry, to: Option<&str>) -> Result<(), SourceError>;
    /// Makes the moves and removals done so far durable (Maildir: the
    /// directories' fsyncs, once per batch rather than per message). A
    /// removal not yet durable can only come back after a crash, next to
    /// its checked copy, which a re-run finds.
    fn sync(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
    /// A second connection to the same store that only reads, so reading
    /// ahead overlaps with writing (IMAP); `None` where it would not help.
    fn reader(&mut self) -> Result<Option<Box<dyn Source>>, SourceError> {
        Ok(None)
    }
    /// Ends the session (IMAP LOGOUT, locks released).
    fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// IMAP flag ↔ Maildir info letter, in the letter order Maildir wants.
pub const MAILDIR_FLAGS: [(char, &str); 6] = [
    ('D', "\\Draft"),
    ('F', "\\Flagged"),
    ('P', "$Forwarded"),
    ('R', "\\Answered"),
    ('S', "\\Seen"),
    ('T', "\\Deleted"),
];

/// True when the `X-SMIME-Gateway` field of `message` contains `marker`.
pub fn carries_marker(message: &[u8], marker: &str) -> bool {
    trace_value(message).is_some_and(|v| v.contains(marker))
}

/// The unfolded value of the `X-SMIME-Gateway` field of `message` (CRLF
/// or LF line ends).
pub fn trace_value(message: &[u8]) -> Option<String> {
    let crlf = crate::mail::lines::crlf(message);
    let (headers, _) = crate::smime::mime::split(&crlf);
    let fields = crate::smime::mime::fields(headers);
    let (_, raw) = fields.iter().find(|(n, _)| n == "x-smime-gateway")?;
    let text = String::from_utf8_lossy(raw);
    let (_, value) = text.split_once(':')?;
    Some(value.replace("\r\n", "").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originals_are_read_from_the_command_line() {
        assert_eq!(Originals::parse("keep"), Some(Originals::Keep));
        assert_eq!(Originals::parse("delete"), Some(Originals::Delete));
        assert_eq!(
            Originals::parse("move:OCES2-originals"),
            Some(Originals::Move("OCES2-originals".into()))
        );
        assert_eq!(Originals::parse("move:"), None);
        assert_eq!(Originals::parse("expunge"), None);
    }

    #[test]
    fn the_trace_value_is_unfolded() {
        let m = b"Subject: x\nX-SMIME-Gateway: decrypted; key=\"CN=A\";\n generation=OCES2; original-sha256=abc\n\nbody\n";
        assert_eq!(
            trace_value(m).as_deref(),
            Some("decrypted; key=\"CN=A\"; generation=OCES2; original-sha256=abc")
        );
        assert!(carries_marker(m, "original-sha256=abc"));
        assert!(!carries_marker(b"Subject: x\n\nbody\n", "abc"));
    }
}

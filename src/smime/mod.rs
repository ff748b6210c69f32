//! CMS and S/MIME entities: recognise, decrypt, verify, encrypt. Bytes,
//! keys, certificates and a time in; bytes and reports out. No I/O, no
//! clock: large products go to the [`crate::blob::Spill`] the caller
//! gives (memory, or its scratch files).

pub mod cms;
pub mod evidence;
pub mod header;
pub mod limits;
pub mod mime;
pub mod parse;
pub mod scan;
pub mod sign;
pub mod unwrap;

/// Why an S/MIME operation failed. The texts may reach the mailbox in the
/// trace header, never the sender.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SmimeError {
    #[error("corrupt CMS structure: {0}")]
    Corrupt(String),
    #[error("no key held for the recipient(s): {0}")]
    NoKey(String),
    /// CMS of another type than (auth)enveloped data where encrypted data
    /// was expected (compressed data, password-based encrypted data): not
    /// opened, whatever keys are held.
    #[error("not opened: the S/MIME content is {0}, which the gateway does not decrypt")]
    NotEnveloped(String),
    #[error("decryption failed {0}")]
    Decrypt(String),
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("signing failed: {0}")]
    Sign(String),
    /// The scratch space for a large message failed (a full disk): a
    /// temporary condition, never the message's fault.
    #[error("cannot write the work file: {0}")]
    Scratch(String),
    #[error("CMS structure refused before parsing: {0}")]
    TooComplex(#[from] limits::LimitError),
    /// The MIME structure is over the caps of `mail::nesting`: the message
    /// was not parsed.
    #[error("message not read: {0}")]
    Unreadable(#[from] crate::mail::nesting::TooComplex),
}

impl SmimeError {
    /// A short label for metrics: `no-key`, `not-enveloped`, `corrupt`,
    /// `too-complex`, `scratch` or `failed`.
    pub fn label(&self) -> &'static str {
        match self {
            SmimeError::NoKey(_) => "no-key",
            SmimeError::NotEnveloped(_) => "not-enveloped",
            SmimeError::Corrupt(_) => "corrupt",
            SmimeError::TooComplex(_) | SmimeError::Unreadable(_) => "too-complex",
            SmimeError::Scratch(_) => "scratch",
            _ => "failed",
        }
    }
}

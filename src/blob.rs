//! Bytes that a step of the pipeline produces (a decrypted entity, a
//! rebuilt message, a new CMS in base64): in memory for small messages, in
//! a scratch file mapped back for large ones. Who produces them writes to
//! a [`Spill`] the caller chose; what comes back is a [`Blob`], read as a
//! byte slice either way. This room does no I/O itself: [`InMemory`] is
//! the only spill here; the file-backed one is `spool::work`.

use std::fmt;
use std::io::{self, Write};
use std::ops::Deref;
use std::sync::Arc;

/// Immutable bytes, cheap to clone (shared), in memory or mapped.
#[derive(Clone)]
pub struct Blob(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl Blob {
    /// A blob over anything that holds bytes (a vector, a mapped file).
    pub fn new(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Self {
        Blob(Arc::new(bytes))
    }
}

/// Part of a vector: `range` of `bytes` (the rest is held, not copied).
pub struct Part {
    bytes: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl Part {
    /// `range` of `bytes`; a range outside them reads as empty.
    pub fn new(bytes: Vec<u8>, range: std::ops::Range<usize>) -> Self {
        Part { bytes, range }
    }
}

impl AsRef<[u8]> for Part {
    fn as_ref(&self) -> &[u8] {
        self.bytes.get(self.range.clone()).unwrap_or_default()
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob::new(v)
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Blob {}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} octets)", self.len())
    }
}

/// Where a step writes what it produces.
pub trait Spill: Send + Sync {
    /// The bytes `fill` writes, as a blob. An error (of `fill`, or of the
    /// scratch space: a full disk) leaves nothing behind.
    fn spill(&self, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Blob>;

    /// As [`Spill::spill`] when `fill` is expected to write about
    /// `expected` octets (a size taken from the bytes it reads, never from
    /// what a message claims): memory is reserved once instead of grown
    /// (each growth copies and faults in what was written so far).
    fn spill_sized(
        &self,
        expected: usize,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Blob> {
        let _ = expected;
        self.spill(fill)
    }

    /// True for the spill of large messages: steps that can stream their
    /// output (CMS encryption) do, instead of building it whole.
    fn large(&self) -> bool {
        false
    }
}

/// The spill of small messages: a vector.
#[derive(Debug, Clone, Copy, Default)]
pub struct InMemory;

impl Spill for InMemory {
    fn spill(&self, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Blob> {
        self.spill_sized(0, fill)
    }

    fn spill_sized(
        &self,
        expected: usize,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Blob> {
        let mut out = Vec::with_capacity(expected);
        fill(&mut out)?;
        Ok(Blob::from(out))
    }
}

/// Writes `parts` one after the other.
pub fn write_all(w: &mut dyn Write, parts: &[&[u8]]) -> io::Result<()> {
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_reads_as_its_range_only() {
        let b = Blob::new(Part::new(b"headBODYtrailer".to_vec(), 4..8));
        assert_eq!(&*b, b"BODY");
        let outside = Blob::new(Part::new(b"short".to_vec(), 3..9));
        assert!(outside.is_empty());
    }

    #[test]
    fn a_blob_reads_as_its_bytes_and_compares_by_them() {
        let a = InMemory
            .spill(&mut |w| write_all(w, &[b"ab", b"cd"]))
            .unwrap();
        assert_eq!(&*a, b"abcd");
        assert_eq!(a, Blob::from(b"abcd".to_vec()));
        assert_ne!(a, Blob::from(b"abce".to_vec()));
        let failed = InMemory.spill(&mut |_| Err(io::Error::other("full")));
        assert!(failed.is_err());
        assert!(!InMemory.large());
        let sized = InMemory
            .spill_sized(4, &mut |w| write_all(w, &[b"ab", b"cdef"]))
            .unwrap();
        assert_eq!(&*sized, b"abcdef", "more than expected is kept too");
    }
}

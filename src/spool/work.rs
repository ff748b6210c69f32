//! A message's work folder (`spool/work/<id>/`): where the steps of a
//! large message write what they make (the decrypted content, the clean
//! message, the new CMS in base64), so that no step holds it on the heap.
//! Each product is written through a buffer, mapped back read-only and
//! its file removed at once (the mapping keeps the bytes until the last
//! reader lets go), so a finished attempt leaves nothing; the folder
//! itself goes when the attempt's [`WorkDir`] is dropped, and whatever a
//! crash left is removed when the daemon starts ([`super::Store::open`]).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::blob::{Blob, Spill};

/// Buffer between a step and its work file.
const BUFFER: usize = 256 * 1024;

/// The work folder of one attempt at one message.
#[derive(Debug)]
pub struct WorkDir {
    dir: PathBuf,
    next: AtomicU64,
}

impl WorkDir {
    /// Makes (or takes over) the folder `dir`, private to the daemon.
    pub fn create(dir: PathBuf) -> io::Result<Self> {
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(Self {
            dir,
            next: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Spill for WorkDir {
    fn spill(&self, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<Blob> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{n}.part"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let made = (|| {
            let mut w = BufWriter::with_capacity(BUFFER, &file);
            fill(&mut w)?;
            w.flush()?;
            drop(w);
            if file.metadata()?.len() == 0 {
                return Ok(Blob::from(Vec::new()));
            }
            Ok(Blob::new(crate::ossl::map_file(&file)?))
        })();
        // Mapped (or failed): the name is no longer needed.
        let _ = fs::remove_file(&path);
        made
    }

    fn large(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::write_all;

    #[test]
    fn products_are_mapped_back_and_leave_no_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("work").join("m1");
        let work = WorkDir::create(dir.clone()).unwrap();
        let a = work
            .spill(&mut |w| write_all(w, &[b"hello ", b"world"]))
            .unwrap();
        let empty = work.spill(&mut |_| Ok(())).unwrap();
        let failed = work.spill(&mut |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert_eq!(&*a, b"hello world");
        assert!(empty.is_empty());
        assert!(failed.is_err());
        assert!(work.large());
        // Positive control: the folder exists while the attempt runs...
        assert!(dir.is_dir());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "no file stays");
        drop(work);
        // ...and the bytes outlive it, the folder does not.
        assert!(!dir.exists());
        assert_eq!(&*a, b"hello world");
    }
}

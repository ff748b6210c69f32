//! A folder of `.eml` files (one message per file, as mail clients save
//! them) as a migration source: one folder, the files' times as arrival
//! times, no flags. A new copy is written next to its original (name
//! from the original's SHA-256, CRLF line ends, the original's time; a
//! batch of copies: each file fsynced, then the folder once); originals
//! are moved into a subfolder or removed, made durable by one fsync of
//! each folder touched per batch ([`Source::sync`]).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::maildir::{marker_in, read_headers, write_file};
use super::source::{Entry, NewMessage, Source, SourceError};
use crate::durable::sync_dir;

/// The one folder an `.eml` directory has.
pub const FOLDER: &str = ".";

pub struct EmlDir {
    root: PathBuf,
    markers: Option<HashMap<String, Entry>>,
    /// Subfolders originals were moved into since the last
    /// [`Source::sync`] (fsynced before the folder they left).
    moved_into: Vec<PathBuf>,
    /// Originals were moved or removed since the last sync.
    touched: bool,
}

impl EmlDir {
    pub fn open(root: &Path) -> Result<Self, SourceError> {
        if !root.is_dir() {
            return Err(SourceError::Unsupported(format!(
                "{}: not a directory",
                root.display()
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            markers: None,
            moved_into: Vec::new(),
            touched: false,
        })
    }

    fn check(&self, folder: &str) -> Result<(), SourceError> {
        if folder == FOLDER {
            Ok(())
        } else {
            Err(SourceError::NoFolder(folder.to_string()))
        }
    }

    fn index(&mut self) -> Result<&mut HashMap<String, Entry>, SourceError> {
        if self.markers.is_none() {
            let mut map = HashMap::new();
            for e in self.list(FOLDER)? {
                if let Ok(bytes) = read_headers(&self.root.join(&e.id)) {
                    if let Some(m) = marker_in(&bytes) {
                        map.insert(m, e);
                    }
                }
            }
            self.markers = Some(map);
        }
        Ok(self.markers.get_or_insert_with(HashMap::new))
    }
}

impl Source for EmlDir {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn folders(&mut self) -> Result<Vec<String>, SourceError> {
        Ok(vec![FOLDER.to_string()])
    }

    fn list(&mut self, folder: &str) -> Result<Vec<Entry>, SourceError> {
        self.check(folder)?;
        let list = fs::read_dir(&self.root).map_err(|e| SourceError::io(&self.root, e))?;
        let mut out = Vec::new();
        for f in list.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if !name.to_ascii_lowercase().ends_with(".eml") || name.starts_with('.') {
                continue;
            }
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let date = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            out.push(Entry {
                id: name,
                flags: Vec::new(),
                internal_date: date,
                size: meta.len(),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn fetch(&mut self, folder: &str, entry: &Entry) -> Result<Vec<u8>, SourceError> {
        self.check(folder)?;
        let p = self.root.join(&entry.id);
        fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::Gone(entry.id.clone()),
            _ => SourceError::io(&p, e),
        })
    }

    fn find_marker(&mut self, folder: &str, marker: &str) -> Result<Option<Entry>, SourceError> {
        self.check(folder)?;
        Ok(self.index()?.get(marker).cloned())
    }

    fn append_many(
        &mut self,
        folder: &str,
        messages: &[NewMessage<'_>],
    ) -> Vec<Result<Entry, SourceError>> {
        if let Err(e) = self.check(folder) {
            return super::source::all_failed(messages.len(), &e);
        }
        // Each file written and fsynced, then one fsync of the folder.
        let mut out: Vec<Result<(String, Entry), SourceError>> = messages
            .iter()
            .map(|m| {
                let marker = marker_in(m.message).unwrap_or_default();
                // The whole SHA-256 of the original: one name per original.
                let hash = marker.rsplit('=').next().unwrap_or("");
                let name = format!("rekeyed-{hash}.eml");
                write_file(
                    &self.root.join(format!(".{name}.tmp")),
                    &self.root.join(&name),
                    m.message,
                    m.internal_date,
                )?;
                let entry = Entry {
                    id: name,
                    flags: Vec::new(),
                    internal_date: m.internal_date,
                    size: m.message.len() as u64,
                };
                Ok((marker, entry))
            })
            .collect();
        if let Err(e) = sync_dir(&self.root) {
            // Not known to be durable: none of them counts as written.
            let why = SourceError::io(&self.root, e).to_string();
            for r in out.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(SourceError::Batch(why.clone()));
            }
        }
        let index = match self.index() {
            Ok(i) => i,
            Err(e) => {
                return super::source::all_failed(messages.len(), &e);
            }
        };
        out.into_iter()
            .map(|r| {
                r.map(|(marker, entry)| {
                    index.insert(marker, entry.clone());
                    entry
                })
            })
            .collect()
    }

    fn remove(&mut self, folder: &str, entry: &Entry, to: Option<&str>) -> Result<(), SourceError> {
        self.check(folder)?;
        let path = self.root.join(&entry.id);
        match to {
            Some(sub) => {
                let dir = self.root.join(sub);
                if !dir.is_dir() {
                    fs::create_dir_all(&dir).map_err(|e| SourceError::io(&dir, e))?;
                    sync_dir(&self.root).map_err(|e| SourceError::io(&self.root, e))?;
                }
                let dest = dir.join(&entry.id);
                fs::rename(&path, &dest).map_err(|e| SourceError::io(&dest, e))?;
                if !self.moved_into.contains(&dir) {
                    self.moved_into.push(dir);
                }
            }
            None => fs::remove_file(&path).map_err(|e| SourceError::io(&path, e))?,
        }
        self.touched = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SourceError> {
        // Where the originals went first, then the folder they left; what
        // fails stays to be synced again.
        while let Some(d) = self.moved_into.first() {
            sync_dir(d).map_err(|e| SourceError::io(d, e))?;
            self.moved_into.remove(0);
        }
        if self.touched {
            sync_dir(&self.root).map_err(|e| SourceError::io(&self.root, e))?;
            self.touched = false;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), SourceError> {
        self.sync()
    }
}

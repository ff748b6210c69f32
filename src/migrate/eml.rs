//! A folder of `.eml` files (one message per file, as mail clients save
//! them) as a migration source: one folder, the files' times as arrival
//! times, no flags. A new copy is written next to its original (name
//! from the original's SHA-256, CRLF line ends, the original's time);
//! originals are moved into a subfolder or removed.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::maildir::{marker_in, read_headers, write_durably};
use super::source::{Entry, Source, SourceError};
use crate::durable::sync_dir;

/// The one folder an `.eml` directory has.
pub const FOLDER: &str = ".";

pub struct EmlDir {
    root: PathBuf,
    markers: Option<HashMap<String, Entry>>,
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

    fn append(
        &mut self,
        folder: &str,
        message: &[u8],
        _flags: &[String],
        internal_date: i64,
    ) -> Result<Entry, SourceError> {
        self.check(folder)?;
        let marker = marker_in(message).unwrap_or_default();
        let hash: String = marker
            .rsplit('=')
            .next()
            .unwrap_or("")
            .chars()
            .take(16)
            .collect();
        let name = format!("rekeyed-{hash}.eml");
        write_durably(
            &self.root.join(format!(".{name}.tmp")),
            &self.root.join(&name),
            message,
            internal_date,
        )?;
        let entry = Entry {
            id: name,
            flags: Vec::new(),
            internal_date,
            size: message.len() as u64,
        };
        self.index()?.insert(marker, entry.clone());
        Ok(entry)
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
                sync_dir(&dir).map_err(|e| SourceError::io(&dir, e))?;
            }
            None => fs::remove_file(&path).map_err(|e| SourceError::io(&path, e))?,
        }
        sync_dir(&self.root).map_err(|e| SourceError::io(&self.root, e))
    }
}

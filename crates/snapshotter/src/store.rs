//! The snapshot records: one JSON file in the root, replaced as a whole
//! (written aside, synced, renamed, directory synced), so a crash leaves
//! either the old or the new state, never half of one. Image files are
//! named by a record's id; files without a record are orphans
//! ([`crate::Snapshotter::cleanup`] removes them).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The file name of the records in the root directory.
pub const METADATA_FILE: &str = "metadata.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Active,
    View,
    Committed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Names the image file, `<id>.img`; never reused.
    pub id: u64,
    pub kind: Kind,
    /// Key of the parent (a committed snapshot), empty for none.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Data {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a snapshot record file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The records, loaded once and written through on every change.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    data: Data,
}

impl Store {
    /// Loads `dir/metadata.json`, or starts empty if there is none.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(METADATA_FILE);
        let data = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Data::default(),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(Self { path, data })
    }

    pub fn get(&self, key: &str) -> Option<&Record> {
        self.data.snapshots.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.data.snapshots.iter()
    }

    /// Keys of the snapshots whose parent is `key`.
    pub fn children(&self, key: &str) -> Vec<&str> {
        self.iter()
            .filter(|(_, r)| r.parent == key)
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// A fresh id for a new image file (persisted with the next change).
    pub fn next_id(&mut self) -> u64 {
        self.data.next_id += 1;
        self.data.next_id
    }

    /// Applies `change` and persists the result; on a write failure the
    /// records in memory are left as they were.
    pub fn update<T>(
        &mut self,
        change: impl FnOnce(&mut BTreeMap<String, Record>) -> T,
    ) -> Result<T, StoreError> {
        let before = self.data.snapshots.clone();
        let out = change(&mut self.data.snapshots);
        if let Err(e) = self.persist() {
            self.data.snapshots = before;
            return Err(e);
        }
        Ok(out)
    }

    fn persist(&self) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.data).expect("records serialize");
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, kind: Kind, parent: &str) -> Record {
        let now = SystemTime::now();
        Record {
            id,
            kind,
            parent: parent.into(),
            labels: HashMap::from([("a".into(), "b".into())]),
            created: now,
            updated: now,
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let (a, b) = (s.next_id(), s.next_id());
        s.update(|m| {
            m.insert("base".into(), record(a, Kind::Committed, ""));
            m.insert("work".into(), record(b, Kind::Active, "base"));
        })
        .unwrap();

        let mut s2 = Store::open(dir.path()).unwrap();
        assert_eq!(s2.get("base"), s.get("base"));
        assert_eq!(s2.get("work"), s.get("work"));
        assert_eq!(s2.children("base"), vec!["work"]);
        // Ids are never reused, also after a reopen.
        assert_eq!(s2.next_id(), 3);
        assert!(!dir.path().join("metadata.json.tmp").exists());
    }

    #[test]
    fn failed_write_leaves_memory_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        // A directory where the temporary file would go: the write fails.
        std::fs::create_dir(dir.path().join("metadata.json.tmp")).unwrap();
        let err = s
            .update(|m| m.insert("k".into(), record(1, Kind::Active, "")))
            .unwrap_err();
        assert!(matches!(err, StoreError::Write { .. }), "{err}");
        assert!(s.get("k").is_none());
    }

    #[test]
    fn garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(METADATA_FILE), b"{not json").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("metadata.json"), "{err}");
    }
}

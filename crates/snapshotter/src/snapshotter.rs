//! The snapshotter's logic, synchronous and independent of gRPC: snapshots
//! are filesystem image files under `ROOT/snapshots/<id>.img`. A snapshot
//! without parent starts as a copy of the empty template `ROOT/template-*.img`
//! (made once with mkfs); an active snapshot on a parent starts as a copy of
//! the parent's image; a view on a parent mounts the parent's image
//! read-only (committed images are never written again), as containerd's
//! `blockfile` snapshotter does. Commit only renames the record.

use fs_err as fs;
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::copy::copy_image;
use crate::filter::{any_matches, Fields, Filter, FilterError};
use crate::store::{Kind, Record, Store, StoreError};

/// Filesystems the snapshotter can make (with e2fsprogs' `mke2fs`).
pub const FS_TYPES: &[&str] = &["ext4", "ext3", "ext2"];

#[derive(Debug, Clone)]
pub struct Config {
    /// Holds the records, the template and the images.
    pub root: PathBuf,
    /// Size of every image in bytes (sparse: only what is written costs).
    pub image_size: u64,
    /// One of [`FS_TYPES`].
    pub fs_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A filesystem call failed; through `fs_err`, the error names the
    /// operation and the path.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// `copy_image` reflinks or copies through raw descriptors, which
    /// `fs_err` does not wrap: the paths are named here.
    #[error("copy image {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mke2fs -t {fs_type} {}: {detail}", path.display())]
    Mkfs {
        fs_type: String,
        path: PathBuf,
        detail: String,
    },
}

/// What containerd's `Stat`/`Walk` report about a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    pub key: String,
    pub kind: Kind,
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// One mount of a snapshot: `mount -t TYPE -o OPTIONS SOURCE TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub fs_type: String,
    pub source: PathBuf,
    pub options: Vec<String>,
}

/// What `Update` changes: all labels, or single labels (`labels.KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelUpdate {
    ReplaceAll,
    Keys(Vec<String>),
}

pub struct Snapshotter {
    config: Config,
    template: PathBuf,
    images: PathBuf,
    store: Mutex<Store>,
}

impl Snapshotter {
    /// Opens (or creates) the root: the records, the images directory, the
    /// template image; removes orphan image files a crash may have left.
    pub fn open(config: Config) -> Result<Self, Error> {
        if !FS_TYPES.contains(&config.fs_type.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "filesystem type {:?} is not supported (supported: {})",
                config.fs_type,
                FS_TYPES.join(", ")
            )));
        }
        if config.image_size < 16 << 20 {
            return Err(Error::InvalidArgument(format!(
                "image size {} bytes is below the minimum of 16 MiB",
                config.image_size
            )));
        }
        let images = config.root.join("snapshots");
        fs::create_dir_all(&images)?;
        let store = Store::open(&config.root)?;
        let template = config.root.join(format!(
            "template-{}-{}.img",
            config.fs_type, config.image_size
        ));
        if !template.exists() {
            make_template(&template, &config)?;
        }
        let me = Self {
            config,
            template,
            images,
            store: Mutex::new(store),
        };
        me.cleanup()?;
        Ok(me)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the records as persisted.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The image file of record `id`.
    pub fn image_path(&self, id: u64) -> PathBuf {
        self.images.join(format!("{id}.img"))
    }

    pub fn stat(&self, key: &str) -> Result<SnapshotInfo, Error> {
        let store = self.lock();
        let rec = store.get(key).ok_or_else(|| Error::NotFound(key.into()))?;
        Ok(info(key, rec))
    }

    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<MountSpec>, Error> {
        self.create(Kind::Active, key, parent, labels)
    }

    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<MountSpec>, Error> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<MountSpec>, Error> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("snapshot key is empty".into()));
        }
        let mut store = self.lock();
        if store.get(key).is_some() {
            return Err(Error::AlreadyExists(key.into()));
        }
        let source = if parent.is_empty() {
            self.template.clone()
        } else {
            let p = store
                .get(parent)
                .ok_or_else(|| Error::NotFound(parent.into()))?;
            if p.kind != Kind::Committed {
                return Err(Error::Precondition(format!(
                    "parent {parent:?} of {key:?} is {}, not committed",
                    p.kind.name()
                )));
            }
            self.image_path(p.id)
        };
        let id = store.next_id();
        // A view of a parent reads the parent's image; everything else gets
        // an image of its own.
        let own_image = kind != Kind::View || parent.is_empty();
        let image = self.image_path(id);
        if own_image {
            copy_image(&source, &image).map_err(|source_err| Error::Copy {
                from: source.clone(),
                to: image.clone(),
                source: source_err,
            })?;
        }
        let now = SystemTime::now();
        let rec = Record {
            id,
            kind,
            parent: parent.into(),
            labels,
            created: now,
            updated: now,
        };
        if let Err(e) = store.update(|m| m.insert(key.to_string(), rec.clone())) {
            let _ = std::fs::remove_file(&image);
            return Err(e.into());
        }
        tracing::debug!(key, parent, kind = kind.name(), id, "snapshot created");
        Ok(self.mounts_of(&store, &rec))
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<MountSpec>, Error> {
        let store = self.lock();
        let rec = store.get(key).ok_or_else(|| Error::NotFound(key.into()))?;
        if rec.kind == Kind::Committed {
            return Err(Error::Precondition(format!(
                "snapshot {key:?} is committed: only active snapshots and views have mounts"
            )));
        }
        Ok(self.mounts_of(&store, rec))
    }

    fn mounts_of(&self, store: &Store, rec: &Record) -> Vec<MountSpec> {
        let image = match (rec.kind, store.get(&rec.parent)) {
            (Kind::View, Some(parent)) => self.image_path(parent.id),
            _ => self.image_path(rec.id),
        };
        let rw = if rec.kind == Kind::View { "ro" } else { "rw" };
        vec![MountSpec {
            fs_type: self.config.fs_type.clone(),
            source: image,
            options: vec!["loop".into(), rw.into()],
        }]
    }

    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let mut store = self.lock();
        let rec = store.get(key).ok_or_else(|| Error::NotFound(key.into()))?;
        if rec.kind != Kind::Active {
            return Err(Error::Precondition(format!(
                "snapshot {key:?} is {}: only active snapshots can be committed",
                rec.kind.name()
            )));
        }
        if name.is_empty() {
            return Err(Error::InvalidArgument("commit name is empty".into()));
        }
        if store.get(name).is_some() {
            return Err(Error::AlreadyExists(name.into()));
        }
        let image = self.image_path(rec.id);
        fs::File::open(&image).and_then(|f| f.sync_all())?;
        store.update(|m| {
            let mut rec = m.remove(key).expect("checked above");
            rec.kind = Kind::Committed;
            rec.labels = labels;
            rec.updated = SystemTime::now();
            m.insert(name.to_string(), rec);
        })?;
        tracing::debug!(key, name, "snapshot committed");
        Ok(())
    }

    /// Removes a snapshot and its image; refused while it has children.
    pub fn remove(&self, key: &str) -> Result<(), Error> {
        let mut store = self.lock();
        let rec = store.get(key).ok_or_else(|| Error::NotFound(key.into()))?;
        let id = rec.id;
        let children = store.children(key);
        if !children.is_empty() {
            return Err(Error::Precondition(format!(
                "snapshot {key:?} has children ({}): remove them first",
                children.join(", ")
            )));
        }
        store.update(|m| m.remove(key))?;
        // After the record: a crash in between leaves an orphan file,
        // which cleanup removes, never a record without its image.
        let image = self.image_path(id);
        match fs::remove_file(&image) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(key, id, "snapshot removed");
        Ok(())
    }

    /// Sets labels: with [`LabelUpdate::ReplaceAll`] to `labels`, with
    /// [`LabelUpdate::Keys`] each named key to its value in `labels` or
    /// removed if absent there.
    pub fn update(
        &self,
        key: &str,
        labels: HashMap<String, String>,
        what: LabelUpdate,
    ) -> Result<SnapshotInfo, Error> {
        let mut store = self.lock();
        if store.get(key).is_none() {
            return Err(Error::NotFound(key.into()));
        }
        let rec = store.update(|m| {
            let rec = m.get_mut(key).expect("checked above");
            match what {
                LabelUpdate::ReplaceAll => rec.labels = labels,
                LabelUpdate::Keys(keys) => {
                    for k in keys {
                        match labels.get(&k) {
                            Some(v) => rec.labels.insert(k, v.clone()),
                            None => rec.labels.remove(&k),
                        };
                    }
                }
            }
            rec.updated = SystemTime::now();
            rec.clone()
        })?;
        Ok(info(key, &rec))
    }

    /// Bytes allocated to the snapshot's own image (none for a view of a
    /// parent, which has no image of its own).
    pub fn usage(&self, key: &str) -> Result<u64, Error> {
        let store = self.lock();
        let rec = store.get(key).ok_or_else(|| Error::NotFound(key.into()))?;
        let image = self.image_path(rec.id);
        match fs::metadata(&image) {
            Ok(m) => Ok(m.blocks() * 512),
            Err(e) if e.kind() == io::ErrorKind::NotFound && rec.kind == Kind::View => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// The snapshots matching any of `filters` (all if none), by key.
    pub fn walk(&self, filters: &[String]) -> Result<Vec<SnapshotInfo>, Error> {
        let filters = filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        let store = self.lock();
        Ok(store
            .iter()
            .filter(|(key, rec)| {
                let fields = Fields {
                    name: key,
                    parent: &rec.parent,
                    kind: rec.kind.name(),
                    labels: &rec.labels,
                };
                any_matches(&filters, &fields)
            })
            .map(|(key, rec)| info(key, rec))
            .collect())
    }

    /// Removes image files no record names (left by a crash between a
    /// file operation and the record update).
    pub fn cleanup(&self) -> Result<Vec<PathBuf>, Error> {
        let store = self.lock();
        let known: std::collections::HashSet<String> =
            store.iter().map(|(_, r)| format!("{}.img", r.id)).collect();
        let mut removed = Vec::new();
        let entries = fs::read_dir(&self.images)?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if known.contains(name.to_string_lossy().as_ref()) {
                continue;
            }
            let path = entry.path();
            fs::remove_file(&path)?;
            tracing::info!(path = %path.display(), "removed orphan image");
            removed.push(path);
        }
        Ok(removed)
    }
}

fn info(key: &str, rec: &Record) -> SnapshotInfo {
    SnapshotInfo {
        key: key.into(),
        kind: rec.kind,
        parent: rec.parent.clone(),
        labels: rec.labels.clone(),
        created: rec.created,
        updated: rec.updated,
    }
}

/// The empty filesystem every snapshot without parent starts from: a
/// sparse file of the configured size, formatted, renamed into place.
fn make_template(path: &Path, config: &Config) -> Result<(), Error> {
    let tmp = path.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    let f = fs::File::create(&tmp)?;
    f.set_len(config.image_size)?;
    drop(f);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", &config.fs_type, "-L", "capsa-snap"])
        .arg(&tmp)
        .output();
    let fail = |detail: String| {
        let _ = std::fs::remove_file(&tmp);
        Error::Mkfs {
            fs_type: config.fs_type.clone(),
            path: tmp.clone(),
            detail,
        }
    };
    match out {
        Err(e) => return Err(fail(format!("cannot run mke2fs (e2fsprogs): {e}"))),
        Ok(o) if !o.status.success() => {
            return Err(fail(format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )))
        }
        Ok(_) => {}
    }
    fs::rename(&tmp, path)?;
    tracing::info!(path = %path.display(), size = config.image_size, fs = %config.fs_type, "made template image");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(root: &Path) -> Snapshotter {
        Snapshotter::open(Config {
            root: root.to_path_buf(),
            image_size: 64 << 20,
            fs_type: "ext4".into(),
        })
        .unwrap()
    }

    fn images(root: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn lifecycle_of_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = s.prepare("a-work", "", HashMap::new()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[0].options, ["loop", "rw"]);
        // A copy of the template: an ext4 image of the configured size.
        let img = std::fs::read(&m[0].source).unwrap();
        assert_eq!(img.len(), 64 << 20);
        assert_eq!(&img[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef], "ext4 magic");
        // Something written into the active image, as a mount would.
        std::fs::write(&m[0].source, b"layer one").unwrap();

        let labels = HashMap::from([("l".to_string(), "1".to_string())]);
        s.commit("a", "a-work", labels.clone()).unwrap();
        assert!(matches!(s.stat("a-work"), Err(Error::NotFound(_))));
        let a = s.stat("a").unwrap();
        assert_eq!((a.kind, a.labels), (Kind::Committed, labels));
        assert!(matches!(s.mounts("a"), Err(Error::Precondition(_))));

        let b = s.prepare("b", "a", HashMap::new()).unwrap();
        assert_ne!(b[0].source, m[0].source);
        assert_eq!(std::fs::read(&b[0].source).unwrap(), b"layer one");
        let v = s.view("v", "a", HashMap::new()).unwrap();
        assert_eq!(v[0].options, ["loop", "ro"]);
        assert_eq!(v[0].source, m[0].source, "a view reads its parent's image");
        assert_eq!(s.mounts("v").unwrap(), v);
        assert_eq!(s.usage("v").unwrap(), 0);
        assert!(s.usage("b").unwrap() > 0);

        assert!(matches!(
            s.prepare("b", "a", HashMap::new()),
            Err(Error::AlreadyExists(k)) if k == "b"
        ));
        assert!(matches!(
            s.prepare("c", "b", HashMap::new()),
            Err(Error::Precondition(_))
        ));
        assert!(matches!(
            s.prepare("c", "nope", HashMap::new()),
            Err(Error::NotFound(k)) if k == "nope"
        ));
        assert!(matches!(
            s.commit("a", "b", HashMap::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            s.commit("x", "v", HashMap::new()),
            Err(Error::Precondition(_))
        ));

        // A parent with children stays.
        let err = s.remove("a").unwrap_err();
        assert!(matches!(err, Error::Precondition(_)), "{err}");
        assert!(err.to_string().contains("(b, v)"), "{err}");

        let names: Vec<_> = s.walk(&[]).unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(names, ["a", "b", "v"]);
        let active = s.walk(&["kind==active".into()]).unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].key, "b");
        assert!(matches!(s.walk(&["size==1".into()]), Err(Error::Filter(_))));

        // The records survive a restart.
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.stat("b").unwrap().parent, "a");
        for k in ["b", "v", "a"] {
            s.remove(k).unwrap();
        }
        assert!(s.walk(&[]).unwrap().is_empty());
        assert!(images(dir.path()).is_empty(), "{:?}", images(dir.path()));
    }

    #[test]
    fn update_labels() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let start = HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        s.prepare("k", "", start).unwrap();
        let new = HashMap::from([("a".into(), "9".into()), ("c".into(), "3".into())]);
        let i = s
            .update(
                "k",
                new.clone(),
                LabelUpdate::Keys(vec!["a".into(), "b".into()]),
            )
            .unwrap();
        assert_eq!(i.labels, HashMap::from([("a".into(), "9".into())]));
        let i = s.update("k", new.clone(), LabelUpdate::ReplaceAll).unwrap();
        assert_eq!(i.labels, new);
        assert!(i.updated >= i.created);
        assert!(matches!(
            s.update("nope", HashMap::new(), LabelUpdate::ReplaceAll),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn cleanup_removes_orphans_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.prepare("k", "", HashMap::new()).unwrap();
        let orphan = dir.path().join("snapshots/77.img");
        std::fs::write(&orphan, b"left by a crash").unwrap();
        assert_eq!(s.cleanup().unwrap(), vec![orphan]);
        assert_eq!(images(dir.path()), ["1.img"]);
    }

    #[test]
    fn bad_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Snapshotter::open(Config {
            root: dir.path().into(),
            image_size: 1 << 30,
            fs_type: "btrfs".into(),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("\"btrfs\""), "{err}");
    }
}

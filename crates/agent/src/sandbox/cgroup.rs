//! Reading and writing the files of a container's cgroup (v2).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Where the guest's cgroup2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot parse {text:?}")]
    Parse { path: PathBuf, text: String },
}

/// The directory of the cgroup at `path` (a cgroupfs path such as
/// `/capsa/<id>`).
pub fn dir(path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    Path::new(CGROUP_ROOT).join(relative)
}

pub fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| CgroupError::Read(path, e))
}

/// Reads `file` if it exists (controllers and kernels differ in files).
pub fn read_optional(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(dir.join(file)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CgroupError::Read(dir.join(file), e)),
    }
}

pub fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    tracing::debug!(path = %path.display(), value, "cgroup write");
    std::fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

/// How long [`freeze`] waits for the kernel to report the cgroup frozen.
const FREEZE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Freezes the cgroup `dir` (`cgroup.freeze`) and waits a bounded time for
/// `cgroup.events` to say `frozen 1`. Returns whether the freeze was asked
/// for: the caller then thaws, frozen in time or not.
pub fn freeze(dir: &Path) -> bool {
    if let Err(e) = write(dir, "cgroup.freeze", "1") {
        tracing::warn!(error = %e, "cannot freeze");
        return false;
    }
    let deadline = std::time::Instant::now() + FREEZE_WAIT;
    while std::time::Instant::now() < deadline {
        let events = read(dir, "cgroup.events").unwrap_or_default();
        if events.lines().any(|l| l.trim() == "frozen 1") {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(dir = %dir.display(), "not frozen after {FREEZE_WAIT:?}");
    true
}

/// A flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`): one
/// `key value` pair a line. Lines that do not parse are skipped.
pub fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let key = words.next()?;
            let value = words.next()?.parse().ok()?;
            Some((key.to_string(), value))
        })
        .collect()
}

/// A single-value file (`memory.max`, `pids.max`): `None` for `max`.
pub fn limit(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        v => v.parse().ok().map(Some),
    }
}

/// Reads a single-value file; `Ok(None)` when the file is missing.
pub fn read_u64(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    let Some(text) = read_optional(dir, file)? else {
        return Ok(None);
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| CgroupError::Parse {
            path: dir.join(file),
            text,
        })
}

/// The pids of the cgroup and of its descendants, in the agent's (the
/// guest's) pid namespace.
pub fn pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    collect_pids(dir, &mut pids)?;
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) -> Result<(), CgroupError> {
    let text = read(dir, "cgroup.procs")?;
    pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = std::fs::read_dir(dir).map_err(|e| CgroupError::Read(dir.to_path_buf(), e))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files() {
        let m = flat_keyed("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nbad\nx y\n");
        assert_eq!(m["usage_usec"], 1500);
        assert_eq!(m["system_usec"], 500);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn limits() {
        assert_eq!(limit("max\n"), Some(None));
        assert_eq!(limit("1048576\n"), Some(Some(1_048_576)));
        assert_eq!(limit("lots"), None);
    }

    #[test]
    fn cgroup_dirs() {
        assert_eq!(
            dir(Path::new("/capsa/c1")),
            PathBuf::from("/sys/fs/cgroup/capsa/c1")
        );
    }

    #[test]
    fn pids_walk_the_subtree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.procs"), "12\n3\n").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/cgroup.procs"), "7\n12\n").unwrap();
        assert_eq!(pids(d.path()).unwrap(), vec![3, 7, 12]);
        assert_eq!(read_u64(d.path(), "missing").unwrap(), None);
    }
}

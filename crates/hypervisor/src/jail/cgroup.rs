//! Joining the cgroups the caller chose (the pod's): the parent writes the
//! waiting child's pid into each directory's `cgroup.procs` before the
//! child goes on, so the program and all it forks are accounted and
//! limited there from their first instruction. The child then enters a new
//! cgroup namespace, rooted at those cgroups. Creating, limiting and
//! removing the cgroups stays with the caller (the pod's resource layer).

use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use super::JailError;

/// The file a pid is written to, to move it into cgroup `dir` (v1 or v2).
pub fn procs_file(dir: &Path) -> PathBuf {
    dir.join("cgroup.procs")
}

/// Moves `pid` into every cgroup of `dirs`.
pub fn join(name: &str, pid: Pid, dirs: &[PathBuf]) -> Result<(), JailError> {
    for dir in dirs {
        std::fs::write(procs_file(dir), pid.to_string()).map_err(|source| JailError::Cgroup {
            name: name.into(),
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_a_cgroup_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = join("t", Pid::from_raw(1), std::slice::from_ref(&missing)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("jail t: join cgroup {}", missing.display())
        );
    }
}

//! A sandbox's state directory: `<state_dir>/<sandbox-id>/`, holding the
//! VM's sockets, its console log and the directory shared with the guest.

use fs_err as fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::resource::share::mount;
use crate::Error;

/// The state directory of one sandbox. Created empty, removed with
/// [`StateDir::remove`], which first detaches every mount below it.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Creates `<root>/<id>` (mode 0700); fails if it already exists.
    pub fn create(root: &Path, id: &str) -> Result<Self, Error> {
        crate::vm::check_id(id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(|source| Error::MakeDir {
                path: root.into(),
                source,
            })?;
        // Mount points are matched against /proc/self/mountinfo, which
        // holds canonical paths: a symlinked root would hide them.
        let root = fs::canonicalize(root)?;
        let path = root.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::SandboxExists(id.into()),
                _ => Error::MakeDir {
                    path: path.clone(),
                    source: e,
                },
            })?;
        let dir = Self { path };
        let made = dir.make_share();
        let owner = dir.path.join(OWNER_FILE);
        let made = made.and_then(|()| Ok(fs::write(&owner, std::process::id().to_string())?));
        if let Err(e) = made {
            let _ = dir.remove();
            return Err(e);
        }
        Ok(dir)
    }

    /// Removes the state directories below `root` whose owner process is
    /// gone: a `capsa` killed with SIGKILL takes its VM and helpers with it
    /// (parent-death signal) but cannot unmount or remove its state.
    /// Returns the ids collected.
    pub fn collect_stale(root: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(root) else {
            return Vec::new();
        };
        let mut collected = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let owner = std::fs::read_to_string(path.join(OWNER_FILE))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            // Directories without an owner file are not capsa's: left alone.
            let Some(pid) = owner else { continue };
            if process_alive(pid) {
                continue;
            }
            let dir = Self { path: path.clone() };
            dir.release_network();
            match dir.remove() {
                Ok(()) => collected.push(entry.file_name().to_string_lossy().into_owned()),
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "stale sandbox state not removed")
                }
            }
        }
        collected
    }

    /// Takes down what the sandbox recorded it made in the pod's network
    /// namespace (taps, filters), for a sandbox whose owner died. Failures
    /// are logged; a netns that is gone took its taps with it.
    pub fn release_network(&self) {
        let Ok(record) = crate::record::SandboxRecord::load(&self.path) else {
            return;
        };
        let Some(netns) = record.netns else { return };
        if !netns.exists() {
            tracing::debug!(netns = %netns.display(), "pod netns gone: no taps left to remove");
            return;
        }
        match crate::resource::network::teardown_blocking(&netns) {
            Ok(taps) => {
                tracing::info!(sandbox = %record.id, netns = %netns.display(), ?taps, "pod network of a dead sandbox taken down")
            }
            Err(e) => tracing::warn!(
                sandbox = %record.id,
                error = %crate::error_chain(&e),
                "pod network of a dead sandbox not taken down"
            ),
        }
    }

    /// The state directory of sandbox `id` below `root`, which must exist.
    pub fn open(root: &Path, id: &str) -> Result<Self, Error> {
        crate::vm::check_id(id)?;
        let path = canonical(root).join(id);
        if !path.join(crate::record::RECORD_FILE).is_file() {
            return Err(Error::NoSandbox {
                id: id.into(),
                root: root.into(),
            });
        }
        Ok(Self { path })
    }

    /// The state directory of sandbox `id` below `root` if it exists, with
    /// or without a record (its maker may have died before writing one).
    pub fn find(root: &Path, id: &str) -> Result<Option<Self>, Error> {
        crate::vm::check_id(id)?;
        let path = canonical(root).join(id);
        Ok(path.is_dir().then_some(Self { path }))
    }

    /// An existing state directory at `path`, made by a parent process.
    pub fn existing(path: &Path) -> Result<Self, Error> {
        let path = fs::canonicalize(path)?;
        if !path.is_dir() {
            return Err(Error::NotDir(path));
        }
        Ok(Self { path })
    }

    /// The sandbox ids below `root` that have a record, sorted.
    pub fn list(root: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(root) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join(crate::record::RECORD_FILE).is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sandbox id: the directory's name.
    pub fn id(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Makes this process the owner: the directory is collected as stale
    /// once it dies.
    pub fn claim(&self) -> Result<(), Error> {
        self.hand_over(std::process::id())
    }

    /// Records process `pid` as the directory's owner: a parent that
    /// starts the owner hands the directory over at once, so that it is
    /// not collected as stale if the parent dies before the owner claims it.
    pub fn hand_over(&self, pid: u32) -> Result<(), Error> {
        let owner = self.path.join(OWNER_FILE);
        Ok(fs::write(&owner, pid.to_string())?)
    }

    /// The owner's pid, if it is alive.
    pub fn live_owner(&self) -> Option<i32> {
        std::fs::read_to_string(self.path.join(OWNER_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|pid| process_alive(*pid))
    }

    /// Gives the directory up but keeps its files: detaches every mount,
    /// removes the shared directory and the owner file. What is left (the
    /// record and the logs) is removed by [`StateDir::remove`].
    pub fn release(&self) -> Result<(), Error> {
        self.release_cni()?;
        let dev = self.detach_all()?;
        for d in [self.shared_dir(), self.mounts_dir()] {
            if d.exists() {
                remove_tree(&d, dev)?;
            }
        }
        let owner = self.path.join(OWNER_FILE);
        match fs::remove_file(&owner) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Exported to the guest over virtio-fs: a read-only view of
    /// [`StateDir::mounts_dir`]. The guest can write only inside what the
    /// host mounted there read-write (a container's rootfs, rw volumes),
    /// never create entries of its own among the host's mount points.
    pub fn shared_dir(&self) -> PathBuf {
        self.path.join("shared")
    }

    /// Where the host mounts what it shares (private to the host; mounts
    /// made here propagate to [`StateDir::shared_dir`]).
    pub fn mounts_dir(&self) -> PathBuf {
        self.path.join("mounts")
    }

    /// `mounts/`: a mount point of its own with shared propagation;
    /// `shared/`: a read-only bind of it that receives its mounts (slave)
    /// and passes them on to virtiofsd's copy (shared).
    fn make_share(&self) -> Result<(), Error> {
        let (mounts, shared) = (self.mounts_dir(), self.shared_dir());
        for d in [&mounts, &shared] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .map_err(|source| Error::MakeDir {
                    path: d.clone(),
                    source,
                })?;
        }
        mount::make_shared_mount(&mounts)?;
        mount::read_only_view(&mounts, &shared)
    }

    /// Lets host group `gid` search the directory and read what is
    /// shared (the VM's processes run as that unprivileged group: a
    /// driver that jails them, `Vm::host_identity`). Others still get
    /// nothing; what the host mounts in the share keeps its own modes.
    pub fn grant_group(&self, gid: u32) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode) in [(self.path.clone(), 0o710), (self.mounts_dir(), 0o750)] {
            // `fs_err` has no chown: the path is named here.
            std::os::unix::fs::chown(&dir, None, Some(gid)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("chown {}: {e}", dir.display()))
            })?;
            fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// Detaches every mount below the directory, then removes it. If a mount
    /// cannot be detached the directory is left in place: removing it would
    /// delete files of the mounted directory.
    pub fn remove(&self) -> Result<(), Error> {
        if !self.path.exists() {
            return Ok(());
        }
        self.release_cni()?;
        let dev = self.detach_all()?;
        remove_tree(&self.path, dev)
    }

    /// Runs CNI DEL for the network capsa attached to the sandbox and
    /// removes the netns it made (`cni.json`), before the netns's mount
    /// goes with the directory's: an IP allocation, a host veth and port
    /// forwarding rules would stay behind otherwise.
    pub fn release_cni(&self) -> Result<(), Error> {
        crate::resource::network::attachment::release(&self.path)?;
        Ok(())
    }

    /// Detaches every mount below the directory; returns the device of
    /// the directory itself, or fails if a mount remains.
    fn detach_all(&self) -> Result<u64, Error> {
        mount::unmount_all_below(&self.path)?;
        if !mount::mounts_below(&self.path).is_empty() {
            return Err(Error::BusyStateDir(self.path.clone()));
        }
        Ok(fs::symlink_metadata(&self.path)?.dev())
    }
}

/// Removes `path` and everything below it, but never descends into a
/// directory on another device than `dev`: a mount that
/// [`mount::mounts_below`] missed is refused, not emptied.
fn remove_tree(path: &Path, dev: u64) -> Result<(), Error> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(fs::remove_file(path)?);
    }
    if meta.dev() != dev {
        return Err(Error::BusyStateDir(path.into()));
    }
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path(), dev)?;
    }
    Ok(fs::remove_dir(path)?)
}

/// `root` with symlinks resolved (as mountinfo shows it), or as given if
/// it does not exist.
fn canonical(root: &Path) -> PathBuf {
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// Holds the pid of the `capsa` process that owns a state directory.
const OWNER_FILE: &str = "owner.pid";

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM still means the process exists.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::Error::ESRCH)
    )
}

/// The last `max_lines` lines of a log file (empty if unreadable).
pub fn tail(path: &Path, max_lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// Waits up to `limit` for a line equal to `line` in the file at `path`
/// (which may not exist yet). Returns whether it appeared.
pub async fn wait_for_line(path: &Path, line: &str, limit: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = std::fs::read(path).unwrap_or_default();
        if String::from_utf8_lossy(&text)
            .lines()
            .any(|l| l.trim_end_matches('\r') == line)
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_handed_over_lives_as_long_as_its_new_owner() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "sb1").unwrap();
        let mut owner = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        dir.hand_over(owner.id()).unwrap();
        assert_eq!(dir.live_owner(), Some(owner.id() as i32));
        let kept = StateDir::collect_stale(root.path());
        owner.kill().unwrap();
        owner.wait().unwrap();
        let collected = StateDir::collect_stale(root.path());
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!(collected, ["sb1"]);
        assert!(!dir.path().exists());
    }

    #[test]
    fn a_group_granted_searches_the_directory_and_reads_the_share() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "sb1").unwrap();
        dir.grant_group(1_999_998).unwrap();
        for (path, mode) in [
            (dir.path().to_path_buf(), 0o710),
            (dir.mounts_dir(), 0o750),
            // The read-only view is the same directory.
            (dir.shared_dir(), 0o750),
        ] {
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.gid(), 1_999_998, "{}", path.display());
            assert_eq!(
                meta.permissions().mode() & 0o777,
                mode,
                "{}",
                path.display()
            );
        }
        dir.remove().unwrap();
    }

    #[test]
    fn create_refuses_existing_and_remove_cleans() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "sb1").unwrap();
        assert!(dir.shared_dir().is_dir());
        assert!(dir.mounts_dir().is_dir());
        assert!(StateDir::create(root.path(), "sb1").is_err());
        std::fs::write(dir.console_log(), "a\nb\nc\n").unwrap();
        assert_eq!(tail(&dir.console_log(), 2), "b\nc");
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        dir.remove().unwrap();
    }

    #[test]
    fn stale_state_of_a_dead_owner_is_collected() {
        let root = tempfile::tempdir().unwrap();
        let live = StateDir::create(root.path(), "live").unwrap();
        let dead = StateDir::create(root.path(), "dead").unwrap();
        // A pid that surely exited: a child we ran and reaped.
        let gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        let mut gone = gone;
        gone.wait().unwrap();
        std::fs::write(dead.path().join(OWNER_FILE), gone_pid.to_string()).unwrap();
        let foreign = root.path().join("not-capsa");
        std::fs::create_dir(&foreign).unwrap();
        assert_eq!(
            StateDir::collect_stale(root.path()),
            vec!["dead".to_string()]
        );
        assert!(!dead.path().exists());
        assert!(live.path().exists(), "a live owner's state stays");
        assert!(foreign.exists(), "directories without an owner file stay");
        live.remove().unwrap();
    }

    #[tokio::test]
    async fn waits_for_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let short = std::time::Duration::from_millis(100);
        assert!(!wait_for_line(&log, "ready", short).await, "no file yet");
        std::fs::write(&log, "not ready\r\n").unwrap();
        assert!(
            !wait_for_line(&log, "ready", short).await,
            "whole lines only"
        );
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                std::fs::write(&log, "boot\r\nready\r\n").unwrap();
            })
        };
        assert!(wait_for_line(&log, "ready", std::time::Duration::from_secs(5)).await);
        writer.await.unwrap();
    }

    #[test]
    fn remove_detaches_bind_mounts_without_touching_their_source() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it mounts"
        );
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("keep"), "x").unwrap();
        let dir = StateDir::create(root.path(), "sb2").unwrap();
        let target = dir.mounts_dir().join("c1");
        std::fs::create_dir(&target).unwrap();
        mount::bind(data.path(), &target, true, "/data").unwrap();
        assert!(target.join("keep").exists());
        assert!(
            std::fs::write(target.join("new"), "y").is_err(),
            "read-only bind"
        );
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        assert!(
            data.path().join("keep").exists(),
            "source data must survive"
        );
    }

    #[test]
    fn removal_never_crosses_into_another_filesystem() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it mounts"
        );
        let root = tempfile::tempdir().unwrap();
        let inner = root.path().join("a/mnt");
        std::fs::create_dir_all(&inner).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &inner,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(inner.join("precious"), "x").unwrap();
        let dev = std::fs::metadata(root.path()).unwrap().dev();
        let err = remove_tree(&root.path().join("a"), dev).unwrap_err();
        let kept = inner.join("precious").exists();
        mount::unmount(&inner).unwrap();
        assert!(
            matches!(err, Error::BusyStateDir(ref p) if p == &inner),
            "{err:?}"
        );
        assert!(kept, "a file of the other filesystem was removed");
    }

    #[test]
    fn a_symlinked_root_is_resolved() {
        let real = tempfile::tempdir().unwrap();
        let link_dir = tempfile::tempdir().unwrap();
        let link = link_dir.path().join("state");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let dir = StateDir::create(&link, "sb").unwrap();
        assert_eq!(dir.path(), real.path().canonicalize().unwrap().join("sb"));
        dir.remove().unwrap();
    }

    #[test]
    fn a_read_only_bind_is_read_only_in_the_guest_view_too() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it mounts"
        );
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "sb3").unwrap();
        let target = dir.mounts_dir().join("vol");
        std::fs::create_dir(&target).unwrap();
        mount::bind(data.path(), &target, true, "/data").unwrap();
        let host_side = std::fs::write(target.join("a"), "x");
        let guest_side = std::fs::write(dir.shared_dir().join("vol/b"), "x");
        dir.remove().unwrap();
        assert!(host_side.is_err(), "writable on the host side");
        let err = guest_side.expect_err("writable through the guest's view");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        assert!(std::fs::read_dir(data.path()).unwrap().next().is_none());
    }
}

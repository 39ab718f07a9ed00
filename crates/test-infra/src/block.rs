//! Image files and loop devices for block-storage tests (there is no
//! device-mapper here): an ext4 or raw image in a test's directory, a loop
//! device over it that is detached when dropped, a host mount that is
//! unmounted when dropped, and reading a file out of an ext4 image
//! without mounting it (`debugfs`).
//!
//! ```no_run
//! use capsa_test_infra::block::{ImageFile, LoopDevice};
//! let dir = tempfile::tempdir().unwrap();
//! let image = ImageFile::ext4(dir.path(), 64, None);
//! let dev = LoopDevice::attach(image.path(), false);
//! assert!(dev.name().starts_with("loop"));
//! ```

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long `mkfs`, `losetup` or `debugfs` may take.
const TOOL_LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` bounded in time; panics naming `what` unless it succeeds.
fn run_ok(what: &str, cmd: Command) -> Vec<u8> {
    let out = crate::run_bounded(cmd, None, TOOL_LIMIT);
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An image file in a test's directory (removed with that directory).
#[derive(Debug)]
pub struct ImageFile {
    path: PathBuf,
}

impl ImageFile {
    /// A sparse file of `size_mib` MiB of zeros: a raw disk.
    pub fn raw(dir: &Path, size_mib: u64) -> Self {
        let file = tempfile::Builder::new()
            .prefix("raw-")
            .suffix(".img")
            .tempfile_in(dir)
            .expect("create an image file");
        file.as_file()
            .set_len(size_mib << 20)
            .expect("size the image file");
        let (_, path) = file.keep().expect("keep the image file");
        Self { path }
    }

    /// An ext4 filesystem of `size_mib` MiB (`mkfs.ext4 -F -q`), holding
    /// a copy of `populate_from` when given (`-d`).
    pub fn ext4(dir: &Path, size_mib: u64, populate_from: Option<&Path>) -> Self {
        let image = Self::raw(dir, size_mib);
        mkfs_ext4(&image.path, populate_from);
        image
    }

    /// A raw disk of `size_mib` MiB with an MBR partition table holding
    /// one Linux partition from 1 MiB to the end (attach it with
    /// [`LoopDevice::attach_partitioned`] to see `loopNp1`).
    pub fn partitioned(dir: &Path, size_mib: u64) -> Self {
        use std::io::{Seek, SeekFrom, Write};
        assert!(size_mib > 1, "a partitioned image needs more than 1 MiB");
        let image = Self::raw(dir, size_mib);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image.path)
            .expect("open the image");
        file.seek(SeekFrom::Start(0)).expect("seek");
        file.write_all(&mbr_one_partition(2048, (size_mib << 11) - 2048))
            .expect("write the partition table");
        image
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The content of `file` (an absolute path inside the filesystem) in
    /// this ext4 image; see [`ext4_read`].
    pub fn read(&self, file: &str) -> Result<Vec<u8>, String> {
        ext4_read(&self.path, file)
    }
}

/// Makes an ext4 filesystem on `target` (an image file or a device;
/// `mkfs.ext4 -F -q`), holding a copy of `populate_from` when given (`-d`).
pub fn mkfs_ext4(target: &Path, populate_from: Option<&Path>) {
    let mut cmd = Command::new(crate::tool("mkfs.ext4"));
    cmd.args(["-F", "-q"]);
    if let Some(from) = populate_from {
        cmd.arg("-d").arg(from);
    }
    cmd.arg(target);
    run_ok(&format!("mkfs.ext4 {}", target.display()), cmd);
}

/// A master boot record with one partition of type 0x83 (Linux) from
/// sector `start`, `sectors` long (LBA; the CHS fields are unused).
fn mbr_one_partition(start: u64, sectors: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

/// The content of `file` (an absolute path inside the filesystem) in the
/// ext4 filesystem of `image` (a file or a device), read with `debugfs`
/// without mounting it; `Err` with debugfs's message if it is not there.
pub fn ext4_read(image: &Path, file: &str) -> Result<Vec<u8>, String> {
    assert!(
        !file.contains(['"', '\n']),
        "debugfs cannot name {file:?} in a request"
    );
    let mut cmd = Command::new(crate::tool("debugfs"));
    cmd.arg("-R").arg(format!("cat \"{file}\"")).arg(image);
    let out = crate::run_bounded(cmd, None, TOOL_LIMIT);
    // debugfs prints its banner on stderr and exits 0 even when the file
    // is missing: any other line on stderr is the error.
    let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.is_empty())
        .map(String::from)
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(format!(
            "debugfs cat {file} in {} ({}): {}",
            image.display(),
            out.status,
            errors.join("; ")
        ));
    }
    Ok(out.stdout)
}

/// A loop device over an image file, made by `losetup --find --show`;
/// dropping it detaches that device (if it still is the one over the
/// image: a device someone else reused is left alone).
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    image: PathBuf,
}

impl LoopDevice {
    /// Attaches `image` to the first free loop device.
    pub fn attach(image: &Path, read_only: bool) -> Self {
        Self::attach_with(image, read_only, false)
    }

    /// Attaches `image` with its partitions (`losetup --partscan`; where
    /// the kernel does not read the table itself, as on this project's
    /// hosts, `partx --add` adds them); returns once the first
    /// partition's node (`/dev/loopNp1`) exists.
    pub fn attach_partitioned(image: &Path, read_only: bool) -> Self {
        let dev = Self::attach_with(image, read_only, true);
        let part = dev.partition(1);
        let name = dev.name();
        if !Path::new(&format!("/sys/block/{name}/{name}p1")).exists() {
            let mut cmd = Command::new(crate::tool("partx"));
            cmd.arg("--add").arg(dev.path());
            run_ok(&format!("partx --add {}", dev.path.display()), cmd);
        }
        let start = std::time::Instant::now();
        while !part.exists() {
            assert!(
                start.elapsed() < TOOL_LIMIT,
                "{} did not appear within {TOOL_LIMIT:?}",
                part.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        dev
    }

    fn attach_with(image: &Path, read_only: bool, partscan: bool) -> Self {
        let image = std::fs::canonicalize(image).expect("resolve the image path");
        let mut cmd = Command::new(crate::tool("losetup"));
        cmd.args(["--find", "--show"]);
        if read_only {
            cmd.arg("--read-only");
        }
        if partscan {
            cmd.arg("--partscan");
        }
        cmd.arg(&image);
        let out = run_ok(&format!("losetup --find {}", image.display()), cmd);
        let path = PathBuf::from(String::from_utf8_lossy(&out).trim());
        // The guard first: a panic below detaches the device.
        let dev = Self { path, image };
        assert!(
            dev.name().starts_with("loop") && dev.path.parent() == Some(Path::new("/dev")),
            "losetup answered {}",
            dev.path.display()
        );
        dev
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node of its partition `n` (`/dev/loopNpn`).
    pub fn partition(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.path.display()))
    }

    /// `loopN`.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Its major and minor numbers.
    pub fn dev(&self) -> (u32, u32) {
        let rdev = std::fs::metadata(&self.path).expect("stat loop").rdev();
        (
            nix::sys::stat::major(rdev) as u32,
            nix::sys::stat::minor(rdev) as u32,
        )
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if backing_file(&self.name()).as_deref() != Some(self.image.as_path()) {
            return;
        }
        let mut cmd = Command::new("losetup");
        cmd.arg("-d").arg(&self.path);
        let ok = super::containerd::cleanup::try_run(cmd, TOOL_LIMIT)
            .is_some_and(|o| o.status.success());
        if !ok {
            eprintln!(
                "capsa-test-infra: could not detach {} (over {})",
                self.path.display(),
                self.image.display()
            );
        }
    }
}

/// The backing file of loop device `name` (`loopN`), if it is attached.
pub fn backing_file(name: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    let text = text.trim_end_matches('\n');
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

/// Attached loop devices whose backing file lies below `dir`, as
/// `(/dev/loopN, backing file)`.
pub fn loops_below(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<(PathBuf, PathBuf)> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = backing_file(&name)?;
            backing
                .starts_with(&dir)
                .then(|| (Path::new("/dev").join(&name), backing))
        })
        .collect();
    found.sort();
    found
}

/// Detaches (best effort, `losetup -d`) the loop devices over images
/// below `dir`, a test's own directory: what a killed test left.
pub fn detach_loops_below(dir: &Path) {
    for (dev, backing) in loops_below(dir) {
        eprintln!(
            "capsa-test-infra: detaching {} left over {}",
            dev.display(),
            backing.display()
        );
        let mut cmd = Command::new("losetup");
        cmd.arg("-d").arg(&dev);
        let _ = super::containerd::cleanup::try_run(cmd, TOOL_LIMIT);
    }
}

/// A filesystem mounted on the host by a test, unmounted (lazily, so that
/// a failing test cannot keep it) when dropped.
#[derive(Debug)]
pub struct HostMount {
    target: PathBuf,
}

impl HostMount {
    /// Mounts `source` (a device) of type `fstype` on `target` (a directory).
    pub fn new(source: &Path, target: &Path, fstype: &str) -> Self {
        Self::with_flags(source, target, fstype, nix::mount::MsFlags::empty())
    }

    /// [`Self::new`] read-only (as a read-only device must be mounted).
    pub fn read_only(source: &Path, target: &Path, fstype: &str) -> Self {
        Self::with_flags(source, target, fstype, nix::mount::MsFlags::MS_RDONLY)
    }

    fn with_flags(source: &Path, target: &Path, fstype: &str, flags: nix::mount::MsFlags) -> Self {
        nix::mount::mount(Some(source), target, Some(fstype), flags, None::<&str>).unwrap_or_else(
            |e| {
                panic!(
                    "mount {} ({fstype}) on {}: {e}",
                    source.display(),
                    target.display()
                )
            },
        );
        Self {
            target: target.into(),
        }
    }

    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("capsa-test-infra: unmount {}: {e}", self.target.display());
        }
    }
}

//! `BlockSource` against the host's real state: image files, loop devices
//! (some mounted on the host, one partitioned) and the host's own root
//! device. Needs root (loop devices, mounts), as the other tests do.
//!
//! Not covered here: a device with holders (a device-mapper or md member):
//! neither exists on this host, and a loop device over another loop device
//! does not make the lower one "held". The unit tests of
//! `resource::block_source::usage` cover it on a fake sysfs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use capsa_runtime::resource::{BlockKind, BlockSource, BlockSourceError};
use capsa_test_infra::block::{mkfs_ext4, HostMount, ImageFile, LoopDevice};
use capsa_test_infra::leaks::assert_no_loop_devices;

fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("capsa-test-blk-")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

fn inspect(path: &Path) -> BlockSource {
    BlockSource::inspect(path)
        .unwrap_or_else(|e| panic!("inspect {}: {e:?}", path.display()))
        .unwrap_or_else(|| panic!("{} is neither a device nor a file", path.display()))
}

/// Asserts that `path` is refused for `reason` (the refusal's sentence).
fn assert_refused(path: &Path, reason: &str) {
    let refused = inspect(path)
        .check_hotplug()
        .expect_err(&format!("{} must be refused", path.display()));
    assert_eq!(refused.path, std::fs::canonicalize(path).unwrap());
    let text = refused.to_string();
    assert!(
        text.ends_with(&format!(": {reason}")),
        "{text}\nexpected: {reason}"
    );
}

/// A directory to mount on, in `dir`.
fn mount_point(dir: &Path) -> PathBuf {
    let at = dir.join("mnt");
    std::fs::create_dir(&at).unwrap();
    at
}

#[test]
fn clean_images_and_loop_devices_pass() {
    let dir = test_dir();
    let image = ImageFile::ext4(dir.path(), 16, None);
    let raw = ImageFile::raw(dir.path(), 4);
    {
        let src = inspect(image.path());
        assert_eq!(src.kind(), &BlockKind::Image);
        assert_eq!(src.filesystem(), Some("ext4"));
        src.check_hotplug().expect("a clean image passes");
        assert_eq!(inspect(raw.path()).filesystem(), None);

        let dev = LoopDevice::attach(image.path(), false);
        let src = inspect(dev.path());
        let (major, minor) = dev.dev();
        assert_eq!(src.kind(), &BlockKind::Device { major, minor });
        assert_eq!(src.filesystem(), Some("ext4"));
        src.check_hotplug().expect("a clean loop device passes");
        // An image attached to a loop device that nobody uses passes too.
        inspect(image.path())
            .check_hotplug()
            .expect("an image behind an idle loop device passes");
    }
    assert!(BlockSource::inspect(dir.path()).unwrap().is_none());
    assert!(matches!(
        BlockSource::inspect(&dir.path().join("missing")),
        Err(BlockSourceError::Io { .. })
    ));
    let err = BlockSource::inspect(Path::new("/proc/self/environ")).unwrap_err();
    let why = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        matches!(err, BlockSourceError::SystemPath { .. })
            && why
                .as_deref()
                .is_some_and(|w| w.contains("a host system path")),
        "{err:?}"
    );
    assert_no_loop_devices(dir.path());
}

#[test]
fn a_loop_device_mounted_on_the_host_and_its_image_are_refused() {
    let dir = test_dir();
    let at = mount_point(dir.path());
    let image = ImageFile::ext4(dir.path(), 16, None);
    {
        let dev = LoopDevice::attach(image.path(), false);
        {
            let _mounted = HostMount::new(dev.path(), &at, "ext4");
            assert_refused(
                dev.path(),
                &format!("it backs the host mount {} (ext4)", at.display()),
            );
            assert_refused(
                image.path(),
                &format!(
                    "it is attached to {}, and that device backs the host mount {} (ext4)",
                    dev.path().display(),
                    at.display()
                ),
            );
            // A second, idle loop device over the same file reaches the
            // same blocks.
            let second = LoopDevice::attach(image.path(), false);
            assert_refused(second.path(), &format!("it is a loop device over {}, which is attached to {}, and that device backs the host mount {} (ext4)",
                    std::fs::canonicalize(image.path()).unwrap().display(),
                    dev.path().display(),
                    at.display()));
            // A loop device over the mounted loop device: the same blocks.
            // (A loop device over the host's root disk would be refused
            // the same way, but the host refuses to make one: EPERM.)
            let stacked = LoopDevice::attach(dev.path(), false);
            assert_refused(
                stacked.path(),
                &format!(
                    "it is a loop device over {}, which backs the host mount {} (ext4)",
                    dev.path().display(),
                    at.display()
                ),
            );
        }
        // Unmounted, both may go to a guest again.
        inspect(dev.path()).check_hotplug().expect("unmounted");
        inspect(image.path()).check_hotplug().expect("unmounted");
    }
    assert_no_loop_devices(dir.path());
}

#[test]
fn a_disk_whose_partition_is_mounted_is_refused_and_so_is_a_partition_of_a_mounted_disk() {
    let dir = test_dir();
    let at = mount_point(dir.path());
    let image = ImageFile::partitioned(dir.path(), 24);
    {
        let dev = LoopDevice::attach_partitioned(image.path(), false);
        let part = dev.partition(1);
        mkfs_ext4(&part, None);
        inspect(dev.path())
            .check_hotplug()
            .expect("nothing mounted");
        {
            let _mounted = HostMount::new(&part, &at, "ext4");
            assert_refused(
                dev.path(),
                &format!(
                    "it has a partition {} that backs the host mount {} (ext4)",
                    part.display(),
                    at.display()
                ),
            );
            assert_refused(
                image.path(),
                &format!(
                    "it is attached to {}, and that device has a partition {} that backs the host mount {} (ext4)",
                    dev.path().display(),
                    part.display(),
                    at.display()
                ),
            );
        }
        {
            // A filesystem on the whole disk, mounted: the partition (still
            // known to the kernel, whatever the disk now holds) shares its
            // blocks.
            mkfs_ext4(dev.path(), None);
            assert!(part.exists(), "{} is gone", part.display());
            let _mounted = HostMount::new(dev.path(), &at, "ext4");
            assert_refused(
                &part,
                &format!(
                    "it is a partition of {}, which backs the host mount {} (ext4)",
                    dev.path().display(),
                    at.display()
                ),
            );
        }
    }
    assert_no_loop_devices(dir.path());
}

/// The block device that holds the host's `/`, found by its number.
fn root_device() -> PathBuf {
    let dev = std::fs::metadata("/").unwrap().dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .unwrap_or_else(|e| panic!("the host's / is on {major}:{minor}, unknown to sysfs: {e}"));
    let node = Path::new("/dev").join(sys.file_name().unwrap());
    let meta = std::fs::metadata(&node).expect("the root device's node in /dev");
    assert_eq!(
        meta.rdev(),
        dev,
        "{} is not the device of /",
        node.display()
    );
    node
}

#[test]
fn the_device_of_the_hosts_root_is_refused() {
    assert_refused(&root_device(), "it holds the host's root filesystem /");
}

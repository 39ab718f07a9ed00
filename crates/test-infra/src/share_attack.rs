//! The hostile guest's attack on what the host shares (issue 9, hole 3),
//! and the host-side checks that it failed: run [`SCRIPT`] as root in a
//! container whose rootfs is shared and that has a read-write volume at
//! `/vol` holding `existing` (a copy of the host's `id`), then
//! [`assert_refused`] on its output and [`assert_inert`] on both dirs.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// The container's side, on `/` (the shared rootfs) and `/vol/` (the
/// volume): a `/dev/kvm` node (10:232) mode 0666, a set-uid copy of
/// busybox, set-gid and set-uid on an existing root-owned file; each step
/// prints whether it worked. Then ordinary work, which must work.
pub const SCRIPT: &str = r#"
cp /vol/existing /existing
for d in / /vol/; do
  mknod ${d}kvm c 10 232 && chmod 666 ${d}kvm && echo "mknod $d worked" || echo "mknod $d refused"
  cp /bin/busybox ${d}suid && chmod 4755 ${d}suid && echo "suid $d worked" || echo "suid $d refused"
  chmod 2755 ${d}existing && echo "sgid $d worked" || echo "sgid $d refused"
  chmod 4755 ${d}existing && echo "existing $d worked" || echo "existing $d refused"
done
echo text > /vol/plain && chmod 755 /vol/plain && mkfifo /vol/fifo && ln -s plain /vol/link &&
  mkdir -m 750 /vol/dir && echo "normal work"
"#;

/// Puts `existing`, the host's `id` owned by root, in the volume `vol`.
pub fn prepare_volume(vol: &Path) {
    std::fs::create_dir_all(vol).expect("create the volume");
    std::fs::copy(crate::tool("id"), vol.join("existing")).expect("copy id");
}

/// Every step of the attack was refused, the ordinary work done.
pub fn assert_refused(stdout: &str, vol: &Path) {
    for d in ["/", "/vol/"] {
        for step in ["mknod", "suid", "sgid", "existing"] {
            let line = format!("{step} {d} refused");
            assert!(stdout.contains(&line), "no {line:?} in:\n{stdout}");
        }
    }
    assert!(stdout.contains("normal work"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(vol.join("plain")).unwrap(),
        "text\n"
    );
    let mode = std::fs::metadata(vol.join("plain")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755);
    let fifo = std::fs::symlink_metadata(vol.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
}

/// Runs `file args` on the host as user nobody (65534) with no groups.
pub fn as_nobody(file: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    c.arg(file).args(args);
    crate::run_bounded(c, None, Duration::from_secs(20))
}

/// Checks, as a host user, what the container made in `dir` (every
/// directory down to it searchable by nobody): no set-id bit, no device
/// node, and neither works for user nobody.
pub fn assert_inert(dir: &Path) {
    for name in ["suid", "existing"] {
        let path = dir.join(name);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            meta.mode() & 0o6000,
            0,
            "{} is set-id on the host: {:o}",
            path.display(),
            meta.mode()
        );
    }
    // `existing` is coreutils' `id`: set-uid root, it would say 0.
    let out = as_nobody(&dir.join("existing"), &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "65534",
        "{out:?}"
    );
    let node = dir.join("kvm");
    if let Ok(meta) = std::fs::symlink_metadata(&node) {
        let kind = meta.file_type();
        assert!(
            !kind.is_char_device() && !kind.is_block_device(),
            "{} is a device on the host",
            node.display()
        );
    }
    let open = format!("exec 3<> {}", node.display());
    let out = as_nobody(Path::new("/bin/sh"), &["-c", &open]);
    assert!(!out.status.success(), "nobody opened {}", node.display());
}

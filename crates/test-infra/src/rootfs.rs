//! A minimal container root filesystem made of Debian's busybox-static, by
//! the same script `make demo` uses.

use std::path::Path;
use std::process::Command;

/// `scripts/busybox-rootfs.sh`, as built into the test binary.
pub const BUSYBOX_ROOTFS_SH: &str = include_str!("../../../scripts/busybox-rootfs.sh");

/// Fills `dir` with busybox, its applet links, `/etc/passwd` (root and
/// `user` 1000) and the usual directories.
pub fn busybox(dir: &Path) {
    // The script is compiled in, not found by a path fixed at build time:
    // a test binary reused from another checkout (one shared target
    // directory) would otherwise look for it in a clone that may be gone.
    let out = Command::new("bash")
        .arg("-c")
        .arg(BUSYBOX_ROOTFS_SH)
        .arg("busybox-rootfs.sh")
        .arg(dir)
        .output()
        .expect("run bash for busybox-rootfs.sh");
    assert!(
        out.status.success(),
        "scripts/busybox-rootfs.sh failed (run `make deps` for busybox-static): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

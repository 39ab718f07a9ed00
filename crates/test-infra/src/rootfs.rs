//! A minimal container root filesystem made of Debian's busybox-static, by
//! the same script `make demo` uses.

use std::path::Path;
use std::process::Command;

/// Fills `dir` with busybox, its applet links, `/etc/passwd` (root and
/// `user` 1000) and the usual directories.
pub fn busybox(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-rootfs.sh");
    let out = Command::new(&script)
        .arg(dir)
        .output()
        .expect("run busybox-rootfs.sh");
    assert!(
        out.status.success(),
        "{} failed (run `make deps` for busybox-static): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Tiny initrds built per test: busybox-static, the test kernel's modules
//! and an `/init` shell script, packed by `cpio`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::kernel::{run, test_kernel, MODULES};

/// What every test guest does first: a console, `/proc`, `/sys`, the
/// modules. A failed step is printed to the console (the tests show it).
fn prelude() -> String {
    let modules = MODULES.join(" ");
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s\n\
         mount -t devtmpfs dev /dev\n\
         exec </dev/console >/dev/console 2>&1\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         for m in {modules}; do insmod /modules/$m.ko || echo \"capsa-test: insmod $m failed\"; done\n"
    )
}

/// A guest that mounts the virtio-fs share `tag`, writes `from-guest` into
/// it, waits (at most 30 s) for the host to create `stop`, and powers off.
pub fn share_and_power_off(tag: &str) -> String {
    prelude()
        + &format!(
            "mkdir -p /mnt\n\
             mount -t virtiofs {tag} /mnt || {{ echo capsa-test: mount failed; poweroff -f; }}\n\
             echo hello from the guest > /mnt/from-guest\n\
             echo capsa-test: wrote\n\
             i=0\n\
             while [ ! -e /mnt/stop ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
             umount /mnt\n\
             echo capsa-test: powering off\n\
             poweroff -f\n"
        )
}

/// A guest that never powers off nor reacts to anything.
pub fn hang() -> String {
    "#!/bin/busybox sh\nexec /bin/busybox sleep 1000\n".into()
}

/// Builds `<dir>/initrd.cpio` whose `/init` is `script`.
pub fn build(dir: &Path, script: &str) -> PathBuf {
    let root = dir.join("initrd-root");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "modules",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("create initrd dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copy /bin/busybox (Debian package busybox-static)");
    let kernel = test_kernel();
    for m in MODULES {
        let file = format!("{m}.ko");
        std::fs::copy(kernel.modules.join(&file), root.join("modules").join(&file))
            .expect("copy module");
    }
    let init = root.join("init");
    std::fs::write(&init, script).expect("write /init");
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).expect("chmod /init");

    let list = run(Command::new("find").arg(".").current_dir(&root));
    let out = dir.join("initrd.cpio");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).expect("create initrd"))
        .spawn()
        .expect("run cpio");
    {
        use std::io::Write;
        let mut stdin = cpio.stdin.take().expect("cpio stdin");
        stdin.write_all(list.as_bytes()).expect("write to cpio");
    }
    let status = cpio.wait().expect("wait for cpio");
    assert!(status.success(), "cpio failed: {status}");
    std::fs::remove_dir_all(&root).expect("remove initrd root");
    out
}

//! The test guests: the kernel and initrd made by `capsa-assets` (the
//! project's own builder, as for real guests) with an `/init` shell script
//! instead of the agent. Downloads are shared with `make assets` through
//! the assets' package cache.

use std::path::{Path, PathBuf};

use capsa_assets::{AssetsSpec, KernelSource, MODULES_LOAD, SHELL_PACKAGE};

/// Modules the test guests load (their dependencies come first): virtio
/// over PCI, virtio-fs, vsock.
pub const MODULES: &[&str] = &["virtio_pci", "virtiofs", "vmw_vsock_virtio_transport"];

/// The kernel package the tests boot.
const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// What every test guest does first: a console, `/proc`, `/sys`, the
/// modules in the builder's load order. A failed step is printed to the
/// console (the tests show it).
pub fn prelude() -> String {
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /sbin /usr/bin /usr/sbin\n\
         /bin/busybox --install -s\n\
         mount -t devtmpfs dev /dev\n\
         exec </dev/console >/dev/console 2>&1\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         for m in $(cat /{MODULES_LOAD}); do insmod /lib/modules/$(uname -r)/$m || echo \"capsa-test: insmod $m failed\"; done\n"
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

/// The guest's files.
pub struct Guest {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

/// Builds, in `<dir>/assets`, the kernel and an initrd whose `/init` is
/// `script`, with busybox and [`MODULES`].
pub fn build(dir: &Path, script: &str) -> Guest {
    build_with_modules(dir, script, &[])
}

/// [`build`], with the modules `extra` loaded after [`MODULES`].
pub fn build_with_modules(dir: &Path, script: &str, extra: &[&str]) -> Guest {
    let init = dir.join("init.sh");
    std::fs::write(&init, script).expect("write the init script");
    let spec = AssetsSpec {
        out_dir: dir.join("assets"),
        kernel: KernelSource::DebianPackage {
            name: KERNEL_PACKAGE.into(),
        },
        agent_binary: init,
        modules: MODULES.iter().chain(extra).map(|m| m.to_string()).collect(),
        image: false,
    };
    let cache = capsa_test_infra::assets_dir().join("cache");
    let manifest = capsa_assets::build_with_cache(&spec, Some(SHELL_PACKAGE), Some(&cache))
        .unwrap_or_else(|e| panic!("build the test guest: {e}"));
    Guest {
        vmlinuz: manifest.kernel,
        initrd: manifest.initrd,
    }
}

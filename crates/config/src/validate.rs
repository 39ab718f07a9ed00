use std::path::Path;

use crate::{Config, Error};

/// Checks values that the types alone do not constrain.
pub(crate) fn check(config: &Config, path: &Path) -> Result<(), Error> {
    let invalid = |key: &str, reason: String| Error::Invalid {
        path: path.into(),
        key: key.into(),
        reason,
    };
    let q = &config.hypervisor.qemu;
    one_of(
        "hypervisor.qemu.machine_type",
        &q.machine_type,
        &["q35", "microvm"],
    )
    .map_err(|r| invalid("hypervisor.qemu.machine_type", r))?;
    one_of(
        "hypervisor.qemu.accelerator",
        &q.accelerator,
        &["auto", "kvm", "tcg"],
    )
    .map_err(|r| invalid("hypervisor.qemu.accelerator", r))?;
    one_of(
        "hypervisor.qemu.shared_fs",
        &q.shared_fs,
        &["virtio-fs", "none"],
    )
    .map_err(|r| invalid("hypervisor.qemu.shared_fs", r))?;
    one_of(
        "hypervisor.qemu.virtio_fs_cache",
        &q.virtio_fs_cache,
        &["auto", "always", "never", "metadata"],
    )
    .map_err(|r| invalid("hypervisor.qemu.virtio_fs_cache", r))?;
    one_of(
        "hypervisor.qemu.block_device_driver",
        &q.block_device_driver,
        &["virtio-blk", "virtio-scsi"],
    )
    .map_err(|r| invalid("hypervisor.qemu.block_device_driver", r))?;
    one_of(
        "runtime.internetworking_model",
        &config.runtime.internetworking_model,
        &["tcfilter", "macvtap", "none"],
    )
    .map_err(|r| invalid("runtime.internetworking_model", r))?;
    // The root-bus slots left for root ports by the QEMU driver's fixed
    // q35 layout (capsa-hypervisor, `qemu/cmdline.rs`: MAX_ROOT_PORTS).
    if q.pcie_root_port > 27 {
        return Err(invalid(
            "hypervisor.qemu.pcie_root_port",
            format!("{} is more than 27", q.pcie_root_port),
        ));
    }
    if !(1..=60).contains(&q.hotplug_timeout) {
        return Err(invalid(
            "hypervisor.qemu.hotplug_timeout",
            format!("{} is not between 1 and 60 seconds (the agent's CreateContainer is bounded to 60 s)", q.hotplug_timeout),
        ));
    }
    if !(1..=256).contains(&q.default_vcpus) {
        return Err(invalid(
            "hypervisor.qemu.default_vcpus",
            format!("{} is not between 1 and 256", q.default_vcpus),
        ));
    }
    if q.default_memory < 128 {
        return Err(invalid(
            "hypervisor.qemu.default_memory",
            format!("{} MiB is less than 128 MiB", q.default_memory),
        ));
    }
    if !q.image.as_os_str().is_empty() {
        return Err(invalid(
            "hypervisor.qemu.image",
            "rootfs images are not supported yet: use initrd".into(),
        ));
    }
    if q.initrd.as_os_str().is_empty() {
        return Err(invalid("hypervisor.qemu.initrd", "must be set".into()));
    }
    if !config.runtime.state_dir.is_absolute() {
        return Err(invalid(
            "runtime.state_dir",
            format!("{:?} is not an absolute path", config.runtime.state_dir),
        ));
    }
    let cni = &config.runtime;
    for (key, path) in std::iter::once(("runtime.cni_conflist", &cni.cni_conflist))
        .filter(|(_, p)| !p.as_os_str().is_empty())
        .chain(
            cni.cni_plugin_dirs
                .iter()
                .map(|d| ("runtime.cni_plugin_dirs", d)),
        )
    {
        if !path.is_absolute() {
            return Err(invalid(key, format!("{path:?} is not an absolute path")));
        }
    }
    if config.agent.capsa.dial_timeout == 0 {
        return Err(invalid(
            "agent.capsa.dial_timeout",
            "must be at least 1 second".into(),
        ));
    }
    Ok(())
}

fn one_of(_key: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not one of {}", allowed.join(", ")))
    }
}

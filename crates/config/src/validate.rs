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
    // One slot fewer for each of the virtio-mem device, the balloon and
    // an image on virtio-blk, which take the last ones.
    let image_disk = !q.image.as_os_str().is_empty() && q.disable_image_nvdimm;
    let takers: Vec<&str> = [
        (q.enable_virtio_mem, "enable_virtio_mem"),
        (q.reclaim_guest_freed_memory, "reclaim_guest_freed_memory"),
        (image_disk, "an image on virtio-blk"),
    ]
    .into_iter()
    .filter_map(|(on, key)| on.then_some(key))
    .collect();
    let root_ports = 27 - takers.len() as u32;
    if q.pcie_root_port > root_ports {
        let with = if takers.is_empty() {
            String::new()
        } else {
            format!(
                " (with {}, whose devices take root-port slots)",
                takers.join(" and ")
            )
        };
        return Err(invalid(
            "hypervisor.qemu.pcie_root_port",
            format!("{} is more than {root_ports}{with}", q.pcie_root_port),
        ));
    }
    // QEMU refuses a translation cache bigger than 2 GiB on x86_64 hosts.
    if q.tcg_tb_size > 2048 {
        return Err(invalid(
            "hypervisor.qemu.tcg_tb_size",
            format!(
                "{} MiB is more than 2048 MiB (0 keeps QEMU's default)",
                q.tcg_tb_size
            ),
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
    // 0 stands for the host's size (resolved when the VM starts).
    if q.default_maxvcpus != 0 && q.default_maxvcpus < q.default_vcpus {
        return Err(invalid(
            "hypervisor.qemu.default_maxvcpus",
            format!(
                "{} is less than default_vcpus ({}); 0 means the host's CPU count",
                q.default_maxvcpus, q.default_vcpus
            ),
        ));
    }
    if q.default_maxmemory != 0 && q.default_maxmemory < q.default_memory {
        return Err(invalid(
            "hypervisor.qemu.default_maxmemory",
            format!(
                "{} MiB is less than default_memory ({} MiB); 0 means the host's memory",
                q.default_maxmemory, q.default_memory
            ),
        ));
    }
    // QEMU's ACPI memory hot-plug has 256 slots.
    if q.memory_slots > 256 {
        return Err(invalid(
            "hypervisor.qemu.memory_slots",
            format!("{} is more than 256", q.memory_slots),
        ));
    }
    if q.enable_virtio_mem && q.machine_type != "q35" {
        return Err(invalid(
            "hypervisor.qemu.enable_virtio_mem",
            format!("needs machine_type = \"q35\" (not {:?})", q.machine_type),
        ));
    }
    match (
        q.image.as_os_str().is_empty(),
        q.initrd.as_os_str().is_empty(),
    ) {
        (false, false) => {
            return Err(invalid(
                "hypervisor.qemu.image",
                format!(
                    "{:?} and hypervisor.qemu.initrd ({:?}) are exclusive: \
                     set initrd = \"\" to boot the image",
                    q.image, q.initrd
                ),
            ))
        }
        (true, true) => {
            return Err(invalid(
                "hypervisor.qemu.initrd",
                "must be set (or hypervisor.qemu.image)".into(),
            ))
        }
        _ => {}
    }
    if !q.image.as_os_str().is_empty() && !q.disable_image_nvdimm && q.machine_type != "q35" {
        return Err(invalid(
            "hypervisor.qemu.image",
            format!(
                "an NVDIMM image needs machine_type = \"q35\" (not {:?}); \
                 or set disable_image_nvdimm = true",
                q.machine_type
            ),
        ));
    }
    if !config.runtime.state_dir.is_absolute() {
        return Err(invalid(
            "runtime.state_dir",
            format!("{:?} is not an absolute path", config.runtime.state_dir),
        ));
    }
    let cni = &config.runtime;
    for (key, path) in std::iter::once(("runtime.cni_conflist", &cni.cni_conflist))
        .chain(std::iter::once(("runtime.timeline_dir", &cni.timeline_dir)))
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
    // annotations (issue 25): the patterns of enable_annotations compile.
    if let Err(crate::AnnotationError::BadPattern {
        setting,
        pattern,
        reason,
    }) = crate::annotations::check_patterns(config)
    {
        let key = if setting.starts_with("[runtime]") {
            "runtime.enable_annotations"
        } else {
            "hypervisor.qemu.enable_annotations"
        };
        return Err(invalid(key, format!("{pattern:?}: {reason}")));
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

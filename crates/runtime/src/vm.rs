//! From capsa's configuration to a hypervisor driver's [`VmConfig`]: the
//! one place that reads the driver-neutral `[hypervisor.<driver>]` keys
//! to build a VM (the driver's own keys go to it as they are; callers
//! hold a `Box<dyn Vm>`).

use std::str::FromStr;

use capsa_config::Config;
use std::time::Duration;

use capsa_hypervisor::{NetDevice, SharedFs, Vm, VmConfig};

use crate::resource::network::{Endpoint, Model};
use crate::state::StateDir;
use crate::Error;

/// The vsock port of the guest's debug console (Kata's default).
pub const DEBUG_CONSOLE_VPORT: u32 = 1026;

/// Per-sandbox overrides of the configured VM size.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmSize {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
}

/// How containers' block devices are used.
pub(crate) fn block_policy(config: &Config) -> crate::resource::BlockPolicy {
    let v = &config.hypervisor.vm;
    crate::resource::BlockPolicy {
        rootfs: !v.disable_block_device_use,
        driver: v.block_device_driver,
        shared_fs: has_shared_fs(config),
    }
}

/// Whether the configuration gives the VM a shared filesystem
/// (`shared_fs = "virtio-fs"`; `"none"`: containers need block rootfs).
pub fn has_shared_fs(config: &Config) -> bool {
    config.hypervisor.vm.shared_fs == capsa_config::SharedFs::VirtioFs
}

/// The VM driver the configuration names, not started yet.
pub(crate) fn create(
    config: &Config,
    id: &str,
    dir: &StateDir,
    size: VmSize,
    nics: Vec<NetDevice>,
) -> Box<dyn Vm> {
    let mut vm_config = vm_config(config, id, dir, size);
    vm_config.nics = nics;
    capsa_hypervisor::create(vm_config)
}

/// The VM's `n`th NIC, on `endpoint`'s tap; `vhost`: vhost-net where the
/// host has it.
pub(crate) fn nic_device(n: usize, endpoint: &Endpoint, vhost: bool) -> Result<NetDevice, Error> {
    Ok(NetDevice {
        id: format!("net{n}"),
        tap: endpoint.tap.clone(),
        netns: Some(endpoint.netns.clone()),
        mac: endpoint.mac.parse().map_err(|reason| Error::BadSpec {
            what: format!(
                "the MAC of {} in {}",
                endpoint.name,
                endpoint.netns.display()
            ),
            reason,
        })?,
        mtu: endpoint.mtu,
        vhost,
    })
}

/// How the pod's netns reaches the VM.
pub(crate) fn network_model(config: &Config) -> Model {
    // Validated when the configuration was loaded.
    Model::from_str(&config.runtime.internetworking_model).unwrap_or(Model::TcFilter)
}

/// The boot initrd of root image `image`: `<image>.initrd`, if there is
/// one (a kernel with the NVDIMM and virtio-blk drivers built in boots the
/// image without).
fn image_initrd(image: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut name = image.as_os_str().to_owned();
    name.push(IMAGE_INITRD_SUFFIX);
    let path = std::path::PathBuf::from(name);
    path.is_file().then_some(path)
}

/// As `capsa_assets::IMAGE_INITRD_SUFFIX` (the runtime does not depend on
/// the assets builder).
const IMAGE_INITRD_SUFFIX: &str = ".initrd";

pub(crate) fn vm_config(config: &Config, id: &str, dir: &StateDir, size: VmSize) -> VmConfig {
    let q = &config.hypervisor.vm;
    let debug = q.enable_debug || config.agent.capsa.enable_debug || config.runtime.enable_debug;
    let mut kernel_params: Vec<String> = q
        .kernel_params
        .split_whitespace()
        .map(String::from)
        .collect();
    if config.agent.capsa.debug_console_enabled {
        kernel_params.push(format!("agent.debug_console_vport={DEBUG_CONSOLE_VPORT}"));
    }
    // The agent's wait for a hot-plugged device (Kata's parameter).
    kernel_params.push(format!("agent.hotplug_timeout={}", q.hotplug_timeout));
    if config.agent.capsa.enable_debug || config.runtime.enable_debug {
        kernel_params.push("agent.log=debug".into());
    }
    // Validated when the configuration was loaded: exactly one of them.
    let (initrd, image) = match q.root_image() {
        None => (Some(q.initrd.clone()), None),
        Some(image) => (image_initrd(image), Some(image.to_path_buf())),
    };
    VmConfig {
        id: id.to_string(),
        run_dir: dir.path().to_path_buf(),
        console_log: dir.console_log(),
        kernel: q.kernel.clone(),
        initrd,
        image,
        kernel_params,
        vcpus: size.vcpus.unwrap_or(q.default_vcpus),
        memory_mib: size.memory_mib.unwrap_or(q.default_memory),
        // 0 (the host's) is resolved by the driver, which also raises a
        // maximum below a per-sandbox boot size to it.
        max_vcpus: q.default_maxvcpus,
        max_memory_mib: q.default_maxmemory,
        shared_fs: has_shared_fs(config).then(|| SharedFs {
            daemon: q.virtio_fs_daemon.clone(),
            shared_dir: dir.shared_dir(),
            tag: capsa_protocols::SHARED_FS_TAG.to_string(),
            cache: q.virtio_fs_cache,
            extra_args: q.virtio_fs_extra_args.clone(),
        }),
        guest_cid: guest_cid(),
        hotplug_timeout: Duration::from_secs(q.hotplug_timeout.into()),
        block_driver: q.block_device_driver,
        nics: Vec::new(),
        debug,
        driver: config.hypervisor.driver.clone(),
    }
}

/// A guest context id for a new VM. With hybrid vsock each VM has its own
/// backend and any id works; with kernel vsock ids must differ between VMs,
/// so pick one at random in a wide range.
fn guest_cid() -> u32 {
    let mut bytes = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        bytes = std::process::id().to_le_bytes();
    }
    3 + u32::from_le_bytes(bytes) % 0x3fff_0000
}

/// A new sandbox id: 16 hex digits (short enough for socket paths).
/// Longest sandbox id (it names a directory and ends up in socket paths).
pub const MAX_ID_LEN: usize = 64;

/// Checks a sandbox id given by a user: `[A-Za-z0-9_.-]`, not starting
/// with `.`, at most [`MAX_ID_LEN`] bytes.
pub fn check_id(id: &str) -> Result<(), Error> {
    let bad_char = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
    let reason = if id.is_empty() {
        Some("is empty".to_string())
    } else if id.len() > MAX_ID_LEN {
        Some(format!("is longer than {MAX_ID_LEN} bytes"))
    } else if id.starts_with('.') {
        Some("starts with '.'".to_string())
    } else {
        bad_char.map(|c| format!("contains {c:?} (allowed: letters, digits, '_', '-', '.')"))
    };
    match reason {
        Some(reason) => Err(Error::BadId {
            id: id.into(),
            reason,
        }),
        None => Ok(()),
    }
}

pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn sandbox_ids_are_checked() {
        for ok in ["web", "a.b-c_d", "0123456789abcdef"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        let reason = |id: &str| check_id(id).unwrap_err().to_string();
        assert!(reason("").contains("is empty"));
        assert!(reason("a/b").contains("'/'"));
        assert!(reason("..").contains("starts with '.'"));
        assert!(reason(&"x".repeat(65)).contains("longer than 64"));
        assert!(reason("a b").contains("' '"));
        assert_eq!(new_id().len(), 16);
        assert!(check_id(&new_id()).is_ok());
    }
}

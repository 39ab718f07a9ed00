//! The configuration of the guest kernel in the assets (`kernel.config`,
//! written by `capsa assets build` for capsa's own kernel) has every option
//! capsa needs: those of the repository's fragments (`kernel/x86_64`), and
//! the core of them listed here again, so that a line dropped from a
//! fragment by mistake fails too. The VM test `crates/cli/tests/kernel.rs`
//! checks the running kernel's `/proc/config.gz` the same way.

use std::path::{Path, PathBuf};

use capsa_assets::{kbuild::Recipe, missing_options, Arch, KERNEL_CONFIG_FILE};

/// What capsa's guest cannot do without.
const REQUIRED: &str = "\
# CONFIG_MODULES is not set
CONFIG_IKCONFIG_PROC=y
CONFIG_PVH=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_LZ4=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_DEVTMPFS=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_MMIO=y
CONFIG_PCIEPORTBUS=y
CONFIG_HOTPLUG_PCI_PCIE=y
CONFIG_HOTPLUG_PCI_ACPI=y
CONFIG_VIRTIO_FS=y
CONFIG_FUSE_FS=y
CONFIG_VIRTIO_VSOCKETS=y
CONFIG_VIRTIO_BLK=y
CONFIG_SCSI_VIRTIO=y
CONFIG_BLK_DEV_SD=y
CONFIG_VIRTIO_NET=y
CONFIG_VIRTIO_BALLOON=y
CONFIG_PAGE_REPORTING=y
CONFIG_VIRTIO_MEM=y
CONFIG_MEMORY_HOTPLUG=y
CONFIG_MEMORY_HOTREMOVE=y
CONFIG_ACPI_HOTPLUG_MEMORY=y
CONFIG_HOTPLUG_CPU=y
CONFIG_ACPI_HOTPLUG_CPU=y
CONFIG_ACPI_NFIT=y
CONFIG_BLK_DEV_PMEM=y
CONFIG_NVDIMM_PFN=y
CONFIG_FS_DAX=y
CONFIG_VMGENID=y
CONFIG_CGROUPS=y
CONFIG_MEMCG=y
CONFIG_CGROUP_BPF=y
CONFIG_BPF_SYSCALL=y
CONFIG_CGROUP_PIDS=y
CONFIG_CPUSETS=y
CONFIG_PID_NS=y
CONFIG_NET_NS=y
CONFIG_USER_NS=y
CONFIG_SECCOMP_FILTER=y
CONFIG_OVERLAY_FS=y
CONFIG_EXT4_FS=y
CONFIG_XFS_FS=y
CONFIG_NF_TABLES=y
CONFIG_IP_NF_IPTABLES=y
";

fn assets_dir() -> PathBuf {
    std::env::var_os("CAPSA_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/capsa/assets"))
}

fn kernel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel")
}

#[test]
fn the_assets_kernel_has_every_option_capsa_needs() {
    let path = assets_dir().join(KERNEL_CONFIG_FILE);
    let config = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the assets' kernel is not capsa's build (run `make assets`)",
            path.display()
        )
    });
    let recipe = Recipe::load(&kernel_dir(), Arch::X86_64).unwrap();
    assert!(!recipe.fragments.is_empty(), "no fragment in kernel/x86_64");
    let wanted = format!("{}{REQUIRED}", recipe.merged_config());
    let missing = missing_options(&wanted, &config);
    assert!(
        missing.is_empty(),
        "{} lacks options capsa needs: {}",
        path.display(),
        missing.join(", ")
    );
}

/// The list above is also in the fragments: the build enforces them.
#[test]
fn the_fragments_ask_for_every_required_option() {
    let recipe = Recipe::load(&kernel_dir(), Arch::X86_64).unwrap();
    let missing = missing_options(REQUIRED, &recipe.merged_config());
    assert!(
        missing.is_empty(),
        "not in kernel/x86_64: {}",
        missing.join(", ")
    );
}

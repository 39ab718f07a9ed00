//! The QEMU command line of a VM (pure: unit-tested without QEMU).

use std::path::Path;

use super::resize::Sizing;
use capsa_config::MachineType;

use super::{disk_image, nvdimm_image, settings};
use crate::{Accelerator, BlockDriver, VmConfig};

/// Kernel parameters capsa always passes: the serial console, reboot on
/// panic (and `-no-reboot` turns that into QEMU exiting), quiet boot, then
/// [`FAST_BOOT_PARAMS`].
const KERNEL_PARAMS: &[&str] = &["console=ttyS0", "panic=1", "quiet"];

/// No swiotlb bounce buffer, unless `kernel_params` sets `swiotlb=` itself.
/// The guest kernel reserves 64 MiB for it whenever memory may reach above
/// 4 GiB (the hot-plug range counts) and zeroes it at boot: 64 MiB of guest
/// RAM resident in QEMU for the pod's life, never used, since no device
/// of the VM needs bouncing (virtio without `iommu_platform` gives the
/// device guest-physical addresses; NVDIMM has no DMA). Measured with the
/// density bench (docs/performance.md, "Density"): 66 MiB less per idle
/// pod, start time unchanged.
const NO_SWIOTLB: &str = "swiotlb=noforce";

/// Kata's kernel parameters for a fast boot of a VM whose hardware is
/// known (its runtime passes the same on x86): trust the TSC and skip the
/// timer checks, expedited RCU grace periods, no probing of the emulated
/// PS/2 controller's keyboard and mouse, no SMP lock-prefix patching,
/// reboot through the keyboard controller, and no self-tests of the
/// crypto algorithms (under TCG those alone took about 0.5 s of CPU of
/// every boot). Each exists in Debian's 6.1 kernel (none is reported as
/// unknown on its console). Measured in performance.md, "Spending less
/// per start"; `pci=lastbus=0`, also Kata's, is left out: the PCIe root
/// ports of hot-plug sit on buses above 0.
pub const FAST_BOOT_PARAMS: &[&str] = &[
    "tsc=reliable",
    "no_timer_check",
    "rcupdate.rcu_expedited=1",
    "i8042.direct=1",
    "i8042.dumbkbd=1",
    "i8042.nopnp=1",
    "i8042.noaux=1",
    "noreplace-smp",
    "reboot=k",
    "cryptomgr.notests",
];

/// Kernel parameters of a VM whose memory can be hot-plugged: the guest
/// kernel onlines memory blocks as soon as they are added (DIMM or
/// virtio-mem), and puts them in ZONE_MOVABLE while the ratio to the boot
/// memory allows (`auto-movable`, 3:1 by default), so that virtio-mem can
/// unplug them again; beyond that ratio they go to ZONE_NORMAL, where the
/// kernel's own allocations may land.
const MEMORY_HOTPLUG_PARAMS: &[&str] = &[
    "memhp_default_state=online",
    "memory_hotplug.online_policy=auto-movable",
];

/// PCI slots of the root bus on q35, fixed so that the PCI path of every
/// device is known before the guest boots: the vsock device, the virtio-fs
/// device, the virtio-scsi controller, then one PCIe root port per slot
/// from [`FIRST_ROOT_PORT_SLOT`] (slot 0 is the host bridge, 0x1f the LPC
/// bridge).
const VSOCK_SLOT: u8 = 0x01;
const VIRTIOFS_SLOT: u8 = 0x02;
const SCSI_SLOT: u8 = 0x03;
pub const FIRST_ROOT_PORT_SLOT: u8 = 0x04;
const LAST_ROOT_PORT_SLOT: u8 = 0x1e;
/// The most root ports the fixed layout has room for.
pub const MAX_ROOT_PORTS: u32 = (LAST_ROOT_PORT_SLOT - FIRST_ROOT_PORT_SLOT + 1) as u32;
/// The virtio-mem device, when there is one, takes the last root-port
/// slot (one root port fewer).
const VIRTIO_MEM_SLOT: u8 = LAST_ROOT_PORT_SLOT;
/// QEMU id of the virtio-mem device.
pub const VIRTIO_MEM_ID: &str = "vmem0";
/// QEMU id of the virtio-mem device's memory backend.
const VIRTIO_MEM_BACKEND: &str = "vmem0-mem";

/// QEMU ids of the root image's NVDIMM or disk, and of its backend.
pub const IMAGE_ID: &str = "image0";
const IMAGE_BACKEND: &str = "image0-mem";

/// Kernel parameters that mount the root image (as Kata's): partition 1,
/// ext4, read-only; on the NVDIMM with DAX (the guest reads the host's
/// page cache instead of copying into its own). `init=/init`: a kernel
/// that reaches the root without a boot initrd runs the image's agent, not
/// `/sbin/init` or a shell (the boot initrd's own `/init` ignores it).
const IMAGE_NVDIMM_PARAMS: &[&str] = &[
    "root=/dev/pmem0p1",
    "rootflags=dax,data=ordered,errors=remount-ro",
    "ro",
    "rootfstype=ext4",
    "init=/init",
];
const IMAGE_DISK_PARAMS: &[&str] = &[
    "root=/dev/vda1",
    "rootflags=data=ordered,errors=remount-ro",
    "ro",
    "rootfstype=ext4",
    "init=/init",
];

/// QEMU id of the balloon device (free page reporting).
pub const BALLOON_ID: &str = "balloon0";

/// The fixed devices that take root-port slots from the top of the
/// layout, each the next slot down of those present, in this order:
/// virtio-mem (always the last slot, 0x1e), the balloon, a root image's
/// virtio-blk disk. Each present one leaves one root port fewer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailDevices {
    pub virtio_mem: bool,
    pub balloon: bool,
    pub image_disk: bool,
}

impl TailDevices {
    /// The tail devices of `cfg`, with or without virtio-mem.
    pub fn of(cfg: &VmConfig, virtio_mem: bool) -> Self {
        Self {
            virtio_mem,
            balloon: settings(cfg).reclaim_guest_freed_memory,
            image_disk: disk_image(cfg).is_some(),
        }
    }

    fn count(self) -> u8 {
        u8::from(self.virtio_mem) + u8::from(self.balloon) + u8::from(self.image_disk)
    }

    fn balloon_slot(self) -> u8 {
        VIRTIO_MEM_SLOT - u8::from(self.virtio_mem)
    }

    fn image_disk_slot(self) -> u8 {
        self.balloon_slot() - u8::from(self.balloon)
    }

    /// The most root ports that fit next to these devices.
    pub fn max_root_ports(self) -> u32 {
        MAX_ROOT_PORTS - u32::from(self.count())
    }

    /// The configuration keys that take root-port slots, for the
    /// configuration's error message.
    pub fn keys(self) -> Vec<&'static str> {
        [
            (self.virtio_mem, "enable_virtio_mem"),
            (self.balloon, "reclaim_guest_freed_memory"),
            (self.image_disk, "an image on virtio-blk"),
        ]
        .into_iter()
        .filter_map(|(on, key)| on.then_some(key))
        .collect()
    }

    /// What takes root-port slots, for an error message ("" if nothing).
    pub fn describe(self) -> String {
        let names: Vec<&str> = [
            (self.virtio_mem, "the virtio-mem device"),
            (self.balloon, "the balloon device"),
            (self.image_disk, "the root image's disk"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            String::new()
        } else {
            format!(" with {}", names.join(" and "))
        }
    }
}

/// QEMU id of the virtio-scsi controller; its bus is `scsi0.0`.
pub const SCSI_CONTROLLER: &str = "scsi0";

/// Whether `machine` has the PCIe root ports block hot-plug needs.
pub fn has_root_ports(machine: MachineType) -> bool {
    machine == MachineType::Q35
}

/// Whether `machine` gets the debug monitor: not microvm, whose guest
/// (QEMU 7.2, Debian's kernel, TCG) never printed a console line with a
/// second `-qmp` monitor in 3 of 3 boots, and booted at once without it
/// (observed, cause not found).
pub fn has_debug_monitor(machine: MachineType) -> bool {
    machine != MachineType::Microvm
}

/// QEMU id of root port `index`.
pub fn root_port_id(index: u32) -> String {
    format!("rp{index}")
}

/// Root-bus slot of root port `index`.
pub fn root_port_slot(index: u32) -> u8 {
    FIRST_ROOT_PORT_SLOT + index as u8
}

/// Sockets the command line refers to.
pub struct Sockets<'a> {
    pub qmp: &'a Path,
    /// The second monitor, for tools and tests (`qmp-debug.sock`), where
    /// the machine has one ([`has_debug_monitor`]).
    pub qmp_debug: Option<&'a Path>,
    pub virtiofs: Option<&'a Path>,
    /// The vhost-user vsock backend's socket; `None` with kernel vhost-vsock.
    pub vhost_user_vsock: Option<&'a Path>,
}

pub fn build(
    cfg: &VmConfig,
    accel: Accelerator,
    sizing: &Sizing,
    sockets: &Sockets<'_>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    // Guest RAM is a shared memfd (vhost-user helpers map it), given as the
    // machine's memory backend: with `-numa` instead, microvm guests hang
    // calibrating the TSC.
    let q = settings(cfg);
    let tail = TailDevices::of(cfg, sizing.virtio_mem_mib > 0);
    let mut machine = match q.machine_type {
        MachineType::Microvm => "microvm,pcie=on,rtc=on,pit=on,memory-backend=mem".to_string(),
        other => format!("{other},memory-backend=mem"),
    };
    let nvdimm = nvdimm_image(cfg);
    if nvdimm.is_some() {
        machine += ",nvdimm=on";
    }
    let mem = format!("{}M", cfg.memory_mib);
    push(&["-name", &format!("capsa-{}", cfg.id)]);
    // TCG's translation cache is reserved at its full size and filled as
    // the guest runs: bounded, it costs retranslation instead of memory.
    let accel_opt = match accel {
        Accelerator::Tcg if q.tcg_tb_size > 0 => format!("tcg,tb-size={}", q.tcg_tb_size),
        other => other.to_string(),
    };
    push(&["-machine", &machine, "-accel", &accel_opt]);
    push(&[
        "-cpu",
        if accel == Accelerator::Kvm {
            "host"
        } else {
            "max"
        },
    ]);
    // Room for hot-plug: vCPUs up to maxcpus, memory up to maxmem (DIMM
    // slots, or the virtio-mem device below); none on microvm.
    let mut smp = cfg.vcpus.to_string();
    if sizing.max_vcpus > cfg.vcpus {
        smp += &format!(",maxcpus={}", sizing.max_vcpus);
    }
    // The NVDIMM of a root image is a memory device: one more slot, and
    // its size on top of the maximum.
    let mut m = mem.clone();
    if nvdimm.is_some() {
        m += &format!(
            ",slots={},maxmem={}M",
            sizing.slots + 1,
            u64::from(sizing.max_memory_mib) + sizing.image_mib
        );
    } else if sizing.max_memory_mib > cfg.memory_mib {
        if sizing.slots > 0 {
            m += &format!(",slots={}", sizing.slots);
        }
        m += &format!(",maxmem={}M", sizing.max_memory_mib);
    }
    push(&["-smp", &smp, "-m", &m]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    ]);
    push(&["-kernel", &cfg.kernel.to_string_lossy()]);
    if let Some(initrd) = &cfg.initrd {
        push(&["-initrd", &initrd.to_string_lossy()]);
    }
    let mut params: Vec<&str> = KERNEL_PARAMS.to_vec();
    params.extend(FAST_BOOT_PARAMS);
    if !cfg.kernel_params.iter().any(|p| p.starts_with("swiotlb=")) {
        params.push(NO_SWIOTLB);
    }
    if sizing.max_memory_mib > cfg.memory_mib {
        params.extend(MEMORY_HOTPLUG_PARAMS);
    }
    match (nvdimm, disk_image(cfg)) {
        (Some(_), _) => params.extend(IMAGE_NVDIMM_PARAMS),
        (_, Some(_)) => params.extend(IMAGE_DISK_PARAMS),
        _ => {}
    }
    params.extend(cfg.kernel_params.iter().map(String::as_str));
    push(&["-append", &params.join(" ")]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&[
        "-chardev",
        // append=on: the log can be rotated under QEMU (capsa-runtime's
        // console keeper) and QEMU's next line lands at the new end.
        &format!("file,id=console,path={},append=on", opt(&cfg.console_log)),
        "-serial",
        "chardev:console",
    ]);
    for qmp in [Some(sockets.qmp), sockets.qmp_debug].into_iter().flatten() {
        push(&["-qmp", &format!("unix:{},server=on,wait=off", opt(qmp))]);
    }
    // On q35 every device of the root bus has a fixed slot; microvm has
    // no hot-plug and keeps QEMU's choice.
    let q35 = has_root_ports(q.machine_type);
    let at = |slot: u8| {
        if q35 {
            format!(",bus=pcie.0,addr={slot:#04x}")
        } else {
            String::new()
        }
    };
    match (nvdimm, disk_image(cfg)) {
        // Read-only and shared: the guest's loads are served from the
        // host's page cache of the file, the same pages for every VM
        // (`unarmed`: QEMU refuses a read-only NVDIMM without it).
        (Some(i), _) => push(&[
            "-object",
            &format!(
                "memory-backend-file,id={IMAGE_BACKEND},mem-path={},size={}M,share=on,readonly=on",
                opt(i),
                sizing.image_mib
            ),
            "-device",
            &format!("nvdimm,id={IMAGE_ID},memdev={IMAGE_BACKEND},unarmed=on"),
        ]),
        (_, Some(i)) => push(&[
            "-drive",
            &format!(
                "file={},if=none,id={IMAGE_ID},format=raw,readonly=on",
                opt(i)
            ),
            "-device",
            &format!(
                "virtio-blk-pci,drive={IMAGE_ID},id={IMAGE_ID}-disk{}",
                at(tail.image_disk_slot())
            ),
        ]),
        _ => {}
    }
    match sockets.vhost_user_vsock {
        Some(sock) => push(&[
            "-chardev",
            &format!("socket,id=vsock0,path={}", opt(sock)),
            "-device",
            &format!(
                "vhost-user-vsock-pci,chardev=vsock0,id=vsock0{}",
                at(VSOCK_SLOT)
            ),
        ]),
        None => push(&[
            "-device",
            &format!(
                "vhost-vsock-pci,guest-cid={},id=vsock0{}",
                cfg.guest_cid,
                at(VSOCK_SLOT)
            ),
        ]),
    }
    if let (Some(fs), Some(sock)) = (&cfg.shared_fs, sockets.virtiofs) {
        push(&[
            "-chardev",
            &format!("socket,id=fs0,path={}", opt(sock)),
            "-device",
            &format!(
                "vhost-user-fs-pci,chardev=fs0,tag={}{}",
                fs.tag,
                at(VIRTIOFS_SLOT)
            ),
        ]);
    }
    if q35 {
        if cfg.block_driver == BlockDriver::VirtioScsi {
            push(&[
                "-device",
                &format!("virtio-scsi-pci,id={SCSI_CONTROLLER}{}", at(SCSI_SLOT)),
            ]);
        }
        if sizing.virtio_mem_mib > 0 {
            // All of it unplugged at boot; shared like the boot memory
            // (vhost-user helpers map it), and a memfd gives unplugged
            // ranges back to the host.
            push(&[
                "-object",
                &format!(
                    "memory-backend-memfd,id={VIRTIO_MEM_BACKEND},size={}M,share=on",
                    sizing.virtio_mem_mib
                ),
                "-device",
                &format!(
                    "virtio-mem-pci,id={VIRTIO_MEM_ID},memdev={VIRTIO_MEM_BACKEND},requested-size=0{}",
                    at(VIRTIO_MEM_SLOT)
                ),
            ]);
        }
        for i in 0..q.pcie_root_port.min(tail.max_root_ports()) {
            push(&[
                "-device",
                &format!(
                    "pcie-root-port,id={},chassis=1,slot={i}{}",
                    root_port_id(i),
                    at(root_port_slot(i))
                ),
            ]);
        }
    }
    if q.reclaim_guest_freed_memory {
        // Never inflated: only its free page reporting queue is used (the
        // guest reports freed 2 MiB+ blocks, QEMU discards them from the
        // memfd). deflate-on-oom in case a tool inflates it over QMP.
        push(&[
            "-device",
            &format!(
                "virtio-balloon-pci,id={BALLOON_ID},free-page-reporting=on,deflate-on-oom=on{}",
                at(tail.balloon_slot())
            ),
        ]);
    }
    a
}

/// A path as a QEMU option value: a comma ends a value, `,,` is a comma.
fn opt(path: &std::path::Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::qemu::qemu_mut;
    use crate::{BlockDriver, DriverSettings, SharedFs};
    use capsa_config::{QemuSettings, VirtioFsCache};
    use std::time::Duration;

    pub(crate) fn cfg() -> VmConfig {
        VmConfig {
            id: "sb".into(),
            run_dir: "/run/capsa/sb".into(),
            console_log: "/run/capsa/sb/console.log".into(),
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            image: None,
            kernel_params: vec!["agent.log=debug".into()],
            vcpus: 2,
            memory_mib: 256,
            max_vcpus: 2,
            max_memory_mib: 256,
            shared_fs: Some(SharedFs {
                daemon: "/v".into(),
                shared_dir: "/s".into(),
                tag: "kataShared".into(),
                cache: VirtioFsCache::Auto,
                extra_args: vec![],
            }),
            guest_cid: 7,
            hotplug_timeout: Duration::from_secs(10),
            block_driver: BlockDriver::VirtioBlk,
            nics: vec![],
            debug: false,
            driver: DriverSettings::Qemu(QemuSettings {
                vhost_user_vsock_daemon: "/d".into(),
                pcie_root_port: 0,
                tcg_tb_size: 0,
                reclaim_guest_freed_memory: false,
                ..QemuSettings::default()
            }),
        }
    }

    /// The sockets of a VM with kernel vhost-vsock and no share.
    fn kernel_vsock_sockets() -> Sockets<'static> {
        Sockets {
            qmp: Path::new("/q.sock"),
            qmp_debug: Some(Path::new("/d.sock")),
            virtiofs: None,
            vhost_user_vsock: None,
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn q35_tcg_with_vhost_user_devices() {
        let s = Sockets {
            qmp: Path::new("/q.sock"),
            qmp_debug: Some(Path::new("/d.sock")),
            virtiofs: Some(Path::new("/fs.sock")),
            vhost_user_vsock: Some(Path::new("/vs.sock")),
        };
        let args = build(&cfg(), Accelerator::Tcg, &Sizing::fixed(&cfg()), &s);
        assert_eq!(after(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(after(&args, "-accel"), ["tcg"]);
        assert_eq!(after(&args, "-cpu"), ["max"]);
        assert_eq!(after(&args, "-m"), ["256M"]);
        assert_eq!(after(&args, "-smp"), ["2"]);
        assert!(!after(&args, "-append")[0].contains("memhp"));
        assert_eq!(
            after(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(
            after(&args, "-append"),
            [format!(
                "console=ttyS0 panic=1 quiet {} swiotlb=noforce agent.log=debug",
                FAST_BOOT_PARAMS.join(" ")
            )]
        );
        // A swiotlb setting of the configuration's replaces capsa's.
        let mut c = cfg();
        c.kernel_params = vec!["swiotlb=32768".into()];
        let args = build(&c, Accelerator::Tcg, &Sizing::fixed(&c), &s);
        assert_eq!(
            after(&args, "-append"),
            [format!(
                "console=ttyS0 panic=1 quiet {} swiotlb=32768",
                FAST_BOOT_PARAMS.join(" ")
            )]
        );
        assert_eq!(
            after(&args, "-device"),
            [
                "vhost-user-vsock-pci,chardev=vsock0,id=vsock0,bus=pcie.0,addr=0x01",
                "vhost-user-fs-pci,chardev=fs0,tag=kataShared,bus=pcie.0,addr=0x02",
            ]
        );
        assert!(args.contains(&"-no-reboot".to_string()));
        assert_eq!(
            after(&args, "-qmp"),
            [
                "unix:/q.sock,server=on,wait=off",
                "unix:/d.sock,server=on,wait=off"
            ]
        );
    }

    #[test]
    fn q35_root_ports_and_scsi_controller_at_fixed_slots() {
        let s = kernel_vsock_sockets();
        let mut c = cfg();
        c.block_driver = BlockDriver::VirtioScsi;
        let q = qemu_mut(&mut c);
        q.pcie_root_port = 2;
        let args = build(&c, Accelerator::Tcg, &Sizing::fixed(&c), &s);
        assert_eq!(
            after(&args, "-device")[1..],
            [
                "virtio-scsi-pci,id=scsi0,bus=pcie.0,addr=0x03",
                "pcie-root-port,id=rp0,chassis=1,slot=0,bus=pcie.0,addr=0x04",
                "pcie-root-port,id=rp1,chassis=1,slot=1,bus=pcie.0,addr=0x05",
            ]
        );
        assert_eq!(root_port_slot(MAX_ROOT_PORTS - 1), 0x1e);
    }

    #[test]
    fn kernel_vsock_and_kvm() {
        let s = kernel_vsock_sockets();
        let mut c = cfg();
        let q = qemu_mut(&mut c);
        q.machine_type = capsa_config::MachineType::Microvm;
        q.pcie_root_port = 4;
        c.block_driver = BlockDriver::VirtioScsi;
        // No room for hot-plug on microvm, whatever the maxima say.
        c.max_vcpus = 4;
        c.max_memory_mib = 2048;
        let args = build(&c, Accelerator::Kvm, &Sizing::resolve(&c, 2, 24 << 10), &s);
        assert_eq!(after(&args, "-smp"), ["2"]);
        assert_eq!(after(&args, "-m"), ["256M"]);
        assert!(!after(&args, "-append")[0].contains("memhp"));
        assert_eq!(after(&args, "-cpu"), ["host"]);
        assert_eq!(
            after(&args, "-machine"),
            ["microvm,pcie=on,rtc=on,pit=on,memory-backend=mem"]
        );
        assert_eq!(
            after(&args, "-device"),
            ["vhost-vsock-pci,guest-cid=7,id=vsock0"]
        );
    }

    #[test]
    fn root_image_on_an_nvdimm_or_a_disk() {
        let s = kernel_vsock_sockets();
        let mut c = cfg();
        c.initrd = Some("/boot.initrd".into());
        c.image = Some("/a,b.img".into());
        qemu_mut(&mut c).disable_image_nvdimm = false;
        let mut sizing = Sizing::fixed(&c);
        sizing.image_mib = 128;
        let args = build(&c, Accelerator::Tcg, &sizing, &s);
        assert_eq!(
            after(&args, "-machine"),
            ["q35,memory-backend=mem,nvdimm=on"]
        );
        // One slot and the image's size beyond the RAM, even without
        // memory hot-plug.
        assert_eq!(after(&args, "-m"), ["256M,slots=1,maxmem=384M"]);
        assert_eq!(
            after(&args, "-object")[1],
            "memory-backend-file,id=image0-mem,mem-path=/a,,b.img,size=128M,share=on,readonly=on"
        );
        assert_eq!(
            after(&args, "-device")[0],
            "nvdimm,id=image0,memdev=image0-mem,unarmed=on"
        );
        assert_eq!(after(&args, "-initrd"), ["/boot.initrd"]);
        assert!(
            after(&args, "-append")[0].ends_with(
                " root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4 init=/init agent.log=debug"
            ),
            "{args:?}"
        );

        // With DIMM hot-plug: the DIMM slots and the NVDIMM's.
        c.max_memory_mib = 2048;
        qemu_mut(&mut c).memory_slots = 3;
        let mut sizing = Sizing::resolve(&c, 2, 24 << 10);
        sizing.image_mib = 128;
        let args = build(&c, Accelerator::Tcg, &sizing, &s);
        assert_eq!(after(&args, "-m"), ["256M,slots=4,maxmem=2176M"]);

        c.image = Some("/r.img".into());
        qemu_mut(&mut c).disable_image_nvdimm = true;
        let q = qemu_mut(&mut c);
        q.pcie_root_port = MAX_ROOT_PORTS;
        let args = build(&c, Accelerator::Tcg, &Sizing::fixed(&c), &s);
        assert_eq!(after(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(after(&args, "-m"), ["256M"]);
        assert_eq!(
            after(&args, "-drive"),
            ["file=/r.img,if=none,id=image0,format=raw,readonly=on"]
        );
        let devices = after(&args, "-device");
        assert_eq!(
            devices[0],
            "virtio-blk-pci,drive=image0,id=image0-disk,bus=pcie.0,addr=0x1e"
        );
        assert_eq!(devices.len(), 2 + MAX_ROOT_PORTS as usize - 1);
        assert!(after(&args, "-append")[0]
            .contains(" root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro "));
    }

    #[test]
    fn headroom_for_hot_plug() {
        let s = kernel_vsock_sockets();
        let mut c = cfg();
        c.vcpus = 1;
        c.max_vcpus = 4;
        c.max_memory_mib = 2048;
        qemu_mut(&mut c).memory_slots = 3;
        let q = qemu_mut(&mut c);
        q.pcie_root_port = MAX_ROOT_PORTS;
        let sizing = Sizing::resolve(&c, 2, 24 << 10);
        let args = build(&c, Accelerator::Tcg, &sizing, &s);
        assert_eq!(after(&args, "-smp"), ["1,maxcpus=4"]);
        assert_eq!(after(&args, "-m"), ["256M,slots=3,maxmem=2048M"]);
        assert!(
            after(&args, "-append")[0]
                .contains(" memhp_default_state=online memory_hotplug.online_policy=auto-movable"),
            "{args:?}"
        );
        assert_eq!(after(&args, "-device").len(), 1 + MAX_ROOT_PORTS as usize);

        qemu_mut(&mut c).enable_virtio_mem = true;
        let sizing = Sizing::resolve(&c, 2, 24 << 10);
        let args = build(&c, Accelerator::Tcg, &sizing, &s);
        assert_eq!(after(&args, "-m"), ["256M,maxmem=2048M"]);
        assert_eq!(
            after(&args, "-object")[1],
            "memory-backend-memfd,id=vmem0-mem,size=1792M,share=on"
        );
        let devices = after(&args, "-device");
        assert_eq!(
            devices[1],
            "virtio-mem-pci,id=vmem0,memdev=vmem0-mem,requested-size=0,bus=pcie.0,addr=0x1e"
        );
        assert_eq!(
            devices.len(),
            2 + MAX_ROOT_PORTS as usize - 1,
            "one root port fewer"
        );
        assert!(!devices
            .iter()
            .any(|d| d.ends_with("addr=0x1e") && d.starts_with("pcie-root-port")));
    }

    #[test]
    fn balloon_takes_the_last_free_slot() {
        let s = kernel_vsock_sockets();
        let mut c = cfg();
        qemu_mut(&mut c).reclaim_guest_freed_memory = true;
        let q = qemu_mut(&mut c);
        q.pcie_root_port = MAX_ROOT_PORTS;
        let args = build(&c, Accelerator::Tcg, &Sizing::fixed(&c), &s);
        let devices = after(&args, "-device");
        assert_eq!(
            devices.last().copied(),
            Some("virtio-balloon-pci,id=balloon0,free-page-reporting=on,deflate-on-oom=on,bus=pcie.0,addr=0x1e")
        );
        assert_eq!(devices.len(), 1 + MAX_ROOT_PORTS as usize - 1 + 1);

        // Below the virtio-mem device, two root ports fewer.
        qemu_mut(&mut c).enable_virtio_mem = true;
        c.max_memory_mib = 1024;
        let args = build(&c, Accelerator::Tcg, &Sizing::resolve(&c, 2, 24 << 10), &s);
        let devices = after(&args, "-device");
        assert!(devices[1].ends_with("addr=0x1e"), "{devices:?}");
        assert!(
            devices.last().unwrap().ends_with(",bus=pcie.0,addr=0x1d"),
            "{devices:?}"
        );
        assert_eq!(devices.len(), 2 + MAX_ROOT_PORTS as usize - 2 + 1);
        let tail = TailDevices::of(&c, true);
        assert_eq!(tail.max_root_ports(), MAX_ROOT_PORTS - 2);
        assert_eq!(
            tail.describe(),
            " with the virtio-mem device and the balloon device"
        );

        // All three tail devices: virtio-mem, balloon, the image's disk.
        c.image = Some("/r.img".into());
        qemu_mut(&mut c).disable_image_nvdimm = true;
        let args = build(&c, Accelerator::Tcg, &Sizing::resolve(&c, 2, 24 << 10), &s);
        let devices = after(&args, "-device");
        assert!(devices[0].ends_with(",bus=pcie.0,addr=0x1c"), "{devices:?}");
        assert_eq!(devices.len(), 3 + MAX_ROOT_PORTS as usize - 3 + 1);
        assert_eq!(
            TailDevices::of(&c, true).max_root_ports(),
            MAX_ROOT_PORTS - 3
        );

        // microvm: QEMU picks the slot.
        let mut c = cfg();
        qemu_mut(&mut c).reclaim_guest_freed_memory = true;
        let q = qemu_mut(&mut c);
        q.machine_type = capsa_config::MachineType::Microvm;
        let args = build(&c, Accelerator::Tcg, &Sizing::fixed(&c), &s);
        assert_eq!(
            after(&args, "-device").last().copied(),
            Some("virtio-balloon-pci,id=balloon0,free-page-reporting=on,deflate-on-oom=on")
        );
    }

    #[test]
    fn translation_cache_size_only_with_tcg() {
        let s = kernel_vsock_sockets();
        let mut c = cfg();
        let q = qemu_mut(&mut c);
        q.tcg_tb_size = 64;
        let args = build(&c, Accelerator::Tcg, &Sizing::fixed(&c), &s);
        assert_eq!(after(&args, "-accel"), ["tcg,tb-size=64"]);
        let args = build(&c, Accelerator::Kvm, &Sizing::fixed(&c), &s);
        assert_eq!(after(&args, "-accel"), ["kvm"]);
        assert!(!after(&args, "-device")
            .iter()
            .any(|d| d.contains("balloon")));
    }
}

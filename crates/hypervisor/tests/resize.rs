//! vCPU and memory hot-plug on real q35 guests under TCG: vCPUs added and
//! removed, memory grown with DIMMs, grown and shrunk with virtio-mem, what
//! the guest sees (its online CPUs, `MemTotal`) and what QEMU reports
//! (`query-cpus-fast`, `query-memory-devices`, its RSS); requests beyond
//! the maxima are capped; a hot-plug whose `device_add` fails leaves
//! nothing behind.
//!
//! The guest is a shell script, not the agent: it onlines offline CPUs as
//! the agent's `OnlineCPUMem` does; memory is onlined by the guest kernel
//! itself (the driver's `memhp_default_state=online`).

mod common;

use std::time::Duration;

use capsa_hypervisor::qemu::{qmp, QemuVm, QMP_DEBUG_SOCKET};
use capsa_hypervisor::{Error, Vm, VmConfig, VmResources};
use common::{assert_all_gone, wait_for, TestDir, SERIAL, TAG};
use serde_json::{json, Value};

/// How long a guest may take to see a change under TCG.
const GUEST_WAIT: Duration = Duration::from_secs(120);
/// Boot memory of the test VMs, MiB.
const BOOT_MIB: u32 = 512;
const MAX_MIB: u32 = 2048;

/// Every 0.2 s the guest onlines offline CPUs, fills and frees 600 MiB of
/// tmpfs once the host creates `/mnt/fill` (then creates `/mnt/filled`),
/// and writes `online=<cpu list> nproc=<n> memtotal=<kB>` to `/mnt/state`.
/// It powers off when `/mnt/stop` exists (at most 20 minutes).
fn script() -> String {
    common::initrd::prelude()
        + &format!(
            "mkdir -p /mnt /fill\n\
             mount -t virtiofs {TAG} /mnt || {{ echo capsa-test: mount failed; poweroff -f; }}\n\
             echo capsa-test: ready\n\
             i=0\n\
             while [ ! -e /mnt/stop ] && [ $i -lt 6000 ]; do\n\
             \x20 for f in /sys/devices/system/cpu/cpu*/online; do\n\
             \x20   [ \"$(cat $f 2>/dev/null)\" = 0 ] && echo 1 > $f 2>/dev/null\n\
             \x20 done\n\
             \x20 if [ -e /mnt/fill ] && [ ! -e /mnt/filled ]; then\n\
             \x20   mount -t tmpfs -o size=700m fill /fill\n\
             \x20   dd if=/dev/zero of=/fill/x bs=1M count=600 2>/dev/null && rm /fill/x && umount /fill && echo ok > /mnt/filled\n\
             \x20 fi\n\
             \x20 mem=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)\n\
             \x20 echo \"online=$(cat /sys/devices/system/cpu/online) nproc=$(nproc) memtotal=$mem\" > /mnt/state.new\n\
             \x20 mv /mnt/state.new /mnt/state\n\
             \x20 sleep 0.2; i=$((i+1))\n\
             done\n\
             echo capsa-test: powering off\n\
             poweroff -f\n"
        )
}

/// What the guest last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GuestState {
    online: String,
    nproc: u32,
    memtotal_mib: u32,
}

fn guest_state(t: &TestDir) -> Option<GuestState> {
    let text = std::fs::read_to_string(t.shared().join("state")).ok()?;
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(GuestState {
        online: field("online")?,
        nproc: field("nproc")?.parse().ok()?,
        memtotal_mib: field("memtotal")?.parse::<u32>().ok()? / 1024,
    })
}

/// Waits until the guest's state satisfies `cond` and returns it.
async fn guest_until(
    t: &TestDir,
    what: &str,
    mut cond: impl FnMut(&GuestState) -> bool,
) -> GuestState {
    let ok = wait_for(GUEST_WAIT, || guest_state(t).is_some_and(|s| cond(&s))).await;
    assert!(
        ok,
        "the guest never showed {what}; it shows {:?}; console:\n{}",
        guest_state(t),
        t.console()
    );
    guest_state(t).unwrap()
}

async fn debug_qmp(t: &TestDir, command: &str, args: Option<Value>) -> Value {
    qmp::execute(&t.run_dir().join(QMP_DEBUG_SOCKET), command, args)
        .await
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(t.run_dir().join("qemu.log")).unwrap_or_default();
            panic!("{command} on the debug monitor: {e}; QEMU's log:\n{log}")
        })
}

/// vCPUs QEMU runs now.
async fn qemu_vcpus(t: &TestDir) -> usize {
    debug_qmp(t, "query-cpus-fast", None)
        .await
        .as_array()
        .expect("a list")
        .len()
}

/// Memory devices (DIMMs, virtio-mem) QEMU has, as (id, plugged MiB).
async fn qemu_memory_devices(t: &TestDir) -> Vec<(String, u64)> {
    let list = debug_qmp(t, "query-memory-devices", None).await;
    list.as_array()
        .expect("a list")
        .iter()
        .map(|d| {
            let data = &d["data"];
            let size = data["size"].as_u64().expect("size");
            (data["id"].as_str().unwrap_or("").to_string(), size >> 20)
        })
        .collect()
}

/// The ids of QEMU's user-created objects (`-object`, `object-add`).
async fn qemu_objects(t: &TestDir) -> Vec<String> {
    let list = debug_qmp(t, "qom-list", Some(json!({"path": "/objects"}))).await;
    list.as_array()
        .expect("a list")
        .iter()
        .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// QEMU's resident memory, MiB.
fn qemu_rss_mib(vm: &QemuVm) -> u64 {
    let pid = vm.pid().expect("QEMU runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        / 1024
}

/// Another client adds a device whose id the driver will use next
/// (`virtio-rng-pci` in the free root port `rp0`), so that the driver's
/// `device_add` fails with a duplicate id.
async fn squat(t: &TestDir, id: &str) {
    let rng = json!({"driver": "virtio-rng-pci", "id": id, "bus": "rp0", "addr": "0"});
    debug_qmp(t, "device_add", Some(rng)).await;
}

fn config(t: &TestDir, vcpus: u32, max_vcpus: u32, virtio_mem: bool) -> VmConfig {
    let mut cfg = t.config_with_modules("q35", &script(), &["virtio_mem"]);
    cfg.vcpus = vcpus;
    cfg.max_vcpus = max_vcpus;
    cfg.memory_mib = BOOT_MIB;
    cfg.max_memory_mib = MAX_MIB;
    common::qemu(&mut cfg).memory_slots = 2;
    common::qemu(&mut cfg).enable_virtio_mem = virtio_mem;
    cfg.hotplug_timeout = Duration::from_secs(60);
    cfg
}

async fn boot(t: &TestDir, cfg: VmConfig) -> QemuVm {
    let mut vm = QemuVm::new(cfg);
    vm.start().await.expect("start");
    let ready = wait_for(GUEST_WAIT, || t.console().contains("capsa-test: ready")).await;
    assert!(ready, "the guest did not start; console:\n{}", t.console());
    vm
}

async fn power_off(t: &TestDir, mut vm: QemuVm) {
    std::fs::write(t.shared().join("stop"), "").unwrap();
    let exited = vm.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(exited, "guest did not power off; console:\n{}", t.console());
    vm.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    assert_all_gone(t);
}

/// 1 vCPU at boot, 3 at most: one is added (the guest onlines it); the
/// boot vCPU stays whatever is asked and, under TCG, an added vCPU is not
/// removed (QEMU 7.2 crashes after a vCPU unplug under TCG: the driver
/// refuses it) and QEMU keeps running; an add whose `device_add` fails
/// leaves QEMU with the vCPUs it had; a request for 8 is capped at 3.
#[tokio::test]
async fn vcpus_are_added_capped_and_kept() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut vm = boot(&t, config(&t, 1, 3, false)).await;
    let first = guest_until(&t, "its boot CPU", |s| s.nproc == 1).await;
    assert_eq!(first.online, "0");
    assert_eq!(
        vm.resources().unwrap().current(),
        VmResources {
            vcpus: 1,
            memory_mib: BOOT_MIB,
            max_vcpus: 3,
            max_memory_mib: MAX_MIB,
            virtio_mem: false
        }
    );

    let res = vm.resources().unwrap();
    assert_eq!(res.resize_vcpus(2).await.expect("add a vCPU"), 2);
    assert_eq!(qemu_vcpus(&t).await, 2);
    let seen = guest_until(&t, "2 online CPUs", |s| s.nproc == 2).await;
    assert_eq!(seen.online, "0-1");

    assert_eq!(res.resize_vcpus(0).await.expect("no removal under TCG"), 2);
    assert_eq!(qemu_vcpus(&t).await, 2);

    // The driver names its vCPUs vcpu1, vcpu2...: the next is vcpu2.
    squat(&t, "vcpu2").await;
    let err = res.resize_vcpus(3).await.unwrap_err();
    assert!(
        matches!(&err, Error::Hotplug { device, .. } if device == "vcpu2"),
        "{err}"
    );
    assert_eq!(qemu_vcpus(&t).await, 2, "a vCPU left after a failed add");
    assert_eq!(res.current().vcpus, 2);
    // The driver goes on with the next id (vcpu3); beyond the maximum
    // is capped.
    assert_eq!(res.resize_vcpus(8).await.expect("add, capped"), 3);
    assert_eq!(qemu_vcpus(&t).await, 3);
    let seen = guest_until(&t, "3 online CPUs", |s| s.nproc == 3).await;
    assert_eq!(seen.online, "0-2");

    power_off(&t, vm).await;
}

/// 512 MiB at boot, 2 GiB at most, 2 DIMM slots: a failed DIMM leaves no
/// device nor backend; +768 MiB is one DIMM and the guest's `MemTotal`
/// grows by as much; a request beyond the maximum is capped at it; a
/// smaller request keeps the memory (DIMMs are not removed).
#[tokio::test]
async fn dimms_grow_memory_up_to_the_maximum() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut vm = boot(&t, config(&t, 1, 1, false)).await;
    let base = guest_until(&t, "its memory", |_| true).await.memtotal_mib;
    let objects = qemu_objects(&t).await;

    squat(&t, "dimm1").await;
    let res = vm.resources().unwrap();
    let err = res.resize_memory(BOOT_MIB + 768).await.unwrap_err();
    assert!(
        matches!(&err, Error::Hotplug { device, .. } if device == "dimm1"),
        "{err}"
    );
    assert_eq!(qemu_memory_devices(&t).await, vec![], "DIMM left");
    assert_eq!(qemu_objects(&t).await, objects, "backend left");
    assert_eq!(res.current().memory_mib, BOOT_MIB);

    assert_eq!(
        res.resize_memory(BOOT_MIB + 768).await.expect("grow"),
        BOOT_MIB + 768
    );
    assert_eq!(
        qemu_memory_devices(&t).await,
        vec![("dimm2".to_string(), 768)]
    );
    guest_until(&t, "768 MiB more", |s| s.memtotal_mib >= base + 768).await;

    assert_eq!(
        res.resize_memory(100_000).await.expect("capped"),
        MAX_MIB,
        "capped at the maximum"
    );
    guest_until(&t, "all of its maximum", |s| {
        s.memtotal_mib >= base + MAX_MIB - BOOT_MIB
    })
    .await;
    assert_eq!(
        res.resize_memory(BOOT_MIB).await.expect("no shrink"),
        MAX_MIB
    );
    assert_eq!(qemu_memory_devices(&t).await.len(), 2);

    power_off(&t, vm).await;
}

/// With virtio-mem: +768 MiB grows the guest's `MemTotal` by as much; the
/// guest fills and frees 600 MiB; shrinking back to the boot size makes
/// `MemTotal` drop back and QEMU's RSS drop; a request beyond the maximum
/// is capped at it.
#[tokio::test]
async fn virtio_mem_grows_and_shrinks() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut vm = boot(&t, config(&t, 1, 1, true)).await;
    let base = guest_until(&t, "its memory", |_| true).await.memtotal_mib;
    let res = vm.resources().unwrap();
    assert!(res.current().virtio_mem);

    assert_eq!(
        res.resize_memory(BOOT_MIB + 700).await.expect("grow"),
        BOOT_MIB + 768,
        "whole 128 MiB blocks"
    );
    assert_eq!(
        qemu_memory_devices(&t).await,
        vec![("vmem0".to_string(), 768)],
        "virtio-mem's size is what the guest plugged"
    );
    guest_until(&t, "768 MiB more", |s| s.memtotal_mib >= base + 768).await;

    std::fs::write(t.shared().join("fill"), "").unwrap();
    let filled = wait_for(GUEST_WAIT, || t.shared().join("filled").exists()).await;
    assert!(
        filled,
        "the guest did not fill its memory; console:\n{}",
        t.console()
    );
    let rss_filled = qemu_rss_mib(&vm);

    let res = vm.resources().unwrap();
    assert_eq!(res.resize_memory(BOOT_MIB).await.expect("shrink"), BOOT_MIB);
    guest_until(&t, "its boot memory again", |s| s.memtotal_mib <= base).await;
    let rss_shrunk = qemu_rss_mib(&vm);
    assert!(
        rss_shrunk + 384 <= rss_filled,
        "QEMU's RSS went from {rss_filled} MiB to only {rss_shrunk} MiB"
    );

    let res = vm.resources().unwrap();
    assert_eq!(
        res.resize_memory(100_000).await.expect("capped"),
        MAX_MIB,
        "capped at the maximum"
    );
    guest_until(&t, "all of its maximum", |s| {
        s.memtotal_mib >= base + MAX_MIB - BOOT_MIB
    })
    .await;

    power_off(&t, vm).await;
}

/// microvm has no hot-plug: a named error, no boot needed.
#[tokio::test]
async fn microvm_has_no_resource_hotplug() {
    let t = TestDir::new();
    let mut cfg = t.config("q35", &common::initrd::hang());
    common::qemu(&mut cfg).machine_type = capsa_config::MachineType::Microvm;
    let mut vm = capsa_hypervisor::create(cfg);
    let err = vm.resources().err().expect("microvm must not resize");
    assert_eq!(
        err.to_string(),
        "vCPU and memory hot-plug is not supported by QEMU (microvm)"
    );
}

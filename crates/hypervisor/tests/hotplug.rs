//! Block device hot-plug on real q35 guests under TCG, for virtio-blk and
//! virtio-scsi: drives made from image files in the test's directory are
//! attached, seen by the guest where the returned address says, written
//! (or refused when read-only), listed by QEMU's debug monitor, detached,
//! and gone from the guest and from QEMU. Failing attaches leave nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_hypervisor::qemu::{qmp, QemuVm, QMP_DEBUG_SOCKET};
use capsa_hypervisor::{BlockDevice, BlockDriver, Error, GuestAddress, Vm};
use common::{assert_all_gone, wait_for, TestDir, SERIAL, TAG};
use serde_json::json;

/// What the guest loads besides the common modules.
const BLOCK_MODULES: &[&str] = &["virtio_blk", "virtio_scsi", "sd_mod"];
/// How long a guest may take to see or lose a disk under TCG.
const GUEST_WAIT: Duration = Duration::from_secs(90);
/// Sector 1 of a drive the guest could write holds this afterwards.
const GUEST_WROTE: &[u8] = b"written-by-the-guest";

/// The guest mounts the share, then every 0.1 s compares its disks
/// (`/sys/block/vd*`, `sd*`) with the last ones: for a new disk it prints
/// its sysfs path, read-only flag and first 12 bytes, then writes
/// `/mnt/pattern` to its sector 1 and prints whether that worked; for a
/// disk gone it prints `removed`. It powers off when `/mnt/stop` exists
/// (at most 10 minutes).
fn script() -> String {
    common::initrd::prelude()
        + &format!(
            "mkdir -p /mnt\n\
             mount -t virtiofs {TAG} /mnt || {{ echo capsa-test: mount failed; poweroff -f; }}\n\
             echo capsa-test: ready\n\
             seen=''\n\
             i=0\n\
             while [ ! -e /mnt/stop ] && [ $i -lt 6000 ]; do\n\
             \x20 now=''\n\
             \x20 for d in /sys/block/vd* /sys/block/sd*; do [ -e \"$d\" ] && now=\"$now ${{d##*/}}\"; done\n\
             \x20 for n in $now; do\n\
             \x20   case \" $seen \" in *\" $n \"*) ;; *)\n\
             \x20     j=0; while [ ! -b /dev/$n ] && [ $j -lt 100 ]; do sleep 0.05; j=$((j+1)); done\n\
             \x20     echo \"capsa-test: added $n path=$(readlink -f /sys/block/$n) ro=$(cat /sys/block/$n/ro) head=$(head -c 12 /dev/$n)\"\n\
             \x20     if dd if=/mnt/pattern of=/dev/$n bs=512 seek=1 count=1 conv=fsync; then echo \"capsa-test: write $n ok\"; else echo \"capsa-test: write $n failed\"; fi\n\
             \x20   ;; esac\n\
             \x20 done\n\
             \x20 for n in $seen; do case \" $now \" in *\" $n \"*) ;; *) echo \"capsa-test: removed $n\";; esac; done\n\
             \x20 seen=\"$now\"\n\
             \x20 sleep 0.1; i=$((i+1))\n\
             done\n\
             echo capsa-test: powering off\n\
             poweroff -f\n"
        )
}

/// A 4 MiB image file whose first 12 bytes are `capsa-disk-<letter>`.
fn image(t: &TestDir, letter: char) -> PathBuf {
    let path = t.path().join(format!("disk-{letter}.img"));
    let mut bytes = vec![0u8; 4 << 20];
    let magic = format!("capsa-disk-{letter}");
    bytes[..magic.len()].copy_from_slice(magic.as_bytes());
    std::fs::write(&path, bytes).expect("write the image");
    path
}

fn device(id: &str, path: &Path, read_only: bool, driver: BlockDriver) -> BlockDevice {
    BlockDevice {
        id: id.into(),
        path: path.into(),
        read_only,
        driver,
    }
}

/// Runs `command` on the debug monitor (another client than the driver).
async fn debug_qmp(t: &TestDir, command: &str) -> String {
    qmp::execute(&t.run_dir().join(QMP_DEBUG_SOCKET), command, None)
        .await
        .unwrap_or_else(|e| panic!("{command} on the debug monitor: {e}"))
        .to_string()
}

/// Whether QEMU has `image` open, as a drive (`query-block`) or as any
/// block node (`query-named-block-nodes`).
async fn qemu_has(t: &TestDir, image: &Path) -> (bool, bool) {
    let name = image.to_str().unwrap();
    (
        debug_qmp(t, "query-block").await.contains(name),
        debug_qmp(t, "query-named-block-nodes").await.contains(name),
    )
}

/// Whether QEMU opened the drive of `image` read-only (`query-block`).
async fn drive_read_only(t: &TestDir, image: &Path) -> Option<bool> {
    let blocks = qmp::execute(&t.run_dir().join(QMP_DEBUG_SOCKET), "query-block", None)
        .await
        .expect("query-block");
    blocks
        .as_array()?
        .iter()
        .find(|b| b["inserted"]["file"] == image.to_str().unwrap())
        .and_then(|b| b["inserted"]["ro"].as_bool())
}

/// The console line the guest printed for `event` (`added`, `write`,
/// `removed`) of the disk whose line contains `needle`, waiting for it.
async fn guest_line(t: &TestDir, event: &str, needle: &str) -> String {
    t.guest_line(event, needle, GUEST_WAIT).await
}

/// The disk name and sysfs path from an `added` line.
fn added(line: &str) -> (String, String) {
    let mut words = line.split_whitespace().skip(2);
    let name = words.next().expect("disk name").to_string();
    let path = words
        .next()
        .and_then(|w| w.strip_prefix("path="))
        .expect("path=")
        .to_string();
    (name, path)
}

/// Whether the sysfs path of a disk is where `address` says: for a PCI
/// path, the device in each slot down from the root bus; for SCSI, the
/// disk `host:0:id:lun`.
fn sysfs_matches(path: &str, address: &GuestAddress) -> bool {
    match address {
        GuestAddress::Pci { slots } => {
            // /sys/devices/pci0000:00/0000:00:04.0/0000:01:00.0/virtio3/block/vda
            let functions: Vec<&str> = path
                .split('/')
                .filter(|c| c.len() == 12 && c.starts_with("0000:") && c.ends_with(".0"))
                .collect();
            let found: Vec<String> = functions.iter().map(|c| c[8..10].to_string()).collect();
            let want: Vec<String> = slots.iter().map(|s| format!("{s:02x}")).collect();
            found == want
        }
        GuestAddress::Scsi { id, lun } => path.contains(&format!(":0:{id}:{lun}/block/")),
        GuestAddress::Node { name } => path.ends_with(&format!("/block/{name}")),
    }
}

async fn boot(t: &TestDir, driver: BlockDriver) -> QemuVm {
    let mut cfg = t.config_with_modules("q35", &script(), BLOCK_MODULES);
    cfg.block_driver = driver;
    std::fs::write(t.shared().join("pattern"), {
        let mut sector = GUEST_WROTE.to_vec();
        sector.resize(512, b'.');
        sector
    })
    .unwrap();
    let mut vm = QemuVm::new(cfg);
    vm.start().await.expect("start");
    let ready = wait_for(GUEST_WAIT, || t.console().contains("capsa-test: ready")).await;
    assert!(ready, "the guest did not start; console:\n{}", t.console());
    vm
}

/// Attaches a read-write and a read-only drive, checks the guest and QEMU
/// see them where they should, tries the failures, detaches both and
/// checks they are gone; then one attach whose `device_add` fails.
async fn attach_see_detach(driver: BlockDriver) {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut vm = boot(&t, driver).await;
    let (rw, ro) = (image(&t, 'a'), image(&t, 'b'));
    let ro_before = std::fs::read(&ro).unwrap();

    let block = vm.block().expect("q35 has block hot-plug");
    let rw_addr = block
        .attach_block(&device("rw", &rw, false, driver))
        .await
        .expect("attach the read-write drive");
    let ro_addr = block
        .attach_block(&device("ro", &ro, true, driver))
        .await
        .expect("attach the read-only drive");
    match driver {
        BlockDriver::VirtioBlk => {
            assert!(
                matches!(&rw_addr, GuestAddress::Pci { slots } if slots.len() == 2 && slots[1] == 0)
            );
        }
        BlockDriver::VirtioScsi => {
            assert!(matches!(rw_addr, GuestAddress::Scsi { lun: 0, .. }));
        }
    }
    assert_ne!(rw_addr, ro_addr);
    let ids: Vec<String> = block
        .attached_blocks()
        .iter()
        .map(|b| b.device.id.clone())
        .collect();
    assert_eq!(ids, ["rw", "ro"]);

    // The guest sees both, where the addresses say, with their contents.
    let mut names = Vec::new();
    for (magic, address, read_only) in [
        ("capsa-disk-a", &rw_addr, false),
        ("capsa-disk-b", &ro_addr, true),
    ] {
        let line = guest_line(&t, "added", &format!("head={magic}")).await;
        let (name, path) = added(&line);
        let prefix = if driver == BlockDriver::VirtioBlk {
            "vd"
        } else {
            "sd"
        };
        assert!(name.starts_with(prefix), "{line}");
        assert!(
            sysfs_matches(&path, address),
            "{name} is at {path}, not at {address}"
        );
        assert!(
            line.contains(&format!("ro={}", u8::from(read_only))),
            "{line}"
        );
        let write = guest_line(&t, "write", &format!("{name} ")).await;
        let want = if read_only { "failed" } else { "ok" };
        assert!(write.ends_with(want), "{write}; console:\n{}", t.console());
        names.push(name);
    }
    assert_eq!(
        &std::fs::read(&rw).unwrap()[512..512 + GUEST_WROTE.len()],
        GUEST_WROTE
    );
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_before,
        "the read-only image changed"
    );
    for image in [&rw, &ro] {
        assert_eq!(
            qemu_has(&t, image).await,
            (true, true),
            "{}",
            image.display()
        );
    }
    assert_eq!(drive_read_only(&t, &ro).await, Some(true));
    assert_eq!(drive_read_only(&t, &rw).await, Some(false));

    // Failures name the device and leave nothing.
    let block = vm.block().unwrap();
    let missing = t.path().join("missing.img");
    let bad = [
        device("gone", &missing, false, driver),
        device("bad id", &rw, false, driver),
        device("rw", &image(&t, 'c'), false, driver),
    ];
    for dev in &bad {
        let err = block.attach_block(dev).await.unwrap_err();
        assert!(
            matches!(&err, Error::Hotplug { device, .. } if device == &dev.id),
            "{err}"
        );
    }
    if driver == BlockDriver::VirtioBlk {
        // The test VM has two root ports, both in use.
        let err = block
            .attach_block(&device("third", &image(&t, 'c'), false, driver))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no free PCIe root port"), "{err}");
    }
    assert_eq!(qemu_has(&t, &image(&t, 'c')).await, (false, false));
    assert_eq!(block.attached_blocks().len(), 2);

    // Detach: the guest loses the disks, QEMU closes the images.
    for (id, image, name) in [("rw", &rw, &names[0]), ("ro", &ro, &names[1])] {
        block.detach_block(id).await.expect("detach");
        guest_line(&t, "removed", name).await;
        assert_eq!(
            qemu_has(&t, image).await,
            (false, false),
            "{id} still in QEMU"
        );
    }
    assert!(block.attached_blocks().is_empty());
    let err = block.detach_block("rw").await.unwrap_err();
    assert!(err.to_string().contains("hot-plug of rw"), "{err}");

    if driver == BlockDriver::VirtioBlk {
        rolled_back_after_device_add_fails(&t, &mut vm).await;
    }

    std::fs::write(t.shared().join("stop"), "").unwrap();
    let exited = vm.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(exited, "guest did not power off; console:\n{}", t.console());
    vm.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    assert_all_gone(&t);
}

/// Another client fills the first root port behind the driver's back:
/// `blockdev-add` works, `device_add` fails, and the node is removed.
async fn rolled_back_after_device_add_fails(t: &TestDir, vm: &mut QemuVm) {
    let sock = t.run_dir().join(QMP_DEBUG_SOCKET);
    let rng = json!({"driver": "virtio-rng-pci", "id": "squatter", "bus": "rp0", "addr": "0"});
    qmp::execute(&sock, "device_add", Some(rng))
        .await
        .expect("device_add on the debug monitor");
    let img = image(t, 'd');
    let err = vm
        .block()
        .unwrap()
        .attach_block(&device("late", &img, false, BlockDriver::VirtioBlk))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hot-plug of late"), "{err}");
    assert_eq!(
        qemu_has(t, &img).await,
        (false, false),
        "node left after rollback"
    );
    assert!(vm.block().unwrap().attached_blocks().is_empty());
}

#[tokio::test]
async fn virtio_blk_drives_are_attached_seen_and_detached() {
    attach_see_detach(BlockDriver::VirtioBlk).await;
}

#[tokio::test]
async fn virtio_scsi_drives_are_attached_seen_and_detached() {
    attach_see_detach(BlockDriver::VirtioScsi).await;
}

/// microvm has no root ports: the capability answers a named error (no
/// boot needed).
#[tokio::test]
async fn microvm_has_no_block_hotplug() {
    let t = TestDir::new();
    let mut cfg = t.config("q35", &common::initrd::hang());
    common::qemu(&mut cfg).machine_type = capsa_config::MachineType::Microvm;
    let mut vm = capsa_hypervisor::create(cfg);
    let err = vm
        .block()
        .err()
        .expect("microvm must not offer block hot-plug");
    assert!(
        matches!(&err, Error::NotSupported { hypervisor, capability: "block device hot-plug" } if hypervisor == "QEMU (microvm)"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "block device hot-plug is not supported by QEMU (microvm)"
    );
}

//! NICs on a real q35 guest under TCG (root): taps in a network namespace
//! made by the test; one NIC cold-plugged at boot, one hot-plugged and
//! detached. The guest prints every interface it gains or loses with its
//! MAC and MTU, brings the cold-plugged one up and pings the host side of
//! its tap. The netns (and with it the taps) goes in a guard.

mod common;

use std::process::Command;
use std::time::Duration;

use capsa_hypervisor::qemu::{qmp, QemuVm, QMP_DEBUG_SOCKET};
use capsa_hypervisor::{GuestAddress, MacAddr, NetDevice, Vm};
use common::{assert_all_gone, TestDir, SERIAL, TAG};
use serde_json::json;

/// How long a guest may take to see or lose a NIC, or to ping, under TCG.
const GUEST_WAIT: Duration = Duration::from_secs(120);
const COLD_MAC: &str = "02:ca:b5:00:00:01";
const HOT_MAC: &str = "02:ca:b5:00:00:02";
const COLD_MTU: u32 = 1400;
const HOT_MTU: u32 = 1300;
const HOST_IP: &str = "10.211.7.1";
const GUEST_IP: &str = "10.211.7.2";

/// The guest mounts the share, then every 0.2 s compares its interfaces
/// (but `lo`) with the last ones and prints `added NAME mac=.. mtu=..` or
/// `removed NAME`. The interface with [`COLD_MAC`] is brought up with
/// [`GUEST_IP`] and pings [`HOST_IP`] (a few tries). It powers off when
/// `/mnt/stop` exists (at most 10 minutes).
fn script() -> String {
    common::initrd::prelude()
        + &format!(
            "mkdir -p /mnt\n\
             mount -t virtiofs {TAG} /mnt || {{ echo capsa-test: mount failed; poweroff -f; }}\n\
             echo capsa-test: ready\n\
             seen=''\n\
             i=0\n\
             while [ ! -e /mnt/stop ] && [ $i -lt 3000 ]; do\n\
             \x20 now=''\n\
             \x20 for d in /sys/class/net/*; do n=${{d##*/}}; [ \"$n\" = lo ] || now=\"$now $n\"; done\n\
             \x20 for n in $now; do\n\
             \x20   case \" $seen \" in *\" $n \"*) ;; *)\n\
             \x20     mac=$(cat /sys/class/net/$n/address)\n\
             \x20     echo \"capsa-test: added $n mac=$mac mtu=$(cat /sys/class/net/$n/mtu) path=$(readlink -f /sys/class/net/$n)\"\n\
             \x20     if [ \"$mac\" = {COLD_MAC} ]; then\n\
             \x20       ip link set $n up && ip addr add {GUEST_IP}/24 dev $n\n\
             \x20       ok=no; j=0\n\
             \x20       while [ $ok = no ] && [ $j -lt 20 ]; do ping -c 1 -W 2 {HOST_IP} >/dev/null 2>&1 && ok=yes; j=$((j+1)); done\n\
             \x20       echo \"capsa-test: ping $ok\"\n\
             \x20     fi\n\
             \x20   ;; esac\n\
             \x20 done\n\
             \x20 for n in $seen; do case \" $now \" in *\" $n \"*) ;; *) echo \"capsa-test: removed $n\";; esac; done\n\
             \x20 seen=\"$now\"\n\
             \x20 sleep 0.2; i=$((i+1))\n\
             done\n\
             echo capsa-test: powering off\n\
             poweroff -f\n"
        )
}

use capsa_test_infra::netns::run;

/// A network namespace of the test; deleting it deletes its taps.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = format!("capsa-nic-{}", std::process::id());
        // A namespace left by a killed run of this pid would be reused.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        Self { name }
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/var/run/netns/{}", self.name).into()
    }

    /// A tap `tap` with `mtu`, up, optionally with `address`.
    fn tap(&self, tap: &str, mtu: u32, address: Option<&str>) {
        let ns = self.name.as_str();
        run(&[
            "ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr",
        ]);
        run(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            tap,
            "mtu",
            &mtu.to_string(),
            "up",
        ]);
        if let Some(a) = address {
            run(&["ip", "-n", ns, "addr", "add", a, "dev", tap]);
        }
    }

    /// `ip link show` of `tap`: `LOWER_UP` while a process holds it open,
    /// `NO-CARRIER` when none does.
    fn link(&self, tap: &str) -> String {
        run(&["ip", "-n", &self.name, "link", "show", tap])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn nic(id: &str, tap: &str, ns: &Netns, mac: &str, mtu: u32) -> NetDevice {
    NetDevice {
        id: id.into(),
        tap: tap.into(),
        netns: Some(ns.path()),
        mac: mac.parse::<MacAddr>().unwrap(),
        mtu,
        vhost: true,
    }
}

/// The console line the guest printed that starts with `capsa-test:
/// {event} ` and contains `needle`, waiting for it.
async fn guest_line(t: &TestDir, event: &str, needle: &str) -> String {
    t.guest_line(event, needle, GUEST_WAIT).await
}

/// The PCI functions of a sysfs path, as root-bus-down slots.
fn slots_of(path: &str) -> Vec<u8> {
    path.split('/')
        .filter(|c| c.len() == 12 && c.starts_with("0000:") && c.ends_with(".0"))
        .map(|c| u8::from_str_radix(&c[8..10], 16).unwrap())
        .collect()
}

/// The devices QEMU's debug monitor lists under `/machine/peripheral`.
async fn peripherals(t: &TestDir) -> String {
    qmp::execute(
        &t.run_dir().join(QMP_DEBUG_SOCKET),
        "qom-list",
        Some(json!({ "path": "/machine/peripheral" })),
    )
    .await
    .expect("qom-list")
    .to_string()
}

/// Another client fills the free root port behind the driver's back:
/// `getfd` and `netdev_add` work, `device_add` fails, and the netdev is
/// removed (QEMU closed the tap). Then the squatter goes.
async fn rolled_back_after_device_add_fails(
    t: &TestDir,
    vm: &mut QemuVm,
    ns: &Netns,
    hot: &NetDevice,
) {
    let sock = t.run_dir().join(QMP_DEBUG_SOCKET);
    let rng = json!({"driver": "virtio-rng-pci", "id": "squatter", "bus": "rp1", "addr": "0"});
    qmp::execute(&sock, "device_add", Some(rng))
        .await
        .expect("device_add on the debug monitor");
    let err = vm.network().unwrap().attach_nic(hot).await.unwrap_err();
    assert!(err.to_string().contains("hot-plug of hot"), "{err}");
    let network = qmp::execute(
        &sock,
        "human-monitor-command",
        Some(json!({"command-line": "info network"})),
    )
    .await
    .expect("info network")
    .to_string();
    assert!(
        network.contains("tap-cold") && !network.contains("tap-hot"),
        "netdev left after rollback: {network}"
    );
    assert!(
        ns.link("ctap1").contains("NO-CARRIER"),
        "{}",
        ns.link("ctap1")
    );
    assert_eq!(vm.network().unwrap().attached_nics().len(), 1);
    qmp::execute(&sock, "device_del", Some(json!({"id": "squatter"})))
        .await
        .expect("device_del on the debug monitor");
    let released = capsa_test_infra::wait_until_async(GUEST_WAIT, || async move {
        !peripherals(t).await.contains("squatter")
    })
    .await;
    assert!(
        released,
        "the guest did not release the squatter in {GUEST_WAIT:?}"
    );
}

#[tokio::test]
async fn cold_and_hot_plugged_nics_reach_the_guest() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let ns = Netns::new();
    ns.tap("ctap0", COLD_MTU, Some(&format!("{HOST_IP}/24")));
    ns.tap("ctap1", HOT_MTU, None);
    let mut cfg = t.config_with_modules("q35", &script(), &["virtio_net"]);
    cfg.nics = vec![nic("cold", "ctap0", &ns, COLD_MAC, COLD_MTU)];
    let mut vm = QemuVm::new(cfg);
    vm.start().await.expect("start");
    assert!(
        ns.link("ctap0").contains("LOWER_UP"),
        "QEMU holds the cold tap"
    );

    // The cold-plugged NIC: MAC, MTU, PCI path, and a ping to the host.
    let cold = vm.network().expect("q35 has NICs").attached_nics();
    assert_eq!(cold.len(), 1);
    let line = guest_line(&t, "added", &format!("mac={COLD_MAC}")).await;
    assert!(line.contains(&format!("mtu={COLD_MTU} ")), "{line}");
    let GuestAddress::Pci { slots } = &cold[0].address else {
        panic!("{:?}", cold[0].address)
    };
    let path = line.split("path=").nth(1).unwrap();
    assert_eq!(&slots_of(path), slots, "{line}");
    let ping = guest_line(&t, "ping", "").await;
    assert_eq!(ping, "capsa-test: ping yes", "console:\n{}", t.console());

    // A tap that does not exist: the error names it and its netns, and
    // nothing is attached.
    let net = vm.network().unwrap();
    let err = net
        .attach_nic(&nic("bad", "nosuchtap", &ns, HOT_MAC, HOT_MTU))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nosuchtap") && err.contains(&ns.name), "{err}");
    assert_eq!(net.attached_nics().len(), 1);

    // Hot-plug: the guest sees it with its MAC and MTU; QEMU holds the tap.
    assert!(
        ns.link("ctap1").contains("NO-CARRIER"),
        "{}",
        ns.link("ctap1")
    );
    let hot = nic("hot", "ctap1", &ns, HOT_MAC, HOT_MTU);
    rolled_back_after_device_add_fails(&t, &mut vm, &ns, &hot).await;
    let net = vm.network().unwrap();
    let address = net.attach_nic(&hot).await.expect("attach the NIC");
    assert_ne!(address, cold[0].address);
    let line = guest_line(&t, "added", &format!("mac={HOT_MAC}")).await;
    assert!(line.contains(&format!("mtu={HOT_MTU} ")), "{line}");
    let GuestAddress::Pci { slots } = &address else {
        panic!("{address:?}")
    };
    assert_eq!(&slots_of(line.split("path=").nth(1).unwrap()), slots);
    let name = line.split_whitespace().nth(2).unwrap().to_string();
    assert!(
        ns.link("ctap1").contains("LOWER_UP"),
        "{}",
        ns.link("ctap1")
    );
    assert!(peripherals(&t).await.contains("net-hot"));

    // Detach: gone from the guest, from QEMU, and QEMU closed the tap.
    let net = vm.network().unwrap();
    net.detach_nic("hot").await.expect("detach the NIC");
    guest_line(&t, "removed", &name).await;
    assert!(!peripherals(&t).await.contains("net-hot"));
    assert!(
        ns.link("ctap1").contains("NO-CARRIER"),
        "{}",
        ns.link("ctap1")
    );
    assert_eq!(net.attached_nics(), cold);
    let err = net.detach_nic("hot").await.unwrap_err().to_string();
    assert!(err.contains("hot") && err.contains("no NIC"), "{err}");

    std::fs::write(t.shared().join("stop"), "").unwrap();
    let exited = vm.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(exited, "guest did not power off; console:\n{}", t.console());
    vm.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    assert_all_gone(&t);
    assert!(
        ns.link("ctap0").contains("NO-CARRIER"),
        "the cold tap stays open"
    );
}

/// Machines without root ports have no NICs: said at start and by
/// `network()`, naming the machine.
#[tokio::test]
async fn microvm_has_no_nics() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut cfg = t.config("microvm", &common::initrd::hang());
    cfg.nics = vec![NetDevice {
        id: "n".into(),
        tap: "t".into(),
        netns: None,
        mac: MacAddr([2, 0, 0, 0, 0, 1]),
        mtu: 0,
        vhost: false,
    }];
    let mut vm = QemuVm::new(cfg);
    let err = vm.start().await.unwrap_err().to_string();
    assert!(err.contains("NICs") && err.contains("microvm"), "{err}");
    let err = vm.network().err().expect("no NIC hot-plug").to_string();
    assert!(
        err.contains("NIC hot-plug") && err.contains("microvm"),
        "{err}"
    );
    assert_all_gone(&t);
}

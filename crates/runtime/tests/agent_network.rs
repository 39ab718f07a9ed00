//! The agent's network methods against a real VM: a `dummy` link (the
//! module appended to the test's initrd, loaded by CreateSandbox's
//! `kernel_modules`) is found by its MAC, renamed, given an MTU and an
//! address and brought up; routes and a permanent neighbour are set; a
//! container (which shares the VM's network) sees them with busybox `ip`.
//! Loading a module needs a kernel that loads modules: the test boots
//! Debian's kernel of the assets (`<assets>/debian`), not capsa's own.

use std::io::Write;
use std::path::{Path, PathBuf};

use capsa_agent_client::until;
use capsa_protocols::{agent, types};
use capsa_test_infra::{assert_no_leaks, assets_dir, TestEnv};

mod common;
mod guest_common;

use common::boot;
use guest_common::{run, status, CALL};

/// IFF_UP.
const UP: u32 = 1;

/// `dummy.ko` of the test kernel (the assets' unpacked kernel package).
fn dummy_module(assets: &Path) -> (String, PathBuf) {
    let cache = assets.join("cache");
    for pkg in std::fs::read_dir(&cache).expect("assets cache").flatten() {
        let modules = pkg.path().join("root/lib/modules");
        let Ok(versions) = std::fs::read_dir(&modules) else {
            continue;
        };
        for v in versions.flatten() {
            let ko = v.path().join("kernel/drivers/net/dummy.ko");
            if ko.is_file() {
                return (v.file_name().to_string_lossy().into_owned(), ko);
            }
        }
    }
    panic!("no dummy.ko under {}", cache.display());
}

/// The assets' initrd with `dummy.ko` in an uncompressed cpio archive put
/// in front of it (the kernel unpacks both; the assets' LZ4 archive has no
/// end mark, so nothing can follow it).
fn initrd_with_dummy(out: &Path) -> PathBuf {
    let assets = assets_dir();
    let (version, ko) = dummy_module(&assets);
    let data = std::fs::read(&ko).unwrap();
    let mut cpio = Vec::new();
    // The kernel makes no missing parent: the archive has them.
    for dir in [
        "lib".to_string(),
        "lib/modules".into(),
        format!("lib/modules/{version}"),
    ] {
        cpio::NewcBuilder::new(&dir)
            .mode(0o40755)
            .nlink(2)
            .write(&mut cpio, 0)
            .finish()
            .unwrap();
    }
    let path = format!("lib/modules/{version}/dummy.ko");
    let mut w = cpio::NewcBuilder::new(&path)
        .mode(0o100644)
        .nlink(1)
        .write(&mut cpio, data.len() as u32);
    w.write_all(&data).unwrap();
    w.finish().unwrap();
    cpio::newc::trailer(&mut cpio).unwrap();
    // The trailer is padded to 4 bytes, where the next archive may start.
    cpio.extend(std::fs::read(assets.join("debian/initrd.img")).unwrap());
    let initrd = out.join("initrd-dummy.img");
    std::fs::write(&initrd, cpio).unwrap();
    initrd
}

fn ip(address: &str, mask: &str) -> types::IPAddress {
    types::IPAddress {
        address: address.into(),
        mask: mask.into(),
        ..Default::default()
    }
}

fn route(dest: &str, gateway: &str, device: &str) -> types::Route {
    types::Route {
        dest: dest.into(),
        gateway: gateway.into(),
        device: device.into(),
        ..Default::default()
    }
}

fn has_route(routes: &[types::Route], dest: &str, gateway: &str, device: &str) -> bool {
    routes
        .iter()
        .any(|r| r.dest == dest && r.gateway == gateway && r.device == device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interfaces_routes_and_neighbours_reach_the_guest() {
    // The guest needs the dummy module, added to a copy of the initrd:
    // this test boots the initrd also when the suite runs on the image.
    let env = TestEnv::with_initrd();
    let initrd = initrd_with_dummy(env.dir.path());
    let config = std::fs::read_to_string(&env.config).unwrap();
    let base = format!("{:?}", assets_dir().join("initrd.img"));
    assert!(config.contains(&base), "{config}");
    let kernel = format!("{:?}", assets_dir().join("vmlinuz"));
    let debian_kernel = format!("{:?}", assets_dir().join("debian/vmlinuz"));
    let config = config
        .replace(&base, &format!("{initrd:?}"))
        .replace(&kernel, &debian_kernel);
    std::fs::write(&env.config, config).unwrap();
    env.append_config("[agent.capsa]\nkernel_modules = [\"dummy\"]\n");
    let mut sandbox = boot(&env).await;
    let raw = sandbox.agent().raw().clone();

    let listed = raw
        .list_interfaces(until(CALL), &agent::ListInterfacesRequest::default())
        .await
        .expect("ListInterfaces");
    let lo = listed
        .Interfaces
        .iter()
        .find(|i| i.name == "lo")
        .expect("lo");
    assert_ne!(lo.raw_flags & UP, 0, "loopback is up: {lo:?}");
    let dummy = listed
        .Interfaces
        .iter()
        .find(|i| i.type_ == "dummy")
        .unwrap_or_else(|| panic!("a dummy link in {:?}", listed.Interfaces))
        .clone();
    assert_eq!(dummy.hwAddr.len(), 17, "{dummy:?}");

    let mut wanted = types::Interface {
        name: "eth7".into(),
        hwAddr: dummy.hwAddr.to_uppercase(),
        mtu: 1400,
        IPAddresses: vec![ip("10.77.0.2", "24")],
        ..Default::default()
    };
    let updated = raw
        .update_interface(
            until(CALL),
            &agent::UpdateInterfaceRequest {
                interface: Some(wanted.clone()).into(),
                ..Default::default()
            },
        )
        .await
        .expect("UpdateInterface");
    assert_eq!(updated.name, "eth7");
    assert_eq!(updated.mtu, 1400);
    assert_eq!(updated.hwAddr, dummy.hwAddr);
    assert_ne!(updated.raw_flags & UP, 0, "{updated:?}");
    let addrs: Vec<_> = updated
        .IPAddresses
        .iter()
        .filter(|a| !a.address.starts_with("fe80:"))
        .map(|a| format!("{}/{}", a.address, a.mask))
        .collect();
    assert_eq!(addrs, vec!["10.77.0.2/24"]);

    // Addresses are replaced, not added to.
    wanted.IPAddresses = vec![ip("10.77.0.3", "255.255.255.0")];
    let updated = raw
        .update_interface(
            until(CALL),
            &agent::UpdateInterfaceRequest {
                interface: Some(wanted).into(),
                ..Default::default()
            },
        )
        .await
        .expect("UpdateInterface again");
    // The kernel's IPv6 link-local address comes back with the link.
    let addrs: Vec<_> = updated
        .IPAddresses
        .iter()
        .map(|a| &a.address)
        .filter(|a| !a.starts_with("fe80:"))
        .collect();
    assert_eq!(addrs, vec!["10.77.0.3"]);

    let routes = |list: Vec<types::Route>| agent::UpdateRoutesRequest {
        routes: Some(agent::Routes {
            Routes: list,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let mut via = route("10.88.0.0/16", "10.77.0.1", "eth7");
    via.mtu = 1300;
    let set = raw
        .update_routes(
            until(CALL),
            &routes(vec![route("", "10.77.0.1", "eth7"), via]),
        )
        .await
        .expect("UpdateRoutes");
    assert!(has_route(&set.Routes, "", "10.77.0.1", "eth7"), "{set:?}");
    assert!(has_route(&set.Routes, "10.88.0.0/16", "10.77.0.1", "eth7"));
    assert!(set
        .Routes
        .iter()
        .any(|r| r.dest == "10.88.0.0/16" && r.mtu == 1300));
    let listed = raw
        .list_routes(until(CALL), &agent::ListRoutesRequest::default())
        .await
        .expect("ListRoutes");
    assert!(
        has_route(&listed.Routes, "", "10.77.0.1", "eth7"),
        "{listed:?}"
    );
    // The kernel's route of the address stays.
    assert!(has_route(&listed.Routes, "10.77.0.0/24", "", "eth7"));

    raw.add_arp_neighbors(
        until(CALL),
        &agent::AddARPNeighborsRequest {
            neighbors: Some(agent::ARPNeighbors {
                ARPNeighbors: vec![types::ARPNeighbor {
                    toIPAddress: Some(ip("10.77.0.9", "")).into(),
                    device: "eth7".into(),
                    lladdr: "02:00:00:00:00:09".into(),
                    state: 0x80,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        },
    )
    .await
    .expect("AddARPNeighbors");

    let (out, code) = run(
        &mut sandbox,
        &env,
        "net",
        "ip link show eth7; ip addr show eth7; ip route; ip neigh",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("mtu 1400"), "{out}");
    assert!(out.contains("inet 10.77.0.3/24"), "{out}");
    assert!(out.contains("default via 10.77.0.1 dev eth7"), "{out}");
    assert!(out.contains("10.88.0.0/16 via 10.77.0.1 dev eth7"), "{out}");
    assert!(
        out.lines().any(
            |l| l.starts_with("10.77.0.9 dev eth7 lladdr 02:00:00:00:00:09")
                && l.trim_end().ends_with("PERMANENT")
        ),
        "{out}"
    );

    // The list replaces the managed routes: the default route goes.
    let set = raw
        .update_routes(
            until(CALL),
            &routes(vec![route("10.88.0.0/16", "10.77.0.1", "eth7")]),
        )
        .await
        .expect("UpdateRoutes again");
    assert!(!set.Routes.iter().any(|r| r.dest.is_empty()), "{set:?}");
    assert!(has_route(&set.Routes, "10.77.0.0/24", "", "eth7"));

    // Bad requests are refused, naming the input.
    let unknown = raw
        .update_interface(
            until(CALL),
            &agent::UpdateInterfaceRequest {
                interface: Some(types::Interface {
                    hwAddr: "02:de:ad:be:ef:01".into(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            },
        )
        .await;
    let s = status(unknown);
    assert_eq!(s.code(), ttrpc::Code::NOT_FOUND, "{s:?}");
    assert!(s.message.contains("02:de:ad:be:ef:01"), "{s:?}");
    // A NIC named by its PCI path (hot-plugged) is waited for, bounded.
    let late = raw
        .update_interface(
            until(CALL),
            &agent::UpdateInterfaceRequest {
                interface: Some(types::Interface {
                    hwAddr: "02:de:ad:be:ef:02".into(),
                    devicePath: "02/00".into(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            },
        )
        .await;
    let s = status(late);
    assert_eq!(s.code(), ttrpc::Code::NOT_FOUND, "{s:?}");
    assert!(
        s.message.contains("02:de:ad:be:ef:02 (waited 10s)"),
        "{s:?}"
    );
    let bad = raw
        .update_routes(
            until(CALL),
            &routes(vec![route("10.9.0.0/16", "", "nosuch0")]),
        )
        .await;
    let s = status(bad);
    assert_eq!(s.code(), ttrpc::Code::NOT_FOUND, "{s:?}");
    assert!(s.message.contains("nosuch0"), "{s:?}");

    sandbox.destroy().await.expect("destroy");
    assert_no_leaks(&env.state_dir);
}

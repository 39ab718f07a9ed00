//! A sandbox joins a pod network namespace (made here like CNI makes one):
//! the VM gets a NIC with the veth's MAC and MTU, the agent gives it the
//! veth's addresses and routes, the host reaches the guest through the
//! veth, a link that appears later is hot-plugged by a rescan, and the
//! teardown (also of a sandbox whose owner died) leaves the netns as CNI
//! made it. Needs root.

use std::process::Command;
use std::time::{Duration, Instant};

use capsa_runtime::record::SandboxRecord;
use capsa_runtime::resource::network::{self, Model};
use capsa_runtime::state::StateDir;
use capsa_runtime::{PodNetwork, ProcessSpec, Sandbox, VmSize};
use capsa_test_infra::netns::{PodNetns, MAC, MTU};
use capsa_test_infra::{assert_no_leaks, TestEnv};

mod common;
use common::read_all;

/// Whether the host gets an ICMP echo reply from `ip` within `bound`
/// (busybox `ping`, one probe of at most 2 s at a time).
fn pings(ip: &str, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        let ok = Command::new("busybox")
            .args(["ping", "-c", "1", "-W", "2", ip])
            .output()
            .expect("busybox ping")
            .status
            .success();
        if ok {
            return true;
        }
    }
    false
}

fn capsa_taps(f: &PodNetns) -> Vec<String> {
    f.in_ns(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .filter(|n| network::is_tap_name(n.split('@').next().unwrap_or(n)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_gets_the_pods_links_and_leaves_the_netns_as_it_was() {
    let env = TestEnv::new();
    let f = PodNetns::new();
    // A permanent neighbour is copied; a stale one is not.
    let neigh_ip = format!("10.213.{}.9", f.subnet);
    let stale_ip = format!("10.213.{}.10", f.subnet);
    let neigh_mac = "02:ca:95:00:00:09";
    let ns_ip = |args: &[&str]| {
        let mut all = vec!["ip", "-n", f.ns.as_str()];
        all.extend_from_slice(args);
        capsa_test_infra::netns::run(&all)
    };
    ns_ip(&[
        "neigh",
        "add",
        &neigh_ip,
        "lladdr",
        neigh_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    ns_ip(&[
        "neigh",
        "add",
        &stale_ip,
        "lladdr",
        "02:ca:95:00:00:0a",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let before = f.snapshot();
    let (config, _) = capsa_runtime::load_config(Some(&env.config)).expect("config");
    let net = PodNetwork {
        netns: Some(f.netns()),
        dns: vec!["nameserver 192.0.2.53".into(), "search capsa.test".into()],
    };
    let mut sandbox = Sandbox::start_named(&config, "netpod", VmSize::default(), &net)
        .await
        .expect("sandbox start");
    assert_eq!(sandbox.record().netns.as_deref(), Some(f.netns().as_path()));
    assert_eq!(capsa_taps(&f), ["tap0_capsa"]);

    let ifaces = sandbox
        .agent()
        .list_interfaces()
        .await
        .expect("ListInterfaces");
    let eth0 = ifaces
        .iter()
        .find(|i| i.name == "eth0")
        .unwrap_or_else(|| panic!("no eth0 in the guest: {ifaces:?}"));
    assert_eq!(eth0.hwAddr, MAC);
    assert_eq!(eth0.mtu, u64::from(MTU));
    let addrs: Vec<_> = eth0
        .IPAddresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.mask))
        .collect();
    assert!(addrs.contains(&format!("{}/24", f.pod_ip())), "{addrs:?}");
    let routes = sandbox.agent().list_routes().await.expect("ListRoutes");
    assert!(
        routes
            .iter()
            .any(|r| r.dest.is_empty() && r.gateway == f.host_ip() && r.device == "eth0"),
        "no default route via {} in {routes:?}",
        f.host_ip()
    );
    // What a container sees: the pod's interface and neighbours.
    let root = sandbox
        .share_rootfs("c1", &env.rootfs)
        .expect("share rootfs");
    let process = ProcessSpec {
        args: vec![
            "sh".into(),
            "-c".into(),
            "cat /proc/net/arp; ip -o addr show eth0".into(),
        ],
        ..Default::default()
    };
    let spec = capsa_runtime::spec::build(&process, &root, "netpod").unwrap();
    sandbox
        .create_container_spec("c1", &spec)
        .await
        .expect("create");
    sandbox.agent().start_container("c1").await.expect("start");
    let out = read_all(&sandbox, "c1", "c1").await;
    assert_eq!(
        sandbox
            .agent()
            .wait_process("c1", "c1")
            .await
            .expect("wait"),
        0
    );
    sandbox.remove_container("c1").await.expect("remove");
    let arp: Vec<&str> = out.lines().filter(|l| l.starts_with("10.")).collect();
    assert!(
        arp.iter().any(|l| l.starts_with(&format!("{neigh_ip} "))
            && l.contains(neigh_mac)
            && l.contains("0x6")),
        "no permanent neighbour {neigh_ip} in the container's ARP table:\n{out}"
    );
    assert!(
        !out.contains(&stale_ip),
        "a stale neighbour was copied:\n{out}"
    );
    assert!(out.contains(&format!("inet {}/24", f.pod_ip())), "{out}");

    assert!(
        pings(&f.pod_ip(), Duration::from_secs(60)),
        "the host does not reach the guest at {}",
        f.pod_ip()
    );

    // A link that appears later: a rescan hot-plugs a NIC for it.
    let mac1 = "02:ca:95:00:01:02";
    let ip1 = f.add_veth("eth1", mac1);
    let new = sandbox.rescan_network().await.expect("rescan");
    assert_eq!(new, ["eth1"]);
    assert_eq!(
        sandbox.rescan_network().await.expect("second rescan"),
        Vec::<String>::new()
    );
    let ifaces = sandbox
        .agent()
        .list_interfaces()
        .await
        .expect("ListInterfaces");
    let eth1 = ifaces
        .iter()
        .find(|i| i.name == "eth1")
        .unwrap_or_else(|| panic!("no eth1 in the guest: {ifaces:?}"));
    assert_eq!(eth1.hwAddr, mac1);
    assert!(
        eth1.IPAddresses.iter().any(|a| a.address == ip1),
        "{eth1:?}"
    );
    assert_eq!(sandbox.record().network.len(), 2);

    sandbox.destroy().await.expect("destroy");
    assert!(capsa_taps(&f).is_empty(), "{:?}", capsa_taps(&f));
    let after = f.snapshot();
    // eth1 (and its peer) came after `before`, and the kernel adds the
    // local route of eth0's IPv6 link-local address once its duplicate
    // address detection ends: the rest is as it was.
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("eth1") && !l.contains("fe80::"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&after), strip(&before));
    assert_no_leaks(&env.state_dir);
}

/// The owner of a sandbox died (SIGKILL): the next collection of stale
/// state removes the taps and filters its record says it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_taps_go_with_its_stale_state() {
    let root = tempfile::tempdir().unwrap();
    let f = PodNetns::new();
    let before = f.snapshot();
    let endpoints = network::setup(&f.netns(), Model::TcFilter)
        .await
        .expect("setup");
    assert_eq!(endpoints.len(), 1);

    let dir = StateDir::create(root.path(), "dead").expect("state dir");
    let mut record = SandboxRecord::new("dead", dir.path());
    record.netns = Some(f.netns());
    record.network = endpoints;
    record.save(dir.path()).unwrap();
    // An owner that is gone: a child that exited and was reaped.
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    std::fs::write(dir.path().join("owner.pid"), child.id().to_string()).unwrap();

    assert_eq!(StateDir::collect_stale(root.path()), ["dead"]);
    assert!(capsa_taps(&f).is_empty(), "{:?}", capsa_taps(&f));
    assert_eq!(f.snapshot(), before);
}

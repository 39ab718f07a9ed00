//! Host-side network endpoints (`tcfilter`) on a real network namespace
//! made with `ip netns`: a veth with an address and a route gets a tap with
//! its MTU and ingress redirects both ways; frames really cross between
//! them; teardown leaves the netns as it was. Needs root.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use capsa_runtime::resource::network::{self, Model, NetworkError};
use capsa_test_infra::netns::{PodNetns as Fixture, MAC, MTU};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

fn rx_packets(dev: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/rx_packets"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Reads frames from the tap until one is an ARP request for `target`,
/// within `bound`, calling `poke` before each wait. The tap has `IFF_VNET_HDR`: a 10-byte virtio-net
/// header before each frame.
fn wait_for_arp(tap: &OwnedFd, target: [u8; 4], bound: Duration, poke: impl Fn()) -> bool {
    let mut file = std::fs::File::from(tap.try_clone().unwrap());
    let deadline = Instant::now() + bound;
    let mut buf = [0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
        poke();
        let ms = u16::try_from(left.as_millis().min(500)).unwrap();
        if poll(&mut fds, PollTimeout::from(ms)).unwrap() == 0 {
            continue;
        }
        let n = file.read(&mut buf).unwrap();
        let frame = &buf[10.min(n)..n];
        // Ethernet type ARP, then the ARP body: target IP at 24..28.
        if frame.len() >= 42 && frame[12..14] == [0x08, 0x06] && frame[14 + 24..14 + 28] == target {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcfilter_mirrors_a_veth_and_teardown_restores_the_netns() {
    let f = Fixture::new();
    let before = f.snapshot();

    let endpoints = network::setup(&f.netns(), Model::TcFilter)
        .await
        .expect("setup");

    // Only eth0: lo is loopback, bare0 and bare1 have no address.
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let ep = &endpoints[0];
    assert_eq!(ep.name, "eth0");
    assert_eq!(ep.mac, MAC);
    assert_eq!(ep.mtu, MTU);
    assert_eq!(ep.tap, "tap0_capsa");
    assert_eq!(ep.netns, f.netns());
    assert_eq!(ep.addresses.len(), 1, "{:?}", ep.addresses);
    assert_eq!(ep.addresses[0].addr.to_string(), f.pod_ip());
    assert_eq!(ep.addresses[0].prefix_len, 24);
    // The default route is copied; the subnet's `proto kernel` one is not.
    assert_eq!(ep.routes.len(), 1, "{:?}", ep.routes);
    assert_eq!(ep.routes[0].dest, None);
    assert_eq!(
        ep.routes[0].gateway.map(|g| g.to_string()),
        Some(f.host_ip())
    );

    // The tap: in the netns, up, with the veth's MTU.
    let tap = f.in_ns(&["ip", "-d", "-o", "link", "show", "tap0_capsa"]);
    assert!(tap.contains(&format!("mtu {MTU}")), "{tap}");
    assert!(tap.contains("tun type tap"), "{tap}");
    assert!(tap.contains(",UP"), "{tap}");
    // The veth kept its address.
    let addr = f.in_ns(&["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&f.pod_ip()), "{addr}");

    // An ingress qdisc on both, each redirecting to the other.
    for (dev, to) in [("eth0", "tap0_capsa"), ("tap0_capsa", "eth0")] {
        let qdiscs = f.in_ns(&["tc", "qdisc", "show", "dev", dev]);
        assert!(qdiscs.contains("qdisc ingress ffff:"), "{dev}: {qdiscs}");
        let filters = f.in_ns(&["tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(filters.contains("protocol all"), "{dev}: {filters}");
        assert!(filters.contains("u32"), "{dev}: {filters}");
        assert!(
            filters.contains(&format!("mirred (Egress Redirect to device {to})")),
            "{dev}: {filters}"
        );
    }

    // Traffic crosses, both ways. Host -> veth -> tap: the host's ARP
    // request for the pod's IP comes out of the tap.
    let tap_fd = network::open_tap(ep).await.expect("open tap");
    // A datagram to the pod's IP makes the host ask for its MAC; sent
    // again on each quiet half second (ARP gives up after 3 tries).
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let pod: std::net::Ipv4Addr = f.pod_ip().parse().unwrap();
    let poke = || {
        let _ = udp.send_to(b"capsa", (pod, 9));
    };
    let seen = wait_for_arp(&tap_fd, pod.octets(), Duration::from_secs(30), poke);
    assert!(
        seen,
        "no ARP request for {} came out of the tap\n{}\n{}",
        f.pod_ip(),
        f.in_ns(&["tc", "-s", "filter", "show", "dev", "eth0", "ingress"]),
        f.in_ns(&["ip", "-s", "link", "show", "tap0_capsa"])
    );
    // Tap -> veth -> host: a frame written to the tap reaches the host end.
    let rx = rx_packets(&f.host);
    let mut frame = vec![0u8; 10]; // virtio-net header: no offloads
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x02, 0xca, 0x95, 0, 0, 2]);
    frame.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    frame.extend_from_slice(&[0u8; 46]);
    std::fs::File::from(tap_fd.try_clone().unwrap())
        .write_all(&frame)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx_packets(&f.host) == rx && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(
        rx_packets(&f.host) > rx,
        "the frame written to the tap did not reach {}",
        f.host
    );
    drop(tap_fd);

    let removed = network::teardown(&f.netns()).await.expect("teardown");
    assert_eq!(removed, vec!["tap0_capsa".to_string()]);
    assert_eq!(f.snapshot(), before, "teardown changed the netns");
    // Again: nothing left to do.
    assert!(network::teardown(&f.netns()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_ingress_qdisc_is_refused_and_nothing_is_left() {
    let f = Fixture::new();
    f.in_ns(&["tc", "qdisc", "add", "dev", "eth0", "ingress"]);
    let before = f.snapshot();
    let err = network::setup(&f.netns(), Model::TcFilter)
        .await
        .expect_err("setup over a foreign ingress qdisc");
    assert!(matches!(err, NetworkError::IngressTaken { .. }), "{err}");
    assert!(err.to_string().contains("eth0"), "{err}");
    assert_eq!(f.snapshot(), before);
    // Teardown leaves a qdisc that does not redirect to a tap of capsa's.
    assert!(network::teardown(&f.netns()).await.unwrap().is_empty());
    assert_eq!(f.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_gives_no_endpoint_and_macvtap_is_named_unsupported() {
    let f = Fixture::new();
    let before = f.snapshot();
    assert!(network::setup(&f.netns(), Model::None)
        .await
        .unwrap()
        .is_empty());
    let err = network::setup(&f.netns(), Model::MacVtap)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("macvtap"), "{err}");
    assert_eq!(f.snapshot(), before);
    let err = network::setup(&f.netns().with_extension("missing"), Model::TcFilter)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_mirrors_only_the_link_that_appeared() {
    let f = Fixture::new();
    let before = f.snapshot();
    let first = network::setup(&f.netns(), Model::TcFilter).await.unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let eth0_filters = f.in_ns(&["tc", "filter", "show", "dev", "eth0", "ingress"]);

    // A link that CNI (or a later plugin) adds after the first set-up.
    f.in_ns(&[
        "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "peer1",
    ]);
    f.in_ns(&["ip", "addr", "add", "10.214.0.2/24", "dev", "eth1"]);
    f.in_ns(&["ip", "link", "set", "eth1", "up"]);
    let second = network::setup(&f.netns(), Model::TcFilter).await.unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].name, "eth1");
    assert_eq!(second[0].tap, "tap1_capsa");
    assert_eq!(
        f.in_ns(&["tc", "filter", "show", "dev", "eth0", "ingress"]),
        eth0_filters,
        "the rescan touched eth0"
    );
    let filters = f.in_ns(&["tc", "filter", "show", "dev", "eth1", "ingress"]);
    assert!(filters.contains("to device tap1_capsa"), "{filters}");

    let mut removed = network::teardown(&f.netns()).await.unwrap();
    removed.sort();
    assert_eq!(removed, ["tap0_capsa", "tap1_capsa"]);
    f.in_ns(&["ip", "link", "del", "eth1"]);
    assert_eq!(f.snapshot(), before);
}

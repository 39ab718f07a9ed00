//! The pod-network harness (`Opts::cni`) proven with runc pods: real
//! containerd, real CNI plugins, real network namespaces and iptables.

use capsa_test_infra::containerd::cni::iptables_rules_of;
use capsa_test_infra::containerd::{tcp_port_mapping, Containerd, Opts};
use capsa_test_infra::net::{free_port, host_address, http_get, httpd_script, links_in, Greeter};
use k8s_cri::v1::DnsConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn runc_pods_get_the_network_and_dropping_the_instance_removes_it() {
    let c = Containerd::start(Opts {
        cni: true,
        ..Default::default()
    });
    let image = c.import_busybox();
    c.import_pause();
    let (bridge, name, gateway) = (c.cni().bridge(), c.cni().name(), c.cni().gateway());
    let subnet_prefix = format!("{}.", gateway.to_string().rsplit_once('.').unwrap().0);
    assert!(bridge.len() <= 15, "{bridge}");
    let conflist = std::fs::read_to_string(c.dir().join("cni/net.d/10-capsa-test.conflist"))
        .expect("conflist");
    assert!(conflist.contains(&c.cni().subnet()), "{conflist}");

    let cri = c.cri();
    let dns = DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["svc.test".into()],
        options: vec!["ndots:3".into()],
    };
    let host_port = free_port();
    let ports = vec![tcp_port_mapping(host_port, 80)];
    let a_config = cri.pod_config_with_network("a", Some(dns), ports);
    let a = cri.run_pod_with(a_config.clone(), "");
    let web_a = cri.create_container(
        &a,
        &a_config,
        "web",
        &image,
        &["sh", "-c", &httpd_script("hello-a")],
    );
    cri.start(&web_a);
    let b_config = cri.pod_config_with_network("b", None, vec![]);
    let b = cri.run_pod_with(b_config.clone(), "");
    let sleeper = cri.create_container(&b, &b_config, "sleep", &image, &["sleep", "1000"]);
    cri.start(&sleeper);

    let (ip_a, ip_b) = (cri.pod_ip(&a), cri.pod_ip(&b));
    assert!(ip_a.starts_with(&subnet_prefix), "{ip_a}");
    assert!(ip_b.starts_with(&subnet_prefix), "{ip_b}");
    assert_ne!(ip_a, ip_b);
    let ipam = c.dir().join("cni/ipam").join(&name);
    assert!(
        ipam.join(&ip_a).is_file(),
        "host-local has no record of {ip_a}"
    );
    assert!(Path::new("/sys/class/net").join(&bridge).exists());

    // The pod's link is the veth in the netns containerd made.
    let netns_a = cri.pod_netns(&a);
    let netns_b = cri.pod_netns(&b);
    assert!(netns_a.starts_with("/var/run/netns"), "{netns_a:?}");
    let eth0 = links_in(&netns_a)
        .into_iter()
        .find(|l| l.name == "eth0")
        .expect("eth0 in the pod's netns");
    let (out, err, code) = cri.exec_sync(&web_a, &["ip", "-o", "link", "show", "eth0"], LIMIT);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&eth0.mac), "{out} vs {eth0:?}");
    let (out, _, _) = cri.exec_sync(&web_a, &["ip", "route"], LIMIT);
    assert!(out.contains(&format!("default via {gateway}")), "{out}");

    // Host -> pod, pod -> pod, pod -> host's bridge address.
    let pod_a: SocketAddr = format!("{ip_a}:80").parse().unwrap();
    assert_eq!(http_get(pod_a, LIMIT), "hello-a\n");
    let url = format!("http://{ip_a}/");
    let (out, err, code) = cri.exec_sync(&sleeper, &["wget", "-q", "-O-", &url], LIMIT);
    assert_eq!((out.as_str(), code), ("hello-a\n", 0), "{err}");
    let greeter = Greeter::start(gateway.into(), "hello-from-host\n");
    let port = greeter.addr().port().to_string();
    let gw = gateway.to_string();
    let (out, err, code) = cri.exec_sync(&web_a, &["timeout", "20", "nc", &gw, &port], LIMIT);
    assert_eq!((out.as_str(), code), ("hello-from-host\n", 0), "{err}");

    // DNS config and the host port.
    let (out, _, _) = cri.exec_sync(&web_a, &["cat", "/etc/resolv.conf"], LIMIT);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["nameserver 10.0.0.10", "options ndots:3", "search svc.test"]
    );
    let through_host: SocketAddr = (host_address(), host_port).into();
    assert_eq!(http_get(through_host, LIMIT), "hello-a\n");
    assert!(!iptables_rules_of(&name).is_empty());

    // Pods left running: dropping the instance removes them and their
    // network, then the bridge and the rest of the host state.
    let dir = c.dir().to_path_buf();
    drop(cri);
    drop(c);
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
    let rules = iptables_rules_of(&name);
    assert!(rules.is_empty(), "iptables rules left: {rules:#?}");
    assert!(!netns_a.exists() && !netns_b.exists(), "netns left");
    assert!(!dir.exists(), "{} is left", dir.display());
}

#[test]
fn concurrent_instances_get_distinct_networks() {
    let opts = Opts {
        cni: true,
        ..Default::default()
    };
    let (one, two) = (Containerd::start(opts.clone()), Containerd::start(opts));
    assert_ne!(one.cni().subnet(), two.cni().subnet());
    assert_ne!(one.cni().bridge(), two.cni().bridge());
    assert_ne!(one.cni().name(), two.cni().name());
}

/// What a network's plugins leave when containerd could not remove its
/// pods (killed, wedged) is removed with the network: netns, rules, bridge.
#[test]
fn dropping_a_network_removes_what_its_pods_left() {
    use capsa_test_infra::containerd::CniNetwork;
    use std::process::Command;
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let net = CniNetwork::install(&d.join("bin"), &d.join("conf"), &d.join("ipam"));
    for p in ["bridge", "host-local", "portmap", "loopback"] {
        assert!(d.join("bin").join(p).is_file(), "{p} not linked");
    }
    let (bridge, name) = (net.bridge(), net.name());
    let prefix = net.gateway().to_string();
    let prefix = prefix.rsplit_once('.').unwrap().0;
    // As a pod the plugins set up and nobody tore down.
    let ns = format!("cni-capsa-leftover-{}", std::process::id());
    let chain = format!("CNI-capsa{}", std::process::id());
    let _guard = Leftovers {
        ns: ns.clone(),
        chain: chain.clone(),
        bridge: bridge.clone(),
    };
    run(&["ip", "link", "add", &bridge, "type", "bridge"]);
    run(&["ip", "netns", "add", &ns]);
    run(&[
        "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    let addr = format!("{prefix}.7/24");
    run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
    run(&["iptables", "-w", "-t", "nat", "-N", &chain]);
    let comment = format!("name: \"{name}\" id: \"leftover\"");
    let src = format!("{prefix}.7/32");
    run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        &src,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        &chain,
    ]);
    assert_eq!(net.netns_in_subnet().len(), 1);
    assert_eq!(iptables_rules_of(&name).len(), 1);

    drop(net);
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
    assert!(!Path::new("/var/run/netns").join(&ns).exists());
    assert!(iptables_rules_of(&name).is_empty());
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&out.stdout);
    assert!(!nat.contains(&chain), "chain {chain} left:\n{nat}");
}

/// Removes the fake leftovers if the test failed before the network did.
struct Leftovers {
    ns: String,
    chain: String,
    bridge: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        use std::process::Command;
        let quiet = |args: &[&str]| {
            let _ = Command::new(args[0]).args(&args[1..]).output();
        };
        quiet(&["ip", "netns", "delete", &self.ns]);
        quiet(&["ip", "link", "delete", &self.bridge]);
        let nat = Command::new("iptables-save").args(["-t", "nat"]).output();
        let nat = nat.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        for rule in nat.unwrap_or_default().lines() {
            if rule.starts_with("-A ") && rule.ends_with(&format!("-j {}", self.chain)) {
                let delete = format!("iptables -w -t nat -D {}", &rule[3..]);
                quiet(&["sh", "-c", &delete]);
            }
        }
        quiet(&["iptables", "-w", "-t", "nat", "-X", &self.chain]);
    }
}

//! The pod-network harness (`Opts::cni`) proven with runc pods: real
//! containerd, real CNI plugins, real network namespaces and iptables.

use capsa_test_infra::containerd::cni::iptables_rules_of;
use capsa_test_infra::containerd::{Containerd, Opts};
use capsa_test_infra::net::{host_address, http_get, links_in, Greeter};
use k8s_cri::v1::{DnsConfig, PortMapping, Protocol};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// busybox `httpd` serving `body` at `/` on port 80.
fn web(body: &str) -> Vec<String> {
    let script =
        format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www");
    vec!["sh".into(), "-c".into(), script]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A TCP port nobody on the host listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    l.local_addr().unwrap().port()
}

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
    let ports = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: host_port.into(),
        host_ip: String::new(),
    }];
    let a_config = cri.pod_config_with_network("a", Some(dns), ports);
    let a = cri.run_pod_with(a_config.clone(), "");
    let web_a = cri.create_container(&a, &a_config, "web", &image, &args(&web("hello-a")));
    cri.start(&web_a);
    let b_config = cri.pod_config_with_network("b", None, vec![]);
    let b = cri.run_pod_with(b_config.clone(), "");
    let sleeper = cri.create_container(&b, &b_config, "sleep", &image, &["sleep", "1000"]);
    cri.start(&sleeper);

    let (ip_a, ip_b) = (cri.pod_ip(&a), cri.pod_ip(&b));
    assert!(ip_a.starts_with(&subnet_prefix), "{ip_a}");
    assert!(ip_b.starts_with(&subnet_prefix), "{ip_b}");
    assert_ne!(ip_a, ip_b);
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

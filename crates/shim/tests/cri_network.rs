//! Pod networking through containerd's CRI with real CNI plugins (bridge,
//! host-local, portmap): a capsa pod gets the network CNI set up in its
//! netns, as a runc pod does, and gives back what capsa made.

mod common;

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_test_infra::containerd::cri_v1::{DnsConfig, PodSandboxConfig};
use capsa_test_infra::containerd::tcp_port_mapping;
use capsa_test_infra::containerd::Cri;
use capsa_test_infra::net::{
    free_port, host_address, http_get, httpd_script, ingress_tc_in, links_in, parse_links, Greeter,
    Link,
};
use common::{capsa, Setup};

/// One exec, or one HTTP exchange until it answers (guests under TCG are slow).
const LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` in container `id`; it must exit 0. Returns its output.
fn exec_ok(cri: &Cri, id: &str, cmd: &[&str]) -> String {
    let (out, err, code) = cri.exec_sync(id, cmd, LIMIT);
    assert_eq!(code, 0, "{cmd:?} in {id}: {out}{err}");
    out
}

/// A pod of `handler` ("capsa" or "" for runc) serving `body` over HTTP on
/// port 80; returns (pod id, container id).
fn web_pod(s: &Setup, cri: &Cri, config: PodSandboxConfig, handler: &str) -> (String, String) {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let pod = cri.run_pod_with(config.clone(), handler);
    let ctr = cri.create_container(
        &pod,
        &config,
        "web",
        &s.image,
        &["sh", "-c", &httpd_script(&name)],
    );
    cri.start(&ctr);
    (pod, ctr)
}

/// `wget http://IP/` from container `from` returns `body`.
fn assert_fetches(cri: &Cri, from: &str, ip: &str, body: &str) {
    let url = format!("http://{ip}/");
    let out = exec_ok(cri, from, &["wget", "-q", "-T", "30", "-O-", &url]);
    assert_eq!(out, format!("{body}\n"), "{from} fetching {url}");
}

/// An open handle on a network namespace: it outlives containerd's removal
/// of the netns file, so the test can still look inside afterwards.
struct HeldNetns(File);

impl HeldNetns {
    fn open(path: &Path) -> Self {
        Self(File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())))
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.0.as_raw_fd()
        ))
    }
}

/// Every JSON object below `v` (depth first).
fn objects(v: &serde_json::Value) -> Vec<&serde_json::Map<String, serde_json::Value>> {
    let mut out = Vec::new();
    match v {
        serde_json::Value::Object(m) => {
            out.push(m);
            m.values().for_each(|x| out.extend(objects(x)));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| out.extend(objects(x))),
        _ => {}
    }
    out
}

/// `capsa agent-ctl POD METHOD {}`'s reply as JSON.
fn agent_ctl(s: &Setup, pod: &str, method: &str) -> serde_json::Value {
    let out = capsa(s, &["agent-ctl", pod, method, "{}"], None);
    assert!(out.status.success(), "agent-ctl {method}: {out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("agent-ctl {method} printed no JSON ({e}): {out:?}"))
}

fn str_of<'a>(o: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> &'a str {
    o.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

#[test]
fn a_capsa_pod_gets_the_network_cni_gave_it() {
    let s = Setup::with_network();
    s.ctrd.import_pause();
    let cri = s.ctrd.cri();
    let gateway = s.ctrd.cni().gateway();
    let dns = DnsConfig {
        servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
        searches: vec!["svc.test".into(), "test".into()],
        options: vec!["ndots:3".into(), "timeout:2".into()],
    };
    let host_port = free_port();
    let ports = vec![tcp_port_mapping(host_port, 80)];
    let config = cri.pod_config_with_network("net1", Some(dns), ports);
    let (pod, web) = web_pod(&s, &cri, config, "capsa");
    let ip = cri.pod_ip(&pod);
    let netns = cri.pod_netns(&pod);
    let held = HeldNetns::open(&netns);

    // The guest's NIC: the veth's MAC and MTU, CNI's address, its route.
    let host_links = links_in(&netns);
    let veth = host_links
        .iter()
        .find(|l| l.name == "eth0")
        .unwrap_or_else(|| panic!("no eth0 in {}: {host_links:?}", netns.display()))
        .clone();
    assert!(
        host_links.iter().any(|l| l.name.ends_with("_capsa")),
        "no capsa tap next to the veth: {host_links:?}"
    );
    let guest_links = parse_links(&exec_ok(&cri, &web, &["ip", "-o", "link", "show"]));
    let nic: &Link = guest_links
        .iter()
        .find(|l| l.mac == veth.mac)
        .unwrap_or_else(|| panic!("no guest link with the veth's MAC {veth:?}: {guest_links:?}"));
    assert_eq!(nic.mtu, veth.mtu, "{nic:?} vs the veth {veth:?}");
    let addrs = exec_ok(&cri, &web, &["ip", "-o", "-4", "addr", "show", &nic.name]);
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    let routes = exec_ok(&cri, &web, &["ip", "route"]);
    assert!(
        routes.contains(&format!("default via {gateway} dev {}", nic.name)),
        "{routes}"
    );

    // Host -> pod, pod -> the host's bridge address.
    let pod_addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    assert_eq!(http_get(pod_addr, LIMIT), "net1\n");
    let greeter = Greeter::start(IpAddr::V4(gateway), "hello-from-host\n");
    let port = greeter.addr().port().to_string();
    let gw = gateway.to_string();
    let out = exec_ok(&cri, &web, &["timeout", "60", "nc", &gw, &port]);
    assert_eq!(out, "hello-from-host\n");

    // The pod's DNS configuration is the container's resolv.conf.
    let resolv = exec_ok(&cri, &web, &["cat", "/etc/resolv.conf"]);
    let mut lines: Vec<&str> = resolv.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "nameserver 10.0.0.10",
            "nameserver 10.0.0.11",
            "options ndots:3 timeout:2",
            "search svc.test test",
        ],
        "{resolv}"
    );

    // The host port reaches the pod (portmap's DNAT of the host's address).
    let through_host: SocketAddr = (host_address(), host_port).into();
    assert_eq!(http_get(through_host, LIMIT), "net1\n");

    // The agent reports what it set.
    let interfaces = agent_ctl(&s, &pod, "ListInterfaces");
    let iface = objects(&interfaces)
        .into_iter()
        .find(|o| str_of(o, "hwAddr").eq_ignore_ascii_case(&veth.mac))
        .unwrap_or_else(|| panic!("ListInterfaces has no {}: {interfaces}", veth.mac));
    assert_eq!(str_of(iface, "name"), nic.name, "{interfaces}");
    assert!(
        objects(&serde_json::Value::Object(iface.clone()))
            .iter()
            .any(|a| str_of(a, "address") == ip),
        "ListInterfaces lacks {ip}: {interfaces}"
    );
    let routes = agent_ctl(&s, &pod, "ListRoutes");
    let default = objects(&routes)
        .into_iter()
        .find(|r| str_of(r, "gateway") == gw)
        .unwrap_or_else(|| panic!("ListRoutes has no route via {gw}: {routes}"));
    assert!(
        ["", "default", "0.0.0.0/0"].contains(&str_of(default, "dest")),
        "{routes}"
    );
    assert_eq!(str_of(default, "device"), nic.name, "{routes}");

    let ipam = s.ctrd.dir().join("cni/ipam").join(s.ctrd.cni().name());
    assert!(ipam.join(&ip).is_file(), "host-local has no record of {ip}");

    // Stop: capsa's taps, qdiscs and filters are gone (the netns is held
    // open here: containerd removes its file on stop).
    drop(greeter);
    cri.stop_pod(&pod);
    let left = links_in(&held.path());
    assert!(
        !left.iter().any(|l| l.name.ends_with("_capsa")),
        "taps left after StopPodSandbox: {left:?}"
    );
    let tc = ingress_tc_in(&held.path());
    assert!(tc.is_empty(), "tc left after StopPodSandbox:\n{tc}");
    cri.remove_pod(&pod);
    drop(held);
    // Remove: containerd's veth, netns and IP allocation are gone too.
    assert!(!netns.exists(), "{} is left", netns.display());
    let brif = Path::new("/sys/class/net")
        .join(s.ctrd.cni().bridge())
        .join("brif");
    let ports: Vec<_> = std::fs::read_dir(&brif)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(ports.is_empty(), "veths left on the bridge: {ports:?}");
    assert!(!ipam.join(&ip).exists(), "{ip} is still allocated");
    assert!(cri.list_pods().is_empty());
    s.assert_all_gone();
}

#[test]
fn capsa_and_runc_pods_reach_each_other() {
    let s = Setup::with_network();
    s.ctrd.import_pause();
    let cri = s.ctrd.cri();
    let config = |name: &str| cri.pod_config_with_network(name, None, vec![]);
    let (c1, web1) = web_pod(&s, &cri, config("capsa1"), "capsa");
    let (c2, web2) = web_pod(&s, &cri, config("capsa2"), "capsa");
    let (r, webr) = web_pod(&s, &cri, config("runc1"), "");
    let (ip1, ip2, ipr) = (cri.pod_ip(&c1), cri.pod_ip(&c2), cri.pod_ip(&r));
    let netns: Vec<PathBuf> = [&c1, &c2, &r].map(|p| cri.pod_netns(p)).into();

    // capsa <-> capsa
    assert_fetches(&cri, &web2, &ip1, "capsa1");
    assert_fetches(&cri, &web1, &ip2, "capsa2");
    // capsa <-> runc
    assert_fetches(&cri, &web1, &ipr, "runc1");
    assert_fetches(&cri, &webr, &ip1, "capsa1");

    for pod in [&c1, &c2, &r] {
        cri.stop_pod(pod);
        cri.remove_pod(pod);
    }
    assert!(cri.list_pods().is_empty());
    s.assert_all_gone();
    for ns in netns {
        assert!(!ns.exists(), "{} is left", ns.display());
    }
}

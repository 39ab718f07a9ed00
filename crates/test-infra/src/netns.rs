//! A network namespace like the one CNI makes for a pod, made with `ip
//! netns` for tests: `eth0` is a veth (MAC, MTU, an address, a default
//! route) whose peer is in the host's netns with the gateway's address.
//! Needs root; removed on drop, whatever happened.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs a command that must succeed; returns its stdout.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A netns with `eth0` (a veth whose peer `host` is in the host's netns),
/// and a veth pair `bare0`/`bare1` with no address. Removed on drop, whatever happened.
pub struct PodNetns {
    pub ns: String,
    pub host: String,
    pub subnet: u32,
}

pub const MTU: u32 = 1400;
pub const MAC: &str = "02:ca:95:00:00:02";

impl PodNetns {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let f = PodNetns {
            ns: format!("capsa-net-{pid}-{n}"),
            host: format!("cvh{}{n}", pid % 100_000),
            subnet: 100 + (pid % 100) + n,
        };
        run(&["ip", "netns", "add", &f.ns]);
        run(&[
            "ip", "link", "add", &f.host, "type", "veth", "peer", "name", "eth0", "netns", &f.ns,
        ]);
        let ip = |args: &[&str]| {
            let mut all = vec!["ip", "-n", &f.ns];
            all.extend_from_slice(args);
            run(&all);
        };
        ip(&[
            "link",
            "set",
            "eth0",
            "address",
            MAC,
            "mtu",
            &MTU.to_string(),
            "up",
        ]);
        ip(&["addr", "add", &format!("{}/24", f.pod_ip()), "dev", "eth0"]);
        ip(&[
            "route",
            "add",
            "default",
            "via",
            &f.host_ip(),
            "dev",
            "eth0",
        ]);
        ip(&[
            "link", "add", "bare0", "type", "veth", "peer", "name", "bare1",
        ]);
        ip(&["link", "set", "bare0", "up"]);
        run(&["ip", "link", "set", &f.host, "mtu", &MTU.to_string(), "up"]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", f.host_ip()),
            "dev",
            &f.host,
        ]);
        f
    }

    /// Adds a veth `name` (peer `<name>p`, down, in the netns) with `mac`
    /// and the address `10.214.<subnet>.2/24`: a link that appears after
    /// the pod started.
    pub fn add_veth(&self, name: &str, mac: &str) -> String {
        let peer = format!("{name}p");
        let ip = format!("10.214.{}.2", self.subnet);
        let ns = |args: &[&str]| {
            let mut all = vec!["ip", "-n", &self.ns];
            all.extend_from_slice(args);
            run(&all);
        };
        ns(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
        ns(&["link", "set", name, "address", mac, "up"]);
        ns(&["addr", "add", &format!("{ip}/24"), "dev", name]);
        ip
    }

    pub fn netns(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.ns)
    }

    pub fn pod_ip(&self) -> String {
        format!("10.213.{}.2", self.subnet)
    }

    pub fn host_ip(&self) -> String {
        format!("10.213.{}.1", self.subnet)
    }

    pub fn in_ns(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// What the endpoints code may not change: links (name, MAC, MTU),
    /// addresses, routes, qdiscs and ingress filters.
    pub fn snapshot(&self) -> String {
        let mut out = String::new();
        for link in self.in_ns(&["ip", "-o", "link", "show"]).lines() {
            // Index, name, MTU and MAC; not the flags' carrier bits.
            let fields: Vec<&str> = link.split_whitespace().collect();
            let mtu = fields
                .iter()
                .position(|f| *f == "mtu")
                .map(|i| fields[i + 1]);
            let mac = fields
                .iter()
                .position(|f| f.starts_with("link/"))
                .map(|i| fields[i + 1]);
            out += &format!("{} {} {:?} {:?}\n", fields[0], fields[1], mtu, mac);
        }
        out += &self.in_ns(&["ip", "-br", "addr", "show"]);
        out += &self.in_ns(&["ip", "route", "show", "table", "all"]);
        out += &self.in_ns(&["tc", "qdisc", "show"]);
        for dev in ["eth0", "bare0"] {
            out += &self.in_ns(&["tc", "filter", "show", "dev", dev, "ingress"]);
        }
        out
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        // Deleting the netns deletes eth0 and so its peer; the explicit
        // delete covers a fixture that failed half-way.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

//! Pod networking for a test containerd: the CNI plugins of Debian's
//! `containernetworking-plugins` in its private bin dir and a conflist
//! (bridge + host-local + portmap) in its private conf dir.
//!
//! Each instance gets a subnet `10.200.N.0/24`, a bridge `capsa-tbN` and a
//! network named `capsa-test-N`. `N` is held by an exclusive `flock` on
//! `/run/capsa-test-cni/N.lock` for the instance's lifetime, so concurrent
//! test containerds (also of other test binaries) never share one; the
//! kernel drops the lock when the test process dies, and the next owner of
//! `N` first removes what a crashed owner left (bridge, iptables rules). A
//! subnet some other network of the host already routes (`capsa run
//! --network bridge`, a leftover) is skipped.
//!
//! The harness may use `ip`/`iptables`: it is test code, and it only
//! inspects and removes what the plugins made.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::cleanup::try_run;

/// The plugins linked into the instance's bin dir. `loopback` is not in the
/// conflist: containerd's CRI runs it on its own for the pod's `lo`.
pub const PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];
/// Where Debian installs them.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
/// Lock files of the subnet indexes in use.
pub const LOCK_DIR: &str = "/run/capsa-test-cni";
/// Test bridges are named `<BRIDGE_PREFIX><N>` (at most 11 characters).
pub const BRIDGE_PREFIX: &str = "capsa-tb";
/// Test networks are named `<NETWORK_PREFIX><N>`; the plugins' iptables
/// rules carry that name in their comments.
pub const NETWORK_PREFIX: &str = "capsa-test-";

/// One instance's CNI network; see the module documentation.
#[derive(Debug)]
pub struct CniNetwork {
    index: u8,
    _lock: Flock<File>,
}

impl CniNetwork {
    /// Picks a free subnet, links the plugins into `bin_dir` and writes the
    /// conflist into `conf_dir`, with host-local's data in `ipam_dir`.
    pub fn install(bin_dir: &Path, conf_dir: &Path, ipam_dir: &Path) -> Self {
        for p in PLUGINS {
            assert!(
                Path::new(PLUGIN_DIR).join(p).is_file(),
                "CNI plugin {PLUGIN_DIR}/{p} is missing: run `make deps`"
            );
        }
        let me = Self::claim();
        std::fs::create_dir_all(bin_dir).expect("CNI bin dir");
        std::fs::create_dir_all(conf_dir).expect("CNI conf dir");
        for p in PLUGINS {
            std::os::unix::fs::symlink(Path::new(PLUGIN_DIR).join(p), bin_dir.join(p))
                .expect("link a CNI plugin");
        }
        let conflist = conf_dir.join("10-capsa-test.conflist");
        std::fs::write(&conflist, me.conflist(ipam_dir)).expect("write the conflist");
        me
    }

    /// Locks the first index whose subnet no other network of the host uses.
    fn claim() -> Self {
        std::fs::create_dir_all(LOCK_DIR).expect("CNI lock dir");
        for index in 1..=254u8 {
            let path = Path::new(LOCK_DIR).join(format!("{index}.lock"));
            let file = File::create(&path).expect("CNI lock file");
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let me = Self { index, _lock: lock };
            // Nobody holds the index: what carries its names was left by a
            // crashed owner.
            let bridge_left = Path::new("/sys/class/net").join(me.bridge()).exists();
            if bridge_left || !iptables_rules_of(&me.name()).is_empty() {
                me.remove_host_state();
            }
            let net = u32::from(me.subnet_addr());
            let taken = routed_ipv4()
                .iter()
                .any(|(dst, mask)| (net & mask) == (dst & mask) || (dst & 0xffff_ff00) == net);
            if !taken {
                return me;
            }
        }
        panic!("no free test CNI subnet in 10.200.1-254.0/24 (see {LOCK_DIR})");
    }

    fn subnet_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.index, 0)
    }

    /// The pods' subnet, `10.200.N.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/24", self.subnet_addr())
    }

    /// The bridge's address, the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.index, 1)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}", self.index)
    }

    /// The network's name (in the conflist and the iptables comments).
    pub fn name(&self) -> String {
        format!("{NETWORK_PREFIX}{}", self.index)
    }

    fn conflist(&self, ipam_dir: &Path) -> String {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name(),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge(),
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": self.subnet(), "gateway": self.gateway().to_string() }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": ipam_dir,
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        serde_json::to_string_pretty(&conf).expect("conflist")
    }

    /// Network namespaces (`/var/run/netns/*`) with an address in this
    /// instance's subnet: its pods' (containerd makes them, CNI addresses
    /// them).
    pub fn netns_in_subnet(&self) -> Vec<PathBuf> {
        let prefix = format!("inet 10.200.{}.", self.index);
        let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                ip(&["-n", &name, "-o", "-4", "addr", "show"]).contains(&prefix)
            })
            .map(|e| e.path())
            .collect()
    }

    /// Removes what the plugins made for this network and containerd did not
    /// remove (its pods were not all removed, or a previous owner crashed):
    /// the netns of its subnet, its iptables rules and chains, the bridge.
    /// Bounded; says what it removed besides the bridge.
    pub fn remove_host_state(&self) {
        let mut removed = Vec::new();
        for ns in self.netns_in_subnet() {
            let name = ns.file_name().unwrap().to_string_lossy().into_owned();
            ip(&["netns", "delete", &name]);
            removed.push(format!("netns {name}"));
        }
        removed.extend(remove_iptables_rules(&self.name()));
        // CNI never deletes its bridge: removing it is the normal end.
        let bridge = self.bridge();
        if Path::new("/sys/class/net").join(&bridge).exists() {
            ip(&["link", "delete", &bridge]);
        }
        if !removed.is_empty() {
            eprintln!(
                "capsa-test-infra: removed leftovers of CNI network {}: {}",
                self.name(),
                removed.join(", ")
            );
        }
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        self.remove_host_state();
    }
}

/// `ip ARGS`'s standard output ("" on failure), bounded.
pub fn ip(args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    try_run(cmd, Duration::from_secs(10))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The IPv4 routes of the host's network namespace as (destination, mask),
/// host byte order, from `/proc/net/route`.
fn routed_ipv4() -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    // The kernel prints the address's bytes (network order) as a native u32.
    let addr = |s: &str| {
        let v = u32::from_str_radix(s, 16).ok()?;
        Some(u32::from_be_bytes(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dst, mask) = (addr(f.get(1)?)?, addr(f.get(7)?)?);
            // The default route overlaps everything: not a network's subnet.
            (mask != 0).then_some((dst, mask))
        })
        .collect()
}

/// Deletes the nat rules whose comment names network `name` (bridge's
/// ipMasq rules in POSTROUTING, portmap's in CNI-HOSTPORT-*), then the
/// per-pod chains they jumped to. Returns what it removed.
pub fn remove_iptables_rules(name: &str) -> Vec<String> {
    let mut removed = Vec::new();
    let mut chains = Vec::new();
    for rule in iptables_rules_of(name) {
        if let Some(target) = rule.rsplit_once(" -j ").map(|(_, t)| t.trim()) {
            if target.starts_with("CNI-") && !target.starts_with("CNI-HOSTPORT-") {
                chains.push(target.to_string());
            }
        }
        // iptables-save quotes like a shell: let one parse it back.
        let delete = format!("iptables -w -t nat -D {}", &rule[3..]);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &delete]);
        try_run(cmd, Duration::from_secs(20));
        removed.push(format!("iptables rule {rule}"));
    }
    chains.sort();
    chains.dedup();
    for chain in chains {
        for op in ["-F", "-X"] {
            let mut cmd = Command::new("iptables");
            cmd.args(["-w", "-t", "nat", op, &chain]);
            try_run(cmd, Duration::from_secs(20));
        }
        removed.push(format!("iptables chain {chain}"));
    }
    removed
}

/// The nat rules (`iptables-save` lines `-A ...`) whose comment names
/// network `name`.
pub fn iptables_rules_of(name: &str) -> Vec<String> {
    let needle = format!("name: \\\"{name}\\\"");
    let mut cmd = Command::new("iptables-save");
    cmd.args(["-t", "nat"]);
    let Some(out) = try_run(cmd, Duration::from_secs(20)) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(&needle))
        .map(String::from)
        .collect()
}

//! A private CNI network for a test: its own bridge, subnet and IPAM
//! directory (network name `capsa-test`, bridge + host-local + portmap
//! from /usr/lib/cni), and what the host holds for it. The bridge is
//! removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::netns::run as host;
use std::sync::atomic::{AtomicU32, Ordering};

/// The network name of every test list (`scripts/check-leaks.sh` looks
/// for rules naming it).
pub const NETWORK: &str = "capsa-test";

pub struct TestNetwork {
    pub bridge: String,
    /// `10.4.N`: tests use 10.4.10-89 (CLI) and 10.4.100-199 (runtime);
    /// the CRI tests 10.200.x.
    pub subnet: String,
    pub ipam_dir: PathBuf,
}

impl TestNetwork {
    /// A network whose IPAM data lives below `dir`; `first` is the first
    /// third octet of the range this test binary uses (80 wide).
    pub fn new(dir: &Path, prefix: &str, first: u32) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        Self {
            bridge: format!("{prefix}{}{n}", pid % 10_000),
            subnet: format!("10.4.{}", first + (pid + n) % 80),
            ipam_dir: dir.join("ipam"),
        }
    }

    /// The configuration list.
    pub fn conflist(&self) -> String {
        self.conflist_with_subnet(&format!("{}.0/24", self.subnet))
    }

    /// The configuration list with another subnet (a bad one, say).
    pub fn conflist_with_subnet(&self, subnet: &str) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": true,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "dataDir": self.ipam_dir,
                          "ranges": [[{"subnet": subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
        .to_string()
    }

    /// Addresses host-local holds for the network.
    pub fn allocations(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.ipam_dir.join(NETWORK)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// iptables rules (all tables) that name container `id`.
    pub fn rules(&self, id: &str) -> Vec<String> {
        host(&["iptables-save"])
            .lines()
            .filter(|l| l.contains(&format!("id: \\\"{id}\\\"")))
            .map(String::from)
            .collect()
    }

    /// The host-side veths on the bridge, as `ip -o link` lines.
    pub fn veths(&self) -> String {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// Fails the calling test, naming what is missing, unless CNI tests can
/// run here: root and the plugins (`make deps` installs them).
pub fn require() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it makes network namespaces, bridges and iptables rules)"
    );
    let bridge = Path::new("/usr/lib/cni/bridge");
    assert!(
        bridge.exists(),
        "{} is missing: `make deps` installs containernetworking-plugins",
        bridge.display()
    );
}

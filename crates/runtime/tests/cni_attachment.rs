//! The network of `capsa run --network bridge` without a VM: a netns made
//! by capsa, connected by the real CNI plugins (bridge, host-local,
//! portmap, loopback from /usr/lib/cni), then released: no netns, host
//! veth, IP allocation or iptables rule left. Each test has its own
//! bridge, subnet and IPAM directory. Needs root and the plugins.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use capsa_runtime::resource::network::attachment::{self, CniRequest};
use capsa_runtime::resource::network::cni::{Conflist, DEFAULT_PLUGIN_DIRS};

fn output(args: &[&str]) -> String {
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

fn plugins_present() -> bool {
    nix::unistd::geteuid().is_root() && Path::new("/usr/lib/cni/bridge").exists()
}

/// A private network: its own bridge, subnet and IPAM directory, and a
/// state directory for the sandbox. Released and the bridge removed on
/// drop, whatever happened.
struct Net {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    id: String,
    bridge: String,
    subnet: String,
}

impl Net {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tmp = tempfile::Builder::new()
            .prefix("capsa-test-cni-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("sandbox");
        std::fs::create_dir(&dir).unwrap();
        Net {
            dir,
            id: format!("cnitest-{pid}-{n}"),
            bridge: format!("capsat{}{n}", pid % 10_000),
            subnet: format!("10.4.{}", 100 + (pid + n) % 100),
            tmp,
        }
    }

    fn ipam_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }

    fn conflist(&self, subnet: &str) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "capsa-test",
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local", "dataDir": self.ipam_dir(),
                          "ranges": [[{"subnet": subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
        .to_string()
    }

    fn request(&self, subnet: &str, ports: &[&str]) -> CniRequest {
        CniRequest {
            conflist: Conflist::parse(&self.conflist(subnet), "test").unwrap(),
            origin: "test".into(),
            plugin_dirs: DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    fn netns(&self) -> PathBuf {
        self.dir.join(attachment::NETNS_FILE)
    }

    /// `ip` inside the netns.
    fn ip_in(&self, args: &[&str]) -> String {
        let net = format!("--net={}", self.netns().display());
        let mut all = vec!["nsenter", &net, "ip"];
        all.extend_from_slice(args);
        output(&all)
    }

    /// iptables rules (all tables) that name the container.
    fn rules(&self) -> Vec<String> {
        output(&["iptables-save"])
            .lines()
            .filter(|l| l.contains(&self.id))
            .map(String::from)
            .collect()
    }

    /// Addresses host-local holds in the IPAM directory.
    fn allocations(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.ipam_dir().join("capsa-test")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// The bridge's ports (host-side veths).
    fn bridge_ports(&self) -> String {
        output(&["ip", "-o", "link", "show", "master", &self.bridge])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = attachment::release(&self.dir) {
            eprintln!("release in cleanup: {e}");
            // The netns must not keep the temporary directory busy.
            let _ = nix::mount::umount2(&self.netns(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[test]
fn a_bridged_netns_is_made_connected_and_released_leaving_nothing() {
    if !plugins_present() {
        eprintln!("skipped: needs root and /usr/lib/cni");
        return;
    }
    let net = Net::new();
    let subnet = format!("{}.0/24", net.subnet);
    let att = attachment::attach(&net.dir, &net.id, &net.request(&subnet, &["18080:80"])).unwrap();

    // In the netns: eth0 with the address host-local gave, lo up, a
    // default route through the bridge's address.
    let address = att.address().expect("an address in the result");
    assert!(
        address.starts_with(&format!("{}.", net.subnet)),
        "{address}"
    );
    let addrs = net.ip_in(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&address), "{addrs}");
    let lo = net.ip_in(&["-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    let routes = net.ip_in(&["route", "show", "default"]);
    assert!(
        routes.contains(&format!("via {}.1", net.subnet)),
        "{routes}"
    );
    // On the host: a veth on the bridge, the allocation, the rules.
    assert!(
        net.bridge_ports().contains("veth"),
        "no veth on {}",
        net.bridge
    );
    assert_eq!(net.allocations(), [address.split('/').next().unwrap()]);
    let rules = net.rules();
    assert!(rules.iter().any(|r| r.contains("18080")), "{rules:?}");
    assert!(rules.iter().any(|r| r.contains("MASQUERADE")), "{rules:?}");
    // Recorded before release, and CHECK agrees with the netns.
    let recorded = attachment::load(&net.dir).unwrap().unwrap();
    assert_eq!(recorded, att);
    match attachment::check(&net.dir) {
        Ok(()) => {}
        // portmap 1.1.1 (Debian 12) checks an IPv6 chain it never made.
        Err(e) if e.to_string().contains("portmap") && e.to_string().contains("ipv6") => {
            eprintln!("CHECK: known portmap bug: {e}")
        }
        Err(e) => panic!("CHECK: {e}"),
    }

    assert!(attachment::release(&net.dir).unwrap());
    assert!(!net.netns().exists(), "netns file left");
    assert!(!net.dir.join(attachment::ATTACHMENT_FILE).exists());
    assert_eq!(net.bridge_ports().trim(), "", "host veth left");
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    assert!(net.rules().is_empty(), "{:?}", net.rules());
    assert!(
        !attachment::release(&net.dir).unwrap(),
        "a second release has nothing to do"
    );
}

#[test]
fn a_failing_plugin_is_named_with_its_error_and_nothing_is_left() {
    if !plugins_present() {
        eprintln!("skipped: needs root and /usr/lib/cni");
        return;
    }
    let net = Net::new();
    let err = attachment::attach(&net.dir, &net.id, &net.request("10.4.999.0/24", &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ADD") && err.contains("bridge"), "{err}");
    assert!(err.contains("10.4.999.0"), "the plugin's message: {err}");
    assert!(!net.netns().exists(), "netns file left");
    assert!(!net.dir.join(attachment::ATTACHMENT_FILE).exists());
    assert!(net.rules().is_empty(), "{:?}", net.rules());
}

#[test]
fn a_release_after_the_maker_died_finds_everything_in_the_record() {
    if !plugins_present() {
        eprintln!("skipped: needs root and /usr/lib/cni");
        return;
    }
    let net = Net::new();
    let subnet = format!("{}.0/24", net.subnet);
    // Made by a child process that is then SIGKILLed: all that is left
    // is the state directory.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "attach_in_a_child", "--nocapture", "--ignored"])
        .env("CAPSA_TEST_CNI_DIR", &net.dir)
        .env("CAPSA_TEST_CNI_ID", &net.id)
        .env("CAPSA_TEST_CNI_LIST", net.conflist(&subnet))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut said).unwrap();
    let _ = child.kill();
    child.wait().unwrap();
    assert!(said.contains("attached"), "{said}");
    assert_eq!(net.allocations().len(), 1);
    assert!(!net.rules().is_empty());
    assert!(attachment::release(&net.dir).unwrap());
    assert!(!net.netns().exists());
    assert!(net.allocations().is_empty());
    assert!(net.rules().is_empty(), "{:?}", net.rules());
    assert_eq!(net.bridge_ports().trim(), "");
}

/// The child of the test above (runs only when asked to).
#[test]
#[ignore]
fn attach_in_a_child() {
    let Ok(dir) = std::env::var("CAPSA_TEST_CNI_DIR") else {
        return;
    };
    let id = std::env::var("CAPSA_TEST_CNI_ID").unwrap();
    let list = std::env::var("CAPSA_TEST_CNI_LIST").unwrap();
    let request = CniRequest {
        conflist: Conflist::parse(&list, "test").unwrap(),
        origin: "test".into(),
        plugin_dirs: DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
        ports: vec!["18081:80".parse().unwrap()],
    };
    attachment::attach(Path::new(&dir), &id, &request).unwrap();
    println!("attached");
    // Never releases: the parent kills this process.
    std::process::exit(0);
}

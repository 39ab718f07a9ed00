//! The network of `capsa run --network bridge` without a VM: a netns made
//! by capsa, connected by the real CNI plugins (bridge, host-local,
//! portmap, loopback from /usr/lib/cni), then released: no netns, host
//! veth, IP allocation or iptables rule left. Each test has its own
//! bridge, subnet and IPAM directory. Needs root and the plugins.

use std::path::{Path, PathBuf};
use std::process::Command;

use capsa_runtime::resource::network::attachment::{self, CniRequest};
use capsa_runtime::resource::network::cni::{Conflist, DEFAULT_PLUGIN_DIRS};
use capsa_test_infra::cni::{self, host, TestNetwork};

/// A private network and a state directory for the sandbox. Released
/// on drop, whatever happened (then the bridge goes).
struct Net {
    dir: PathBuf,
    id: String,
    net: TestNetwork,
    _tmp: tempfile::TempDir,
}

impl Net {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("capsa-test-cni-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("sandbox");
        std::fs::create_dir(&dir).unwrap();
        let net = TestNetwork::new(tmp.path(), "capsat", 100);
        Net {
            dir,
            id: format!("cnitest-{}-{}", std::process::id(), net.bridge),
            net,
            _tmp: tmp,
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
        host(&all)
    }

    fn assert_released(&self) {
        assert!(!self.netns().exists(), "netns file left");
        assert!(!self.dir.join(attachment::ATTACHMENT_FILE).exists());
        assert_eq!(self.net.veths(), "", "host veth left");
        assert!(
            self.net.allocations().is_empty(),
            "{:?}",
            self.net.allocations()
        );
        assert!(
            self.net.rules(&self.id).is_empty(),
            "{:?}",
            self.net.rules(&self.id)
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = attachment::release(&self.dir) {
            eprintln!("release in cleanup: {e}");
            // The netns must not keep the temporary directory busy.
            let _ = nix::mount::umount2(&self.netns(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn request(list: &str, ports: &[&str]) -> CniRequest {
    CniRequest {
        conflist: Conflist::parse(list, "test").unwrap(),
        origin: "test".into(),
        plugin_dirs: DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
        ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
    }
}

#[test]
fn a_bridged_netns_is_made_connected_and_released_leaving_nothing() {
    cni::require();
    let t = Net::new();
    let att =
        attachment::attach(&t.dir, &t.id, &request(&t.net.conflist(), &["18080:80"])).unwrap();

    // In the netns: eth0 with the address host-local gave, lo up, a
    // default route through the bridge's address.
    let address = att.address().expect("an address in the result");
    assert!(
        address.starts_with(&format!("{}.", t.net.subnet)),
        "{address}"
    );
    let addrs = t.ip_in(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&address), "{addrs}");
    let lo = t.ip_in(&["-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    let routes = t.ip_in(&["route", "show", "default"]);
    assert!(
        routes.contains(&format!("via {}.1", t.net.subnet)),
        "{routes}"
    );
    // On the host: a veth on the bridge, the allocation, the rules.
    assert!(
        t.net.veths().contains("veth"),
        "no veth on {}",
        t.net.bridge
    );
    assert_eq!(t.net.allocations(), [address.split('/').next().unwrap()]);
    let rules = t.net.rules(&t.id);
    assert!(rules.iter().any(|r| r.contains("18080")), "{rules:?}");
    assert!(rules.iter().any(|r| r.contains("MASQUERADE")), "{rules:?}");
    // Recorded before release, and CHECK agrees with the netns.
    let recorded = attachment::load(&t.dir).unwrap().unwrap();
    assert_eq!(recorded, att);
    match attachment::check(&t.dir) {
        Ok(()) => {}
        // portmap 1.1.1 (Debian 12) checks an IPv6 chain it never made.
        Err(e) if e.to_string().contains("portmap") && e.to_string().contains("ipv6") => {
            eprintln!("CHECK: known portmap bug: {e}")
        }
        Err(e) => panic!("CHECK: {e}"),
    }

    assert!(attachment::release(&t.dir).unwrap());
    t.assert_released();
    assert!(
        !attachment::release(&t.dir).unwrap(),
        "a second release has nothing to do"
    );
}

#[test]
fn a_failing_plugin_is_named_with_its_error_and_nothing_is_left() {
    cni::require();
    let t = Net::new();
    let list = t.net.conflist_with_subnet("10.4.999.0/24");
    let err = attachment::attach(&t.dir, &t.id, &request(&list, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ADD") && err.contains("bridge"), "{err}");
    assert!(err.contains("10.4.999.0"), "the plugin's message: {err}");
    t.assert_released();
}

#[test]
fn a_release_after_the_maker_died_finds_everything_in_the_record() {
    cni::require();
    let t = Net::new();
    // Made by a child process that ends without releasing: all that is
    // left is the state directory.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "attach_in_a_child", "--nocapture", "--ignored"])
        .env("CAPSA_TEST_CNI_DIR", &t.dir)
        .env("CAPSA_TEST_CNI_ID", &t.id)
        .env("CAPSA_TEST_CNI_LIST", t.net.conflist())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("attached"),
        "{out:?}"
    );
    assert_eq!(t.net.allocations().len(), 1);
    assert!(!t.net.rules(&t.id).is_empty());
    assert!(attachment::release(&t.dir).unwrap());
    t.assert_released();
}

/// The child of the test above (runs only when asked to).
#[test]
#[ignore = "the child process of a_release_after_the_maker_died_finds_everything_in_the_record"]
fn attach_in_a_child() {
    let dir = std::env::var("CAPSA_TEST_CNI_DIR").expect(
        "CAPSA_TEST_CNI_DIR: run by a_release_after_the_maker_died_finds_everything_in_the_record",
    );
    let id = std::env::var("CAPSA_TEST_CNI_ID").unwrap();
    let list = std::env::var("CAPSA_TEST_CNI_LIST").unwrap();
    attachment::attach(Path::new(&dir), &id, &request(&list, &["18081:80"])).unwrap();
    println!("attached");
    // Never releases.
    std::process::exit(0);
}

//! `capsa run --network`: `bridge` through the real CNI plugins (bridge,
//! host-local, portmap, loopback) with `-p`, released after the run and
//! after SIGKILL of `capsa`; a netns of the test's own joined and left as
//! it was; `none`; refused arguments. Each test has its own bridge,
//! subnet and IPAM directory (`runtime.cni_conflist`). Real VMs; root.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use capsa_test_infra::cli::text;
use capsa_test_infra::cni::TestNetwork;
use capsa_test_infra::net::{free_port, http_get};
use capsa_test_infra::netns::PodNetns;
use capsa_test_infra::{assert_no_leaks, run_bounded, wait_until, Guarded, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);
/// How long a condition of the guest or the host may take to come true.
const WAIT: Duration = Duration::from_secs(60);

/// A test environment with its own CNI network.
struct Net {
    net: TestNetwork,
    env: TestEnv,
}

impl Net {
    fn new() -> Self {
        let env = TestEnv::new();
        let net = TestNetwork::new(env.dir.path(), "capsab", 10);
        let path = env.write_config("test.conflist", &net.conflist());
        // The configuration file ends with its [runtime] table.
        env.append_config(&format!("cni_conflist = {path:?}"));
        Net { net, env }
    }

    fn capsa(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsa"));
        cmd.arg("--config").arg(&self.env.config).args(args);
        cmd
    }

    fn capsa_out(&self, args: &[&str]) -> Output {
        run_bounded(self.capsa(args), None, LIMIT)
    }

    /// `capsa run --rootfs <busybox> <opts> -- <cmd>`.
    fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        let mut c = self.capsa(&["run", "--rootfs"]);
        c.arg(&self.env.rootfs).args(opts).arg("--").args(cmd);
        run_bounded(c, None, LIMIT)
    }

    /// Everything the network of sandbox `id` held on the host is gone.
    fn assert_released(&self, id: &str) {
        let netns = self.env.state_dir.join(id).join("netns");
        assert!(!netns.exists(), "netns {} left", netns.display());
        assert_eq!(self.net.veths(), "", "veth left on {}", self.net.bridge);
        let ips = self.net.allocations();
        assert!(ips.is_empty(), "IPs left: {ips:?}");
        assert!(
            self.net.rules(id).is_empty(),
            "rules left: {:?}",
            self.net.rules(id)
        );
    }

    /// Everything the network of sandbox `id` holds on the host is there.
    fn assert_held(&self, id: &str) {
        assert!(self.env.state_dir.join(id).join("netns").exists());
        assert!(
            self.net.veths().contains("veth"),
            "no veth on {}",
            self.net.bridge
        );
        assert_eq!(
            self.net.allocations().len(),
            1,
            "{:?}",
            self.net.allocations()
        );
        assert!(!self.net.rules(id).is_empty(), "no rule names {id}");
    }

    fn inspect(&self, id: &str) -> serde_json::Value {
        let out = self.capsa_out(&["inspect", id]);
        assert!(out.status.success(), "inspect: {out:?}");
        serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
    }

    /// Waits until `inspect` says `state`.
    fn wait_state(&self, id: &str, state: &str) -> serde_json::Value {
        let mut v = serde_json::Value::Null;
        let became = wait_until(WAIT, || {
            v = self.inspect(id);
            v["state"] == state
        });
        assert!(became, "{id} never became {state}: {v:#}");
        v
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Sandboxes a failed test left: `rm --force` releases their networks.
        let entries = std::fs::read_dir(&self.env.state_dir);
        for entry in entries.into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let _ = run_bounded(self.capsa(&["rm", "--force", &id]), None, LIMIT);
        }
    }
}

/// Waits (bounded) for process `pid` to be gone: an owner releases the
/// network after it recorded `stopped`, then exits.
fn wait_gone(pid: i32) {
    let gone = wait_until(WAIT, || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
    });
    assert!(gone, "owner {pid} did not exit");
}

const HTTPD: &str = "mkdir -p /www && echo hello-from-capsa > /www/index.html && \
                     ip -o addr show dev eth0 && ip route && exec httpd -f -p 80 -h /www";

#[test]
fn bridge_serves_a_published_port_and_leaves_nothing_behind() {
    let net = Net::new();
    let port = free_port();
    let publish = format!("{port}:80");
    let out = net.capsa_out(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "bridge",
        "-p",
        &publish,
        "--rootfs",
        &net.env.rootfs.to_string_lossy(),
        "--",
        "sh",
        "-c",
        HTTPD,
    ]);
    assert!(out.status.success(), "{out:?}");
    net.assert_held("web");
    let record = net.inspect("web");
    let address = record["cni"]["networks"][1]["result"]["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address recorded: {record:#}"))
        .to_string();
    assert!(
        address.starts_with(&format!("{}.", net.net.subnet)),
        "{address}"
    );

    // The host reaches the container through the published port.
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let body = http_get(local, WAIT);
    assert_eq!(body.trim(), "hello-from-capsa");
    // ... and at its address.
    let ip: IpAddr = address.split('/').next().unwrap().parse().unwrap();
    assert_eq!(
        http_get(SocketAddr::new(ip, 80), WAIT).trim(),
        "hello-from-capsa"
    );
    // The container has its address on eth0 and a default route through
    // the bridge.
    let log = std::fs::read_to_string(net.env.state_dir.join("web/web.log")).unwrap();
    assert!(log.contains(&address), "{log}");
    assert!(
        log.contains(&format!("default via {}.1", net.net.subnet)),
        "{log}"
    );

    // The workload ends: its owner stops the VM and releases the network.
    let out = net.capsa_out(&["kill", "web", "--signal", "KILL"]);
    assert!(out.status.success(), "{out:?}");
    let owner = net.wait_state("web", "stopped")["owner_pid"]
        .as_i64()
        .unwrap() as i32;
    wait_gone(owner);
    net.assert_released("web");
    assert!(
        TcpStream::connect_timeout(&local, Duration::from_secs(5)).is_err(),
        "port {port} still forwarded"
    );
    let out = net.capsa_out(&["rm", "web"]);
    assert!(out.status.success(), "{out:?}");
    assert_no_leaks(&net.env.state_dir);
}

#[test]
fn an_attached_run_releases_its_network_when_it_ends() {
    let net = Net::new();
    let out = net.run(
        &["--name", "once", "--network", "bridge"],
        &["sh", "-c", "ip -o addr show dev eth0; ip route"],
    );
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("inet {}.", net.net.subnet)),
        "{said}"
    );
    assert!(
        said.contains(&format!("default via {}.1", net.net.subnet)),
        "{said}"
    );
    net.assert_released("once");
    assert_no_leaks(&net.env.state_dir);
}

#[test]
fn after_sigkill_of_capsa_the_next_capsa_releases_the_network() {
    let net = Net::new();
    // Attached: `capsa run` itself is killed; `ps` releases the network.
    let port = free_port().to_string();
    let mut c = net.capsa(&["run", "--name", "att", "--network", "bridge", "-p"]);
    c.arg(format!("{port}:80"))
        .arg("--rootfs")
        .arg(&net.env.rootfs)
        .args(["--", "sh", "-c", "echo ready; sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let mut capsa = Guarded::spawn(&mut c);
    let mut first = [0u8; 6];
    let mut stdout = capsa.child().stdout.take().unwrap();
    stdout.read_exact(&mut first).expect("workload output");
    assert_eq!(&first, b"ready\n");
    net.assert_held("att");
    capsa.child().kill().unwrap();
    capsa.child().wait().unwrap();
    net.assert_held("att");
    let ps = net.capsa_out(&["ps"]);
    assert!(ps.status.success(), "{ps:?}");
    assert!(text(&ps.stdout).contains("dead"), "{ps:?}");
    net.assert_released("att");
    let rm = net.capsa_out(&["rm", "att"]);
    assert!(rm.status.success(), "{rm:?}");

    // Detached: its owner is killed; `rm` releases the network.
    let out = net.capsa_out(&[
        "run",
        "-d",
        "--name",
        "det",
        "--network",
        "bridge",
        "--rootfs",
        &net.env.rootfs.to_string_lossy(),
        "--",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{out:?}");
    net.assert_held("det");
    let owner = net.inspect("det")["owner_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(owner),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    net.wait_state("det", "dead");
    net.assert_held("det");
    let rm = net.capsa_out(&["rm", "det"]);
    assert!(rm.status.success(), "{rm:?}");
    net.assert_released("det");
    assert_no_leaks(&net.env.state_dir);
}

#[test]
fn a_netns_of_ones_own_is_joined_and_left_as_it_was() {
    let net = Net::new();
    let own = PodNetns::new();
    // IPv6 link-local addresses (and their local routes) settle by
    // themselves once duplicate address detection is done: wait for it.
    let settled = wait_until(WAIT, || {
        !own.in_ns(&["ip", "-6", "-o", "addr"]).contains("tentative")
    });
    assert!(settled, "IPv6 addresses never settled");
    let before = own.snapshot();
    let netns = own.netns().to_string_lossy().into_owned();
    let out = net.run(
        &["--network", &netns],
        &["sh", "-c", "ip -o addr show dev eth0; ip route"],
    );
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    assert!(said.contains(&format!("{}/24", own.pod_ip())), "{said}");
    assert!(
        said.contains(&format!("default via {}", own.host_ip())),
        "{said}"
    );
    assert!(own.netns().exists(), "the netns was removed");
    assert_eq!(own.snapshot(), before, "the netns changed");
    assert_no_leaks(&net.env.state_dir);
}

#[test]
fn without_a_network_the_vm_has_only_loopback() {
    let net = Net::new();
    let out = net.run(&[], &["sh", "-c", "ls /sys/class/net"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["lo"]
    );
    assert_no_leaks(&net.env.state_dir);
}

#[test]
fn bad_network_arguments_are_refused_naming_them() {
    let net = Net::new();
    for (opts, said, status) in [
        (
            &["-p", "8080:80"][..],
            "-p 8080:80 needs --network bridge",
            125,
        ),
        (
            &["--network", "/run/netns/x", "-p", "81:80/udp"][..],
            "-p 81:80/udp needs --network bridge",
            125,
        ),
        (&["--network", "bridge", "-p", "80"][..], "\"80\"", 2),
        (
            &["--network", "bridge", "-p", "8080:80/sctp"][..],
            "\"8080:80/sctp\"",
            2,
        ),
        (&["--network", "host"][..], "\"host\"", 2),
        (
            &["--network", "/nonexistent/netns"][..],
            "/nonexistent/netns",
            125,
        ),
        (
            &["-d", "-p", "8080:80"][..],
            "-p 8080:80 needs --network bridge",
            125,
        ),
    ] {
        let out = net.run(opts, &["true"]);
        assert_eq!(out.status.code(), Some(status), "{opts:?}: {out:?}");
        assert!(text(&out.stderr).contains(said), "{opts:?}: {out:?}");
    }
    assert_no_leaks(&net.env.state_dir);
}

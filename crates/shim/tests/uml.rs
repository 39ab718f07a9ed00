//! The shim on User-Mode Linux: containerd's runtime option `ConfigPath`
//! (`ctr run --runtime-config-path`) names the installed
//! `configuration-uml.toml`, and the task runs in a UML VM; the default
//! configuration of the same containerd stays QEMU's. A CRI pod whose
//! runtime handler's `ConfigPath` is that configuration gets the network
//! CNI gave it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use capsa_test_infra::containerd::tcp_port_mapping;
use capsa_test_infra::net::{free_port, host_address, http_get, httpd_script, links_in};
use capsa_test_infra::{assert_no_leaks, TestEnv};
use common::{text, Setup, RUNTIME};

/// `uname -r`, the CPU count, exit 5: a UML kernel with one CPU.
const SCRIPT: &str = "uname -r; grep -c ^processor /proc/cpuinfo; exit 5";

fn assert_uml(out: &std::process::Output, s: &Setup) {
    assert_eq!(out.status.code(), Some(5), "{out:?}\n{}", s.ctrd.log_tail());
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].contains("-um") && lines[1] == "1",
        "a UML kernel with one CPU: {stdout}"
    );
}

/// A directory rootfs (`ctr run --rootfs`): shared idmapped, so the
/// agent makes the spec's mount points (`/run`) in it as on QEMU.
#[test]
fn ctr_runs_a_task_on_uml_chosen_by_the_runtime_config_path() {
    let s = Setup::new();
    let uml = TestEnv::with_installed_config("configuration-uml.toml");
    let config = uml.config.to_str().unwrap();
    let rootfs = uml.rootfs.to_str().unwrap();
    let args = [
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        config,
        "--rootfs",
        rootfs,
        "uml1",
        "sh",
        "-c",
        SCRIPT,
    ];
    let out = s.ctrd.ctr(&args);
    assert_uml(&out, &s);
    // The same containerd without the option: QEMU's configuration.
    let out = s.run(&["--rm"], "qemu1", &["uname", "-r"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!text(&out.stdout).contains("-um"), "{out:?}");
    s.assert_all_gone();
    assert_no_leaks(&uml.state_dir);
}

/// An image's rootfs (an overlayfs snapshot) cannot be idmapped: owned
/// by host root, it is read-only to the jailed virtiofsd, which cannot
/// make the spec's `/run` in busybox.
#[test]
#[ignore = "overlayfs snapshots cannot be idmapped for the jailed virtiofsd: an image rootfs is read-only on UML and ctr's /run mount point cannot be made (needs overlayfs idmapped layers)"]
fn ctr_runs_an_image_on_uml() {
    let s = Setup::new();
    let uml = TestEnv::with_installed_config("configuration-uml.toml");
    let config = uml.config.to_str().unwrap();
    let out = s.run(
        &["--rm", "--runtime-config-path", config],
        "uml2",
        &["sh", "-c", SCRIPT],
    );
    assert_uml(&out, &s);
    s.assert_all_gone();
    assert_no_leaks(&uml.state_dir);
}

/// A CRI pod on UML (the handler `capsa` of this containerd has the UML
/// configuration as its `ConfigPath`) with CNI networking: its vector NIC
/// has the veth's MAC and CNI's address, it serves the host at its
/// address and through a host port (portmap), and stopping and removing
/// it leaves no tap, netns or process.
#[test]
fn a_cri_pod_on_uml_gets_the_network_cni_gave_it() {
    const LIMIT: Duration = Duration::from_secs(120);
    let s = Setup::with_env_and_network(
        TestEnv::short_with_installed_config("configuration-uml.toml"),
        "native",
    );
    s.ctrd.import_pause();
    let cri = s.ctrd.cri();
    let host_port = free_port();
    let config =
        cri.pod_config_with_network("umlnet1", None, vec![tcp_port_mapping(host_port, 80)]);
    let pod = cri.run_pod_with(config.clone(), "capsa");
    let web = cri.create_container(
        &pod,
        &config,
        "web",
        &s.image,
        &["sh", "-c", &httpd_script("umlnet1")],
    );
    cri.start(&web);
    let exec_ok = |cmd: &[&str]| {
        let (out, err, code) = cri.exec_sync(&web, cmd, LIMIT);
        assert_eq!(code, 0, "{cmd:?}: {out}{err}\n{}", s.ctrd.log_tail());
        out
    };
    assert!(exec_ok(&["uname", "-r"]).contains("-um"), "not on UML");

    let ip = cri.pod_ip(&pod);
    let netns = cri.pod_netns(&pod);
    let veth = links_in(&netns)
        .into_iter()
        .find(|l| l.name == "eth0")
        .unwrap_or_else(|| panic!("no eth0 in {}", netns.display()));
    let links = exec_ok(&["ip", "-o", "link", "show"]);
    assert!(
        links.contains(&veth.mac),
        "no guest link with {veth:?}: {links}"
    );
    let addrs = exec_ok(&["ip", "-o", "-4", "addr", "show"]);
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");

    let pod_addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    assert_eq!(http_get(pod_addr, LIMIT), "umlnet1\n");
    let through_host: SocketAddr = (host_address(), host_port).into();
    assert_eq!(http_get(through_host, LIMIT), "umlnet1\n");

    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    assert!(!netns.exists(), "{} is left", netns.display());
    assert!(cri.list_pods().is_empty());
    s.assert_all_gone();
}

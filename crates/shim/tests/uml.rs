//! The shim on User-Mode Linux: containerd's runtime option `ConfigPath`
//! (`ctr run --runtime-config-path`) names the installed
//! `configuration-uml.toml`, and the task runs in a UML VM; the default
//! configuration of the same containerd stays QEMU's. A CRI pod whose
//! runtime handler's `ConfigPath` is that configuration gets the network
//! CNI gave it.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
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

/// An image's rootfs (containerd's overlayfs snapshot) on UML: the
/// overlay is made on idmapped layers, so the jailed virtiofsd writes it
/// as host root's files' owner. What the container writes lands in the
/// snapshot's upper directory owned by host root (the guest's root), and
/// nothing stays mounted once the task is gone.
#[test]
fn ctr_runs_an_image_on_uml() {
    let s = Setup::new();
    let uml = TestEnv::with_installed_config("configuration-uml.toml");
    let config = uml.config.to_str().unwrap();
    let script = format!(
        "echo written > /written && mkdir /made && touch /made/file && \
         stat -c %u:%g /written /bin/sh && {SCRIPT}"
    );
    let out = s.run(
        &["--runtime-config-path", config],
        "uml2",
        &["sh", "-c", &script],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}\n{}", s.ctrd.log_tail());
    // The guest's root owns what it made and the image's root files.
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 4
            && lines[..2] == ["0:0", "0:0"]
            && lines[2].contains("-um")
            && lines[3] == "1",
        "owners seen by the guest, then a UML kernel with one CPU: {stdout}"
    );
    let upper = upper_dir(&s, "uml2");
    for (name, dir) in [("written", false), ("made", true), ("made/file", false)] {
        let meta = std::fs::metadata(upper.join(name))
            .unwrap_or_else(|e| panic!("{name} in the upper dir {}: {e}", upper.display()));
        assert_eq!(meta.is_dir(), dir, "{name}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{name}: host root's");
    }
    let written = std::fs::read_to_string(upper.join("written")).unwrap();
    assert_eq!(written, "written\n");
    s.ctrd.ctr_ok(&["containers", "rm", "uml2"]);
    s.assert_all_gone();
    assert_no_leaks(&uml.state_dir);
    let needle = s.ctrd.dir().display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("overlay"))
        .collect();
    assert!(left.is_empty(), "overlays left: {left:?}");
}

/// The upper directory of container `id`'s overlayfs snapshot
/// (`ctr snapshots mounts`: `mount -t overlay overlay /mnt -o ...`).
fn upper_dir(s: &Setup, id: &str) -> std::path::PathBuf {
    let text = s.ctrd.ctr_ok(&["snapshots", "mounts", "/mnt", id]);
    text.split([' ', ','])
        .find_map(|w| w.trim().strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no overlay upper dir for {id}: {text:?}"))
        .into()
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

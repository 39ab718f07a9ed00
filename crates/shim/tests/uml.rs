//! The shim on User-Mode Linux: containerd's runtime option `ConfigPath`
//! (`ctr run --runtime-config-path`) names the installed
//! `configuration-uml.toml`, and the task runs in a UML VM; the default
//! configuration of the same containerd stays QEMU's.

mod common;

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

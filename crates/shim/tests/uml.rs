//! The shim on User-Mode Linux: containerd's runtime option `ConfigPath`
//! (`ctr run --runtime-config-path`) names the installed
//! `configuration-uml.toml`, and the task runs in a UML VM; the default
//! configuration of the same containerd stays QEMU's.

mod common;

use std::os::unix::fs::MetadataExt;

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

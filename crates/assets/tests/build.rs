//! A real build from Debian's kernel package: the initrd holds the agent as
//! `/init` and the modules the guest needs, each after its dependencies; a
//! second build with the same inputs writes nothing, a changed input
//! rebuilds only what it affects.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use capsa_assets::{build, module_name, AssetsSpec, KernelSource, Manifest, MODULES_LOAD};

/// Modules of the default set, from HOST-FACTS.
const EXPECTED: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtio_blk",
    "scsi_common",
    "scsi_mod",
    "virtio_scsi",
    "sd_mod",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_mem",
    "virtio_balloon",
];

/// Unpacks the LZ4 cpio `initrd` into `dir` with Debian's cpio and returns
/// its listing.
fn unpack(initrd: &Path, dir: &Path) -> Vec<String> {
    let cpio = capsa_assets::unpack_lz4(&std::fs::read(initrd).unwrap()).unwrap();
    let mut child = Command::new("cpio")
        .args(["-i", "-d", "-v", "--quiet", "--no-absolute-filenames"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpio");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &cpio).unwrap();
    let out = child.wait_with_output().unwrap();
    // cpio -v lists to stderr; it cannot create dev/console without mknod
    // rights in every setup, so only the listing matters.
    String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("cpio:"))
        .map(String::from)
        .collect()
}

/// `depends=` of a module file, by Debian's modinfo.
fn depends(ko: &Path) -> Vec<String> {
    let out = Command::new("modinfo")
        .args(["-F", "depends"])
        .arg(ko)
        .output()
        .expect("modinfo");
    assert!(out.status.success(), "modinfo {}", ko.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(module_name)
        .collect()
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

/// Checks the initrd of `m`: files present, modules.load as in the
/// manifest, every module after the modules it depends on, `/init` the
/// agent.
fn check_initrd(m: &Manifest, agent: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let files = unpack(&m.initrd, dir.path());
    for f in ["init", MODULES_LOAD, "dev/console", "proc", "sys", "tmp"] {
        assert!(files.iter().any(|x| x == f), "{f} missing from {files:?}");
    }
    let moddir = dir.path().join("lib/modules").join(&m.kernel_version);
    assert!(moddir.is_dir());
    let load = std::fs::read_to_string(dir.path().join(MODULES_LOAD)).unwrap();
    assert_eq!(load.lines().collect::<Vec<_>>(), m.modules);
    let mut loaded = HashSet::new();
    for rel in &m.modules {
        assert!(rel.ends_with(".ko"), "{rel} is not a plain .ko");
        let ko = moddir.join(rel);
        for dep in depends(&ko) {
            assert!(loaded.contains(&dep), "{rel} needs {dep} loaded before it");
        }
        loaded.insert(module_name(rel));
    }
    let init = dir.path().join("init");
    assert_eq!(std::fs::read(init).unwrap(), agent, "/init is the agent");
    // The debug console's shell: a static busybox that runs here too.
    let sh = dir.path().join("bin/sh");
    assert_eq!(std::fs::read_link(&sh).unwrap(), Path::new("busybox"));
    let shell = m.inputs.shell.as_ref().expect("a shell input");
    assert_eq!(shell.package, capsa_assets::SHELL_PACKAGE);
    let out = Command::new(&sh)
        .args(["-c", "echo $((6*7))"])
        .output()
        .expect("run the initrd's busybox");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
}

#[test]
fn builds_from_the_debian_package_and_only_once() {
    let out = tempfile::tempdir().unwrap();
    // Reuse the package cache of `make assets` if there is one.
    let shared_cache = PathBuf::from("/var/cache/capsa/assets/cache");
    if shared_cache.is_dir() {
        std::os::unix::fs::symlink(&shared_cache, out.path().join("cache")).unwrap();
    }
    let agent = out.path().join("fake-agent");
    std::fs::write(&agent, b"#!/bin/sh\necho not really an agent\n").unwrap();
    let mut spec = AssetsSpec {
        out_dir: out.path().to_path_buf(),
        kernel: KernelSource::DebianPackage {
            name: "linux-image-cloud-amd64".into(),
        },
        agent_binary: agent.clone(),
        modules: Vec::new(),
        image: false,
    };

    let first = build(&spec).expect("first build");
    assert!(first.kernel_version.starts_with("6.1.0-"), "{first:?}");
    assert!(first.kernel_version.ends_with("-cloud-amd64"), "{first:?}");
    let names: Vec<String> = first.modules.iter().map(|m| module_name(m)).collect();
    let mut sorted = names.clone();
    sorted.sort();
    let mut expected: Vec<&str> = EXPECTED.to_vec();
    expected.sort();
    assert_eq!(sorted, expected, "modules of the default set");
    for f in [
        "virtio_pci.ko",
        "virtiofs.ko",
        "vsock.ko",
        "virtio_blk.ko",
        "sd_mod.ko",
    ] {
        assert!(first.modules.iter().any(|m| m.ends_with(&format!("/{f}"))));
    }
    check_initrd(&first, &std::fs::read(&agent).unwrap());

    // Same inputs: nothing is rewritten.
    let (k, i) = (mtime(&first.kernel), mtime(&first.initrd));
    let started = Instant::now();
    let second = build(&spec).expect("second build");
    eprintln!("no-op build took {:?}", started.elapsed());
    assert_eq!(second, first);
    assert_eq!((mtime(&first.kernel), mtime(&first.initrd)), (k, i));

    // A new agent rebuilds the initrd only.
    std::fs::write(&agent, b"#!/bin/sh\necho another agent\n").unwrap();
    let third = build(&spec).expect("third build");
    assert_ne!(third.outputs.initrd_sha256, first.outputs.initrd_sha256);
    assert_eq!(third.outputs.kernel_sha256, first.outputs.kernel_sha256);
    assert_eq!(mtime(&first.kernel), k, "the kernel is not rewritten");

    // Another module adds it and its dependencies.
    spec.modules = vec!["overlay".into()];
    let fourth = build(&spec).expect("build with overlay");
    assert!(fourth.modules.iter().any(|m| m.ends_with("/overlay.ko")));
    check_initrd(&fourth, &std::fs::read(&agent).unwrap());

    let bad = AssetsSpec {
        modules: vec!["no_such_module_anywhere".into()],
        ..spec
    };
    let err = build(&bad).unwrap_err().to_string();
    assert!(err.contains("no_such_module_anywhere"), "{err}");
}

//! A real build from Debian's kernel package: the initrd holds the agent as
//! `/init`, the modules the guest needs in load order, and a second build
//! with the same inputs rewrites nothing.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use capsa_assets::{build, AssetsSpec, KernelSource};

/// Files of a gzip cpio archive, listed by Debian's cpio.
fn list(initrd: &std::path::Path) -> Vec<String> {
    let gz = std::fs::read(initrd).unwrap();
    let mut cpio = std::io::Read::bytes(flate2::read::GzDecoder::new(&gz[..]))
        .map(|b| b.unwrap())
        .collect::<Vec<u8>>();
    let mut child = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cpio");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &std::mem::take(&mut cpio))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
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
    let spec = AssetsSpec {
        out_dir: out.path().to_path_buf(),
        kernel: KernelSource::DebianPackage {
            name: "linux-image-cloud-amd64".into(),
        },
        agent_binary: agent.clone(),
        modules: vec!["overlay".into()],
    };
    let first = build(&spec).expect("first build");
    assert!(first.kernel_version.ends_with("cloud-amd64"), "{first:?}");
    let files = list(&first.initrd);
    for f in ["init", "etc/capsa/modules.load", "dev/console"] {
        assert!(files.iter().any(|x| x == f), "{f} missing from {files:?}");
    }
    let load = first
        .modules
        .iter()
        .map(|m| capsa_assets::module_name(m))
        .collect::<Vec<_>>();
    let pos = |n: &str| {
        load.iter()
            .position(|m| m == n)
            .unwrap_or_else(|| panic!("{n} not in {load:?}"))
    };
    assert!(pos("virtio_ring") < pos("virtio_pci"));
    assert!(pos("fuse") < pos("virtiofs"));
    assert!(pos("vsock") < pos("vmw_vsock_virtio_transport"));
    pos("overlay");
    for m in &first.modules {
        let path = format!("lib/modules/{}/{m}", first.kernel_version);
        assert!(files.contains(&path), "{path} not in the initrd");
    }

    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (k, i) = (mtime(&first.kernel), mtime(&first.initrd));
    let second = build(&spec).expect("second build");
    assert_eq!(second, first);
    assert_eq!(
        (mtime(&first.kernel), mtime(&first.initrd)),
        (k, i),
        "nothing rewritten"
    );

    // A changed input (the agent) rebuilds the initrd, with the same kernel.
    std::fs::write(&agent, b"#!/bin/sh\necho another agent\n").unwrap();
    let third = build(&spec).expect("third build");
    assert_ne!(third.initrd_sha256, first.initrd_sha256);
    assert_eq!(third.kernel_sha256, first.kernel_sha256);

    let bad = AssetsSpec {
        modules: vec!["no_such_module_anywhere".into()],
        ..spec
    };
    let err = build(&bad).unwrap_err().to_string();
    assert!(err.contains("no_such_module_anywhere"), "{err}");
}

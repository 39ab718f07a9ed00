//! `capsa-snapshotter` under a private, real containerd (1.6) as proxy
//! plugin `capsa`: an image unpacks into it, a runc container runs on its
//! snapshot and what the container wrote is in the snapshot's image
//! afterwards; a view mounts read-only; removing everything through
//! containerd empties the store and leaves no loop device or mount.
//! Needs root (loop devices, mounts), like the other containerd tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_test_infra::block::{loops_below, HostMount, LoopDevice};
use capsa_test_infra::containerd::{Containerd, Opts, PROXY_SNAPSHOTTER};
use capsa_test_infra::snapshotter::Snapshotter;

const LIMIT: Duration = Duration::from_secs(60);

/// The store's snapshot images.
fn images(daemon: &Snapshotter) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(daemon.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `ctr snapshots --snapshotter capsa ARGS`.
fn snap(c: &Containerd, args: &[&str]) -> String {
    let mut all = vec!["snapshots", "--snapshotter", PROXY_SNAPSHOTTER];
    all.extend_from_slice(args);
    c.ctr_ok(&all)
}

/// The `(source, options)` of `ctr snapshots mounts`' one line,
/// `mount -t ext4 SOURCE TARGET -o OPTIONS`.
fn mount_line(c: &Containerd, key: &str) -> (PathBuf, String) {
    let text = snap(c, &["mounts", "/mnt", key]);
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["mount", "-t", "ext4", source, "/mnt", "-o", options] => {
            (PathBuf::from(source), options.to_string())
        }
        _ => panic!("unexpected mounts of {key}: {text:?}"),
    }
}

#[test]
fn image_unpacks_runc_runs_and_remove_empties_the_store() {
    let dir = tempfile::Builder::new()
        .prefix("capsa-test-snap-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut daemon = Snapshotter::start_in(
        Path::new(env!("CARGO_BIN_EXE_capsa-snapshotter")),
        dir.path(),
        "256M",
    );
    let c = Containerd::start(Opts {
        proxy_snapshotter: Some(daemon.socket().to_path_buf()),
        ..Default::default()
    });

    // Unpack: one layer, one committed snapshot, one image file.
    let image = c.import_busybox_into(PROXY_SNAPSHOTTER);
    let committed = c.committed_snapshots(PROXY_SNAPSHOTTER);
    assert_eq!(committed.len(), 1, "{committed:?}");
    let layer = committed[0].clone();
    assert_eq!(images(&daemon).len(), 1, "{:?}", images(&daemon));

    // runc on the snapshot; it stays (no --rm), its task is deleted.
    let runc_root = c.runc_root();
    let out = c.ctr_ok(&[
        "run",
        "--snapshotter",
        PROXY_SNAPSHOTTER,
        "--runc-root",
        runc_root.to_str().unwrap(),
        &image,
        "snap-t1",
        "sh",
        "-c",
        "echo from-runc > /written && cat /written && ls /bin/busybox",
    ]);
    assert_eq!(out, "from-runc\n/bin/busybox\n");
    let info = snap(&c, &["info", "snap-t1"]);
    assert!(
        info.contains("\"Active\"") && info.contains(&layer),
        "{info}"
    );
    let (source, options) = mount_line(&c, "snap-t1");
    assert!(
        source.starts_with(daemon.root().join("snapshots")),
        "{source:?}"
    );
    assert_eq!(options, "loop,rw");
    let usage = snap(&c, &["usage", "snap-t1"]);
    assert!(usage.contains("snap-t1"), "{usage}");

    // The container's file, read from the image through a read-only loop
    // device (detached again when the guards drop).
    {
        let dev = LoopDevice::attach(&source, true);
        let target = dir.path().join("check");
        std::fs::create_dir(&target).unwrap();
        let m = HostMount::read_only(dev.path(), &target, "ext4");
        let text = std::fs::read_to_string(m.target().join("written")).unwrap();
        assert_eq!(text, "from-runc\n");
    }

    // A view: read-only, of the parent's image.
    snap(&c, &["view", "snap-v1", &layer]);
    let (vsource, voptions) = mount_line(&c, "snap-v1");
    assert_eq!(voptions, "loop,ro");
    assert!(
        vsource.starts_with(daemon.root().join("snapshots")),
        "{vsource:?}"
    );
    snap(&c, &["rm", "snap-v1"]);

    // The layer has a child: containerd refuses to remove it.
    let refused = c.ctr(&[
        "snapshots",
        "--snapshotter",
        PROXY_SNAPSHOTTER,
        "rm",
        &layer,
    ]);
    assert!(!refused.status.success(), "removing a parent succeeded");

    // Container (with its snapshot), the layer, the image: the store
    // empties when containerd's garbage collection reaches the backend.
    c.ctr_ok(&["containers", "rm", "snap-t1"]);
    snap(&c, &["rm", &layer]);
    c.ctr_ok(&["images", "rm", "--sync", &image]);
    let emptied = capsa_test_infra::wait_until(LIMIT, || images(&daemon).is_empty());
    assert!(
        emptied,
        "images left in the store: {:?}\n{}\n{}",
        images(&daemon),
        snap(&c, &["ls"]),
        daemon.log()
    );
    assert_eq!(snap(&c, &["ls"]).lines().count(), 1, "only the header");
    assert_eq!(loops_below(dir.path()), vec![]);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = dir.path().to_string_lossy();
    let mounts: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&*needle)).collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");

    drop(c);
    let status = daemon.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "capsa-snapshotter: {status:?} (None: no exit on SIGTERM)\n{}",
        daemon.log()
    );
    assert!(!daemon.socket().exists(), "socket left behind");
}

//! Block storage end to end: containerd with `capsa-snapshotter` (this
//! build's binary) as its proxy snapshotter `capsa`, the default of CRI
//! and `ctr` too. `ctr run` on its snapshots puts `/` on a virtio block
//! drive with block use on, on virtio-fs with it off; CRI gives each
//! container of a pod its own drive and takes it away on RemoveContainer;
//! the empty image never attaches a host device. What the containers wrote
//! is in the snapshots' images; removing containers and images through
//! containerd empties the store, with no loop device or mount left.
//! (runc on the same snapshotter: `crates/snapshotter/tests/containerd.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_test_infra::block::{loops_below, HostMount, LoopDevice};
use capsa_test_infra::containerd::cri_v1::{ContainerConfig, Mount};
use capsa_test_infra::containerd::{Containerd, Cri, Opts, PROXY_SNAPSHOTTER};
use capsa_test_infra::snapshotter::Snapshotter;
use capsa_test_infra::TestEnv;
use common::{hypervisor_drive_files, RUNTIME};

const EXEC_LIMIT: Duration = Duration::from_secs(60);
/// How long containerd's garbage collection may take to empty the store.
const GC_LIMIT: Duration = Duration::from_secs(60);
const BLOCK_ON: &str = "disable_block_device_use = false";

/// containerd whose snapshotter (CRI's and `ctr`'s) is a private
/// `capsa-snapshotter`, with the capsa shim of this build and a capsa
/// configuration with block use on. Fields drop in order: containerd
/// before the snapshotter it uses, the state directory last.
struct World {
    ctrd: Containerd,
    snap: Snapshotter,
    env: TestEnv,
}

impl World {
    fn start() -> Self {
        let env = TestEnv::short_with_qemu_extra(BLOCK_ON);
        let snap = Snapshotter::start();
        let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-capsa-v2"));
        let ctrd = Containerd::start(Opts {
            shim_dir: shim.parent().map(Path::to_path_buf),
            capsa_config: Some(env.config.clone()),
            proxy_snapshotter: Some(snap.socket().to_path_buf()),
            snapshotter: Some(PROXY_SNAPSHOTTER),
            ..Default::default()
        });
        assert_eq!(ctrd.snapshotter(), PROXY_SNAPSHOTTER);
        Self { ctrd, snap, env }
    }

    /// `ctr snapshots --snapshotter capsa ARGS`.
    fn snapshots(&self, args: &[&str]) -> String {
        let mut all = vec!["snapshots", "--snapshotter", PROXY_SNAPSHOTTER];
        all.extend_from_slice(args);
        self.ctrd.ctr_ok(&all)
    }

    /// The image file of snapshot `key` (`ctr snapshots mounts`' one
    /// line, `mount -t ext4 IMAGE /mnt -o loop,rw`), inside the store.
    fn image_of(&self, key: &str) -> PathBuf {
        let text = self.snapshots(&["mounts", "/mnt", key]);
        let words: Vec<&str> = text.split_whitespace().collect();
        let image = match words.as_slice() {
            ["mount", "-t", "ext4", source, "/mnt", "-o", "loop,rw"] => PathBuf::from(source),
            _ => panic!("unexpected mounts of {key}: {text:?}"),
        };
        assert!(image.starts_with(self.snap.images_dir()), "{image:?}");
        image
    }

    /// Reads `file` of the ext4 image `image` over a read-only loop mount
    /// on the host, unmounted and detached again before returning.
    fn read_in_image(&self, image: &Path, file: &str) -> Option<String> {
        let dev = LoopDevice::attach(image, true);
        let target = tempfile::tempdir_in(self.env.dir.path()).expect("mount point");
        let m = HostMount::read_only(dev.path(), target.path(), "ext4");
        std::fs::read_to_string(m.target().join(file)).ok()
    }

    /// Nothing of the store is used on the host: no loop device over an
    /// image, no mount of one, no mount below the store.
    fn assert_store_unused(&self) {
        let root = self.snap.root();
        assert_eq!(loops_below(root), vec![], "loop devices over the store");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let needle = root.to_string_lossy();
        let mounts: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&*needle)).collect();
        assert!(mounts.is_empty(), "mounts of the store: {mounts:?}");
    }

    /// Removes the images, then what is left of their snapshots (the
    /// unpacked layers, committed) with `ctr snapshots rm`, children
    /// first; containerd's garbage collection then removes them from the
    /// backend. Waits until the store's `snapshots/` directory is empty.
    fn remove_images_and_wait_empty(&self, images: &[&str]) {
        for image in images {
            self.ctrd.ctr_ok(&["images", "rm", "--sync", image]);
        }
        // A parent's removal fails while it has children: repeat, each
        // round removing at least one (the layers form chains).
        loop {
            let listing = self.snapshots(&["ls"]);
            let keys: Vec<&str> = listing
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if keys.is_empty() {
                break;
            }
            let mut removed = false;
            for key in &keys {
                let out =
                    self.ctrd
                        .ctr(&["snapshots", "--snapshotter", PROXY_SNAPSHOTTER, "rm", key]);
                removed |= out.status.success();
            }
            assert!(removed, "no snapshot could be removed: {listing}");
        }
        self.snap
            .wait_empty(GC_LIMIT, || self.snapshots(&["ls"]) + &self.ctrd.log_tail());
        self.assert_store_unused();
    }

    /// Nothing of capsa is left (processes, mounts, state).
    fn assert_capsa_gone(&self) {
        capsa_test_infra::assert_no_leaks(&self.env.state_dir);
    }
}

/// The rootfs's device and filesystem, the guest's disks, then a write.
const SCRIPT: &str = "grep ' / ' /proc/mounts | cut -d' ' -f1,3; \
                      echo disks: $(ls /sys/block | grep '^vd'); echo from-$0 > /written";

#[test]
fn ctr_runs_on_capsa_snapshots_over_a_drive_or_over_virtio_fs() {
    let w = World::start();
    let image = w.ctrd.import_busybox_into(PROXY_SNAPSHOTTER);
    let run = |id: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--snapshotter",
            PROXY_SNAPSHOTTER,
            "--runtime",
            RUNTIME,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&image, id, "sh", "-c", SCRIPT, id]);
        let out = w.ctrd.ctr(&args);
        assert!(
            out.status.success(),
            "ctr run {id}: {}{}\n{}",
            common::text(&out.stdout),
            common::text(&out.stderr),
            w.ctrd.log_tail()
        );
        common::text(&out.stdout)
    };

    // Block use on (the containerd's configuration): the snapshot's image
    // is the VM's drive, never attached or mounted on the host.
    let out = run("on-drive", &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("/dev/vd") && lines[0].ends_with(" ext4"),
        "/ on a virtio block device: {out}"
    );
    assert!(lines[1].starts_with("disks: vd"), "{out}");
    assert!(
        w.ctrd.log().contains("drive hot-plugged"),
        "{}",
        w.ctrd.log_tail()
    );
    w.assert_store_unused();
    let on_drive = w.image_of("on-drive");
    assert_eq!(
        w.read_in_image(&on_drive, "written").as_deref(),
        Some("from-on-drive\n")
    );

    // Block use off (the same configuration without it, as the runtime
    // options' ConfigPath): the same kind of snapshot goes over virtio-fs.
    let config = std::fs::read_to_string(&w.env.config).unwrap();
    assert!(config.contains(BLOCK_ON), "{config}");
    let off = w
        .env
        .write_config("block-off.toml", &config.replace(BLOCK_ON, ""));
    let off = off.to_str().unwrap();
    let out = run("over-fs", &["--runtime-config-path", off]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with(" virtiofs"), "/ over virtio-fs: {out}");
    assert_eq!(lines[1], "disks:", "no disk in the guest: {out}");
    // The host's loop mount went with the container.
    w.assert_store_unused();
    let over_fs = w.image_of("over-fs");
    assert_ne!(on_drive, over_fs);
    assert_eq!(
        w.read_in_image(&over_fs, "written").as_deref(),
        Some("from-over-fs\n")
    );
    assert_eq!(
        w.read_in_image(&on_drive, "written").as_deref(),
        Some("from-on-drive\n"),
        "each container wrote its own snapshot"
    );

    // Containers (with their snapshots) and the image: the store empties.
    w.ctrd.ctr_ok(&["containers", "rm", "on-drive", "over-fs"]);
    w.remove_images_and_wait_empty(&[&image]);
    w.assert_capsa_gone();
}

/// The same snapshots on User-Mode Linux with block use on (the installed
/// `configuration-uml.toml`, as the runtime options' ConfigPath): the
/// snapshot's image is a ubd disk of the VM, `/dev/ubda`, never attached
/// or mounted on the host, and keeps what the container wrote.
#[test]
fn ctr_runs_on_capsa_snapshots_on_uml_over_a_ubd_disk() {
    let w = World::start();
    let image = w.ctrd.import_busybox_into(PROXY_SNAPSHOTTER);
    let uml = TestEnv::with_installed_config("configuration-uml.toml");
    let config = std::fs::read_to_string(&uml.config).unwrap();
    let on = config.replace(
        "disable_block_device_use = true",
        "disable_block_device_use = false",
    );
    assert_ne!(
        on, config,
        "the installed file sets disable_block_device_use"
    );
    std::fs::write(&uml.config, on).unwrap();
    let args = [
        "run",
        "--snapshotter",
        PROXY_SNAPSHOTTER,
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        uml.config.to_str().unwrap(),
        &image,
        "on-ubd",
        "sh",
        "-c",
        SCRIPT,
        "on-ubd",
    ];
    let out = w.ctrd.ctr(&args);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "ctr run: {stdout}{}\n{}",
        common::text(&out.stderr),
        w.ctrd.log_tail()
    );
    assert_eq!(
        stdout.lines().next(),
        Some("/dev/ubda ext4"),
        "/ on a ubd disk: {stdout}"
    );
    w.assert_store_unused();
    let on_ubd = w.image_of("on-ubd");
    assert_eq!(
        w.read_in_image(&on_ubd, "written").as_deref(),
        Some("from-on-ubd\n")
    );
    w.ctrd.ctr_ok(&["containers", "rm", "on-ubd"]);
    w.remove_images_and_wait_empty(&[&image]);
    w.assert_capsa_gone();
    capsa_test_infra::assert_no_leaks(&uml.state_dir);
}

#[test]
fn cri_gives_each_container_of_a_pod_its_own_drive_from_the_snapshotter() {
    let w = World::start();
    let pause = w.ctrd.import_pause();
    let image = w.ctrd.import_busybox();
    let cri = w.ctrd.cri();
    let config = cri.pod_config("snappod");
    let pod = cri.run_pod_with(config.clone(), "capsa");
    let drives = || hypervisor_drive_files(&w.env.state_dir, &pod);
    let in_store = |files: &[String]| {
        files
            .iter()
            .all(|f| Path::new(f).starts_with(w.snap.images_dir()))
    };
    let sandbox_drives = drives();
    assert!(in_store(&sandbox_drives), "{sandbox_drives:?}");

    let ids: Vec<String> = ["first", "second"]
        .iter()
        .map(|name| {
            let c = Cri::container_config(name, &image, &["sleep", "1000"]);
            let id = cri.create_container_with(&pod, &config, c);
            cri.start(&id);
            id
        })
        .collect();
    let images: Vec<String> = ids
        .iter()
        .map(|id| w.image_of(id).display().to_string())
        .collect();
    assert_ne!(images[0], images[1]);

    // Each `/` is a drive of its own; each one's writes stay its own.
    let mut devices = Vec::new();
    for (id, name) in ids.iter().zip(["first", "second"]) {
        let out = exec_ok(
            &w,
            &cri,
            id,
            &format!("grep ' / ' /proc/mounts | cut -d' ' -f1,3; echo {name} > /mine-{name}"),
        );
        assert!(
            out.starts_with("/dev/vd") && out.trim_end().ends_with(" ext4"),
            "{name}: {out}"
        );
        devices.push(out.split(' ').next().unwrap().to_string());
    }
    assert_ne!(devices[0], devices[1], "each container its own device");
    assert_eq!(
        exec_ok(&w, &cri, &ids[0], "ls / | grep mine-"),
        "mine-first\n",
        "second's write is not in first's rootfs"
    );
    assert_eq!(
        exec_ok(&w, &cri, &ids[1], "ls / | grep mine-"),
        "mine-second\n",
        "first's write is not in second's rootfs"
    );

    // QEMU holds both images while their containers live ...
    let held = drives();
    assert!(in_store(&held), "{held:?}");
    assert!(
        images.iter().all(|i| held.contains(i)),
        "{images:?} not all in {held:?}"
    );
    assert_eq!(held.len(), sandbox_drives.len() + 2, "{held:?}");

    // ... and drops each with RemoveContainer; the other one lives on.
    cri.stop_container(&ids[0], Duration::from_secs(10));
    cri.remove_container(&ids[0]);
    let held = drives();
    assert!(
        !held.contains(&images[0]),
        "first's drive is gone: {held:?}"
    );
    assert!(held.contains(&images[1]), "{held:?}");
    assert_eq!(
        exec_ok(&w, &cri, &ids[1], "cat /mine-second"),
        "second\n",
        "second survives first's removal"
    );
    cri.stop_container(&ids[1], Duration::from_secs(10));
    cri.remove_container(&ids[1]);
    assert_eq!(drives(), sandbox_drives);

    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    assert!(cri.list_pods().is_empty());
    w.assert_capsa_gone();
    w.assert_store_unused();
    w.remove_images_and_wait_empty(&[&image, &pause]);
}

#[test]
fn the_empty_image_on_the_snapshotter_attaches_no_host_device() {
    let w = World::start();
    let pause = w.ctrd.import_pause();
    let empty = w.ctrd.import_empty();
    let cri = w.ctrd.cri();
    // The image has nothing to run: a volume brings busybox.
    let busybox = w.env.dir.path().join("busybox");
    std::fs::copy("/bin/busybox", &busybox).expect("copy /bin/busybox");

    let config = cri.pod_config("emptysnap");
    let pod = cri.run_pod_with(config.clone(), "capsa");
    let mut c = ContainerConfig {
        command: vec!["/bin/busybox".into(), "sleep".into(), "1000".into()],
        ..Cri::container_config("empty", &empty, &[])
    };
    c.mounts = vec![Mount {
        container_path: "/bin/busybox".into(),
        host_path: busybox.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let id = cri.create_container_with(&pod, &config, c);
    cri.start(&id);
    let (out, err, code) = cri.exec_sync(
        &id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox grep ' / ' /proc/mounts | /bin/busybox cut -d' ' -f1,3",
        ],
        EXEC_LIMIT,
    );
    assert_eq!(code, 0, "{out}{err}\n{}", w.ctrd.log_tail());
    // The snapshot of no layer is an empty filesystem image of the store.
    assert!(out.starts_with("/dev/vd") && out.contains(" ext4"), "{out}");
    let image = w.image_of(&id).display().to_string();

    // QEMU's drives: only image files of the store, never a host device.
    let drives = hypervisor_drive_files(&w.env.state_dir, &pod);
    assert!(drives.contains(&image), "{image} not in {drives:?}");
    for drive in &drives {
        assert!(
            Path::new(drive).starts_with(w.snap.images_dir()) && !drive.starts_with("/dev/"),
            "a drive that is not an image of the store: {drive} in {drives:?}"
        );
    }

    cri.stop_pod(&pod);
    cri.remove_container(&id);
    cri.remove_pod(&pod);
    w.assert_capsa_gone();
    w.remove_images_and_wait_empty(&[&empty, &pause]);
}

/// Runs `script` in container `id`; returns its output, failing the test
/// on a non-zero exit.
fn exec_ok(w: &World, cri: &Cri, id: &str, script: &str) -> String {
    let (out, err, code) = cri.exec_sync(id, &["sh", "-c", script], EXEC_LIMIT);
    assert_eq!(code, 0, "{script}: {out}{err}\n{}", w.ctrd.log_tail());
    out
}

//! What the shim shares with a pod's guest, tried as an attacker would
//! (issue 9, holes 1 and 3), through Debian's containerd and `ctr`: a
//! bind mount of a host system path fails task create, naming the mount,
//! with nothing left; what a container makes as root in its rootfs and in
//! a volume is never a device or a set-id file a host user can use.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use capsa_test_infra::share_attack;

use common::{text, Setup};

#[test]
fn a_host_system_path_fails_task_create_with_nothing_left() {
    let s = Setup::new();
    let evil = s.env.dir.path().join("evil");
    std::os::unix::fs::symlink("/", &evil).unwrap();
    let through_symlink = format!("{}/proc", evil.display());
    let cases = [
        ("/proc", "/proc"),
        ("/sys/class/net", "/sys/class/net"),
        ("/dev", "/dev"),
        (through_symlink.as_str(), "is /proc"),
    ];
    for (n, (source, resolved)) in cases.into_iter().enumerate() {
        let id = format!("sys{n}");
        let mount = format!("type=bind,src={source},dst=/x,options=rbind:ro");
        let out = s.run(&["--rm", "--mount", &mount], &id, &["ls", "/x"]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{source} was shared: {out:?}");
        for part in ["mount /x", source, resolved, "host system path"] {
            assert!(stderr.contains(part), "{source}: no {part:?} in {stderr}");
        }
        assert!(out.stdout.is_empty(), "{out:?}");
        // The failed create leaves a container record in containerd only.
        s.ctrd.ctr(&["containers", "delete", &id]);
        s.assert_all_gone();
    }
}

/// The directory of the container's rootfs snapshot on the host: the one
/// that holds the `suid` the container made.
fn snapshot_with(root: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    for e in entries.flatten() {
        let path = e.path();
        let kind = e.file_type().ok()?;
        if kind.is_dir() && !kind.is_symlink() {
            if path.join(name).exists() && path.join("existing").exists() {
                return Some(path);
            }
            if let Some(found) = snapshot_with(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn container_made_devices_and_setid_files_are_inert_on_the_host() {
    let s = Setup::new();
    let top = s.env.dir.path();
    let vol = top.join("vol");
    share_attack::prepare_volume(&vol);
    let mount = format!("type=bind,src={},dst=/vol,options=rbind:rw", vol.display());
    let script = share_attack::SCRIPT;
    // As root with containerd's default capabilities (CAP_MKNOD among them).
    let out = s.run(&["--mount", &mount], "setid", &["sh", "-c", script]);
    assert!(out.status.success(), "{out:?}\n{}", s.ctrd.log_tail());
    share_attack::assert_refused(&text(&out.stdout), &vol);
    // Every directory down to the files searchable by nobody, so what the
    // container made is reachable by a host user.
    let snapshot = snapshot_with(s.ctrd.dir(), "suid").expect("the rootfs snapshot on the host");
    let ctrd_dir = s.ctrd.dir();
    let snapshot_dirs = snapshot.ancestors().take_while(|d| d.starts_with(ctrd_dir));
    for d in snapshot_dirs.chain([top, vol.as_path()]) {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    share_attack::assert_inert(&snapshot);
    share_attack::assert_inert(&vol);
    s.ctrd.ctr(&["task", "delete", "setid"]);
    s.ctrd.ctr(&["containers", "delete", "setid"]);
    s.assert_all_gone();
}

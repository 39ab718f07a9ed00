//! What the shim shares with a pod's guest, tried as an attacker would
//! (issue 9, holes 1 and 3), through Debian's containerd and `ctr`: a
//! bind mount of a host system path fails task create, naming the mount,
//! with nothing left; what a container makes as root in its rootfs and in
//! a volume is never a device or a set-id file a host user can use.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

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

/// Runs `file args` on the host as user nobody (65534) with no groups.
fn as_nobody(file: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    c.arg(file).args(args);
    capsa_test_infra::run_bounded(c, None, Duration::from_secs(20))
}

/// Checks, as a host user, what the guest made in `dir`: no set-id bit, no
/// device node, and neither works for user nobody.
fn assert_inert(dir: &Path) {
    for name in ["suid", "existing"] {
        let path = dir.join(name);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            meta.mode() & 0o6000,
            0,
            "{} is set-id on the host: {:o}",
            path.display(),
            meta.mode()
        );
    }
    // `existing` is the host's coreutils `id`: set-uid root, it would say 0.
    let out = as_nobody(&dir.join("existing"), &["-u"]);
    assert_eq!(text(&out.stdout).trim(), "65534", "{out:?}");
    let node = dir.join("kvm");
    if let Ok(meta) = std::fs::symlink_metadata(&node) {
        let kind = meta.file_type();
        assert!(
            !kind.is_char_device() && !kind.is_block_device(),
            "{} is a device on the host",
            node.display()
        );
    }
    let open = format!("exec 3<> {}", node.display());
    let out = as_nobody(Path::new("/bin/sh"), &["-c", &open]);
    assert!(!out.status.success(), "nobody opened {}", node.display());
}

/// The container's side of the attack, as root with containerd's default
/// capabilities (CAP_MKNOD among them), on `/` (the rootfs snapshot) and
/// `/vol/` (a read-write bind mount); each step prints whether it worked.
const ATTACK: &str = r#"
cp /vol/existing /existing
for d in / /vol/; do
  mknod ${d}kvm c 10 232 && chmod 666 ${d}kvm && echo "mknod $d worked" || echo "mknod $d refused"
  cp /bin/busybox ${d}suid && chmod 4755 ${d}suid && echo "suid $d worked" || echo "suid $d refused"
  chmod 2755 ${d}existing && echo "sgid $d worked" || echo "sgid $d refused"
  chmod 4755 ${d}existing && echo "existing $d worked" || echo "existing $d refused"
done
echo text > /vol/plain && chmod 755 /vol/plain && mkfifo /vol/fifo && ln -s plain /vol/link &&
  mkdir -m 750 /vol/dir && echo "normal work"
"#;

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
    std::fs::create_dir(&vol).unwrap();
    std::fs::copy(capsa_test_infra::tool("id"), vol.join("existing")).unwrap();
    let mount = format!("type=bind,src={},dst=/vol,options=rbind:rw", vol.display());
    let out = s.run(&["--mount", &mount], "setid", &["sh", "-c", ATTACK]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{}", s.ctrd.log_tail());
    for d in ["/", "/vol/"] {
        for step in ["mknod", "suid", "sgid", "existing"] {
            let line = format!("{step} {d} refused");
            assert!(stdout.contains(&line), "no {line:?} in:\n{stdout}");
        }
    }
    assert!(stdout.contains("normal work"), "{stdout}");
    let meta = std::fs::metadata(vol.join("plain")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o755);
    let fifo = std::fs::symlink_metadata(vol.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    // Every directory down to the files searchable by nobody, so what the
    // container made is reachable by a host user.
    let snapshot = snapshot_with(s.ctrd.dir(), "suid").expect("the rootfs snapshot on the host");
    let ctrd_dir = s.ctrd.dir();
    let snapshot_dirs = snapshot.ancestors().take_while(|d| d.starts_with(ctrd_dir));
    for d in snapshot_dirs.chain([top, vol.as_path()]) {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert_inert(&snapshot);
    assert_inert(&vol);
    s.ctrd.ctr(&["task", "delete", "setid"]);
    s.ctrd.ctr(&["containers", "delete", "setid"]);
    s.assert_all_gone();
}

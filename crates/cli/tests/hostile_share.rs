//! What the host shares with a guest, tried as an attacker would (issue 9,
//! holes 1 and 3): host system paths given to `-v`, directly or through a
//! symlink, are refused before anything is made; files the guest makes in
//! the shared rootfs and in a volume are never a set-id program or a device
//! a host user can use. Real VMs.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use capsa_test_infra::{assert_no_leaks, run_bounded, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `capsa run --rootfs <busybox> <opts> -- <cmd>`; nothing may be left.
fn run(env: &TestEnv, opts: &[&str], cmd: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capsa"));
    c.arg("--config").arg(&env.config);
    c.args(["run", "--rootfs"]).arg(&env.rootfs).args(opts);
    c.arg("--").args(cmd);
    let out = run_bounded(c, None, LIMIT);
    assert_no_leaks(&env.state_dir);
    out
}

/// `capsa run -v <volume>` fails, naming the mount and the source, and
/// leaves no state, mount or process.
fn assert_refused(env: &TestEnv, detach: bool, volume: &str, resolved: &str) {
    let mut opts = vec!["-v", volume];
    if detach {
        opts.push("-d");
    }
    let out = run(env, &opts, &["cat", "/x/anything"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{volume} was shared: {out:?}");
    let (source, _) = volume.split_once(':').unwrap();
    for part in ["mount /x", source, resolved, "host system path"] {
        assert!(stderr.contains(part), "{volume}: no {part:?} in {stderr}");
    }
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn host_system_paths_are_refused_with_the_mount_named() {
    let env = TestEnv::new();
    assert_refused(&env, false, "/proc:/x", "/proc");
    assert_refused(&env, false, "/sys/class/net:/x:ro", "/sys/class/net");
    assert_refused(&env, false, "/dev:/x", "/dev");
    assert_refused(&env, true, "/proc/sys:/x", "below /proc");
    // A path that reaches /proc through a symlink (`evil -> /`).
    let evil = env.dir.path().join("evil");
    std::os::unix::fs::symlink("/", &evil).unwrap();
    let volume = format!("{}/proc:/x", evil.display());
    assert_refused(&env, false, &volume, "is /proc");
    assert_refused(&env, true, &volume, "is /proc");
}

/// Runs `file args` on the host as user nobody (65534) with no groups.
fn as_nobody(file: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    c.arg(file).args(args);
    run_bounded(c, None, Duration::from_secs(20))
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
    // The node, if any, opened as nobody: /dev/kvm is 10:232.
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

/// The guest's side of the attack, on `/` (the shared rootfs) and `/vol/`
/// (a read-write volume); each step prints whether it worked.
const ATTACK: &str = r#"
for d in / /vol/; do
  mknod ${d}kvm c 10 232 && chmod 666 ${d}kvm && echo "mknod $d worked" || echo "mknod $d refused"
  cp /bin/busybox ${d}suid && chmod 4755 ${d}suid && echo "suid $d worked" || echo "suid $d refused"
  chmod 2755 ${d}existing && echo "sgid $d worked" || echo "sgid $d refused"
  chmod 4755 ${d}existing && echo "existing $d worked" || echo "existing $d refused"
done
echo text > /vol/plain && chmod 755 /vol/plain && mkfifo /vol/fifo && ln -s plain /vol/link &&
  mkdir -m 750 /vol/dir && touch /tmp/made && echo "normal work"
"#;

#[test]
fn guest_made_devices_and_setid_files_are_inert_on_the_host() {
    let env = TestEnv::new();
    // Every directory on the way is searchable by nobody, so what the
    // guest makes is reachable by a host user.
    let vol = env.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    for d in [env.dir.path(), &env.rootfs, &vol] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let id = capsa_test_infra::tool("id");
    for d in [&env.rootfs, &vol] {
        std::fs::copy(&id, d.join("existing")).unwrap();
    }
    let volume = format!("{}:/vol", vol.display());
    let out = run(&env, &["-v", &volume], &["sh", "-c", ATTACK]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for d in ["/", "/vol/"] {
        for step in ["mknod", "suid", "sgid", "existing"] {
            let line = format!("{step} {d} refused");
            assert!(stdout.contains(&line), "no {line:?} in:\n{stdout}");
        }
    }
    assert!(stdout.contains("normal work"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(vol.join("plain")).unwrap(),
        "text\n"
    );
    let mode = std::fs::metadata(vol.join("plain")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert!(std::fs::symlink_metadata(vol.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(env.rootfs.join("tmp/made").exists());
    assert_inert(&env.rootfs);
    assert_inert(&vol);
}

#[test]
fn a_volume_is_shared_read_write_or_read_only() {
    let env = TestEnv::new();
    let vol = env.dir.path().join("data");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    let rw = format!("{}:/rw", vol.display());
    let ro = format!("{}:/ro:ro", vol.display());
    let script = "cat /ro/in; echo back > /rw/out; echo no > /ro/no || echo ro refused";
    let out = run(&env, &["-v", &rw, "-v", &ro], &["sh", "-c", script]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "from the host\nro refused\n", "{out:?}");
    assert_eq!(std::fs::read_to_string(vol.join("out")).unwrap(), "back\n");
    assert!(!vol.join("no").exists());
}

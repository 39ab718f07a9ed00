//! What the host shares with a guest, tried as an attacker would (issue 9,
//! holes 1 and 3): host system paths given to `-v`, directly or through a
//! symlink, are refused before anything is made; files the guest makes in
//! the shared rootfs and in a volume are never a set-id program or a device
//! a host user can use. Real VMs, on QEMU and on User-Mode Linux (the
//! installed `configuration-uml.toml`: a jailed, unprivileged virtiofsd).

use std::os::unix::fs::PermissionsExt;

use capsa_test_infra::cli::{run, text};
use capsa_test_infra::{share_attack, TestEnv};

/// `capsa run -v <volume>` fails, naming the mount and the source, and
/// leaves no state, mount or process.
fn assert_refused(env: &TestEnv, detach: bool, volume: &str, resolved: &str) {
    let mut opts = vec!["-v", volume];
    if detach {
        opts.push("-d");
    }
    let out = run(env, &opts, &["cat", "/x/anything"], None);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{volume} was shared: {out:?}");
    let (source, _) = volume.split_once(':').unwrap();
    for part in ["mount /x", source, resolved, "host system path"] {
        assert!(stderr.contains(part), "{volume}: no {part:?} in {stderr}");
    }
    assert!(out.stdout.is_empty(), "{out:?}");
}

fn uml_env() -> TestEnv {
    TestEnv::with_installed_config("configuration-uml.toml")
}

#[test]
fn host_system_paths_are_refused_with_the_mount_named() {
    refuses_host_system_paths(&TestEnv::new());
}

#[test]
fn on_uml_host_system_paths_are_refused_with_the_mount_named() {
    refuses_host_system_paths(&uml_env());
}

fn refuses_host_system_paths(env: &TestEnv) {
    assert_refused(env, false, "/proc:/x", "/proc");
    assert_refused(env, false, "/sys/class/net:/x:ro", "/sys/class/net");
    assert_refused(env, false, "/dev:/x", "/dev");
    assert_refused(env, true, "/proc/sys:/x", "below /proc");
    // A path that reaches /proc through a symlink (`evil -> /`).
    let evil = env.dir.path().join("evil");
    std::os::unix::fs::symlink("/", &evil).unwrap();
    let volume = format!("{}/proc:/x", evil.display());
    assert_refused(env, false, &volume, "is /proc");
    assert_refused(env, true, &volume, "is /proc");
}

#[test]
fn guest_made_devices_and_setid_files_are_inert_on_the_host() {
    makes_guest_files_inert(&TestEnv::new());
}

#[test]
fn on_uml_guest_made_devices_and_setid_files_are_inert_on_the_host() {
    makes_guest_files_inert(&uml_env());
}

fn makes_guest_files_inert(env: &TestEnv) {
    let vol = env.dir.path().join("vol");
    share_attack::prepare_volume(&vol);
    // Every directory on the way is searchable by nobody, so what the
    // guest makes is reachable by a host user.
    for d in [env.dir.path(), &env.rootfs, &vol] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let volume = format!("{}:/vol", vol.display());
    let out = run(
        env,
        &["-v", &volume],
        &["sh", "-c", share_attack::SCRIPT],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    share_attack::assert_refused(&text(&out.stdout), &vol);
    share_attack::assert_inert(&env.rootfs);
    share_attack::assert_inert(&vol);
}

#[test]
fn a_volume_is_shared_read_write_or_read_only() {
    shares_volumes_rw_and_ro(&TestEnv::new());
}

#[test]
fn on_uml_a_volume_is_shared_read_write_or_read_only() {
    shares_volumes_rw_and_ro(&uml_env());
}

fn shares_volumes_rw_and_ro(env: &TestEnv) {
    let vol = env.dir.path().join("data");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    let rw = format!("{}:/rw", vol.display());
    let ro = format!("{}:/ro:ro", vol.display());
    let script = "cat /ro/in; echo back > /rw/out; echo no > /ro/no || echo ro refused";
    let out = run(env, &["-v", &rw, "-v", &ro], &["sh", "-c", script], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "from the host\nro refused\n", "{out:?}");
    assert_eq!(std::fs::read_to_string(vol.join("out")).unwrap(), "back\n");
    assert!(!vol.join("no").exists());
}

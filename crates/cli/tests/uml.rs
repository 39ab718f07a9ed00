//! `capsa` on User-Mode Linux: the installed `configuration-uml.toml`
//! (its paths pointed at the test assets' `linux-uml` and `initrd.img`)
//! runs containers, volumes, detached sandboxes, `exec` and the debug
//! console through the same commands as QEMU's configuration; a UML
//! kernel that dies is reported as a dead VM, and nothing is left.
//!
//! Root is required (the driver's jails map ids and chown), as for every
//! `capsa run` test.

use std::os::unix::fs::MetadataExt;

use capsa_test_infra::block::ImageFile;
use capsa_test_infra::cli::{assert_all_gone, capsa, capsa_with_input, run, text, Detached};
use capsa_test_infra::leaks::processes_naming;
use capsa_test_infra::{wait_until, TestEnv};

/// `jail_uid` of `config/configuration-uml.toml`.
const JAIL_UID: u32 = 1_900_000;

fn uml_env() -> TestEnv {
    TestEnv::with_installed_config("configuration-uml.toml")
}

/// [`uml_env`] with the debug console on.
fn uml_env_with_debug_console() -> TestEnv {
    let env = uml_env();
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains("[agent.capsa]\n"), "{text}");
    let text = text.replace(
        "[agent.capsa]\n",
        "[agent.capsa]\ndebug_console_enabled = true\n",
    );
    std::fs::write(&env.config, text).unwrap();
    env
}

/// [`uml_env`] with block device use on: drives are UML ubd disks.
fn uml_env_with_block() -> TestEnv {
    let env = uml_env();
    let text = std::fs::read_to_string(&env.config).unwrap();
    let on = text.replace(
        "disable_block_device_use = true",
        "disable_block_device_use = false",
    );
    assert_ne!(on, text, "the installed file sets disable_block_device_use");
    std::fs::write(&env.config, on).unwrap();
    env
}

/// Whether `pid` is gone (or a zombie).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

#[test]
fn run_true_and_the_workload_sees_the_uml_kernel() {
    let env = uml_env();
    let out = run(&env, &[], &["true"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "", "quiet when all is well");

    let out = run(
        &env,
        &[],
        &[
            "sh",
            "-c",
            "uname -r; grep -c ^processor /proc/cpuinfo; exit 3",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].contains("-um"),
        "a UML kernel: {stdout}"
    );
    assert_eq!(lines[1], "1", "one CPU: {stdout}");
    // `capsa check` names the driver and what the host offers it.
    let out = capsa(&env, &["check"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("driver          User-Mode Linux ([hypervisor.uml])"),
        "{stdout}"
    );
    assert!(stdout.contains("UML kernel      ok: "), "{stdout}");
}

/// UML has one CPU and no hot-plug: a sandbox asking for more runs with
/// one vCPU, and the log says so once.
#[test]
fn asking_for_more_vcpus_runs_with_one_and_says_so_once() {
    let env = uml_env();
    let out = run(
        &env,
        &["--vcpus", "2", "--memory", "256"],
        &["sh", "-c", "grep -c ^processor /proc/cpuinfo"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "1\n");
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("User-Mode Linux has one CPU").count(),
        1,
        "{stderr}"
    );
}

/// `-v`: a directory shared read-write and read-only. The share is
/// idmapped for the jailed virtiofsd: host root's directory is the guest
/// root's, and what the guest's root writes is host root's, as on QEMU;
/// the volume's mount point is made in the rootfs (owned by host root).
/// A file of another host user is not the guest root's to write, and
/// no set-id file can be made.
#[test]
fn volumes_are_shared_read_write_and_read_only() {
    let env = uml_env();
    let vol = env.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    std::fs::write(vol.join("theirs"), "").unwrap();
    std::os::unix::fs::chown(vol.join("theirs"), Some(JAIL_UID + 1), None).unwrap();
    let rw = format!("{}:/data/vol", vol.display());
    let script = "cat /data/vol/in && echo from the guest > /data/vol/out && \
                  stat -c %u /data/vol/out && ! echo x >> /data/vol/theirs && \
                  ! chmod 4755 /data/vol/out";
    let out = run(&env, &["-v", &rw], &["sh", "-c", script], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "from the host\n0\n");
    let written = vol.join("out");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "from the guest\n"
    );
    let meta = std::fs::metadata(&written).unwrap();
    assert_eq!(meta.uid(), 0);
    // No set-uid-root file made on the host through the share.
    assert_eq!(meta.mode() & 0o6000, 0, "{:o}", meta.mode());
    assert_eq!(std::fs::read(vol.join("theirs")).unwrap(), b"");

    let ro = format!("{}:/home:ro", vol.display());
    let out = run(
        &env,
        &["-v", &ro],
        &["sh", "-c", "cat /home/in; echo no > /home/ro-write"],
        None,
    );
    assert!(
        !out.status.success(),
        "a read-only volume was written: {out:?}"
    );
    assert_eq!(text(&out.stdout), "from the host\n");
    assert!(!vol.join("ro-write").exists());
}

/// `run -d`, `ps`, `inspect`, `exec`, `exec --vm` (the debug console) and
/// `rm`, on UML.
#[test]
fn a_detached_sandbox_execs_has_a_debug_console_and_is_removed() {
    let env = uml_env_with_debug_console();
    let sb = Detached::start(&env, "uml-d", &["sleep", "1000"]);
    let out = capsa(&env, &["ps"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("uml-d"), "{out:?}");
    let v = sb.inspect();
    let roles: Vec<&str> = v["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes: {v:#}"))
        .iter()
        .filter_map(|p| p["role"].as_str())
        .collect();
    assert_eq!(roles, ["hypervisor", "shared_fs", "vsock"], "{v:#}");
    // Every process of the VM runs as the jail's uid.
    for p in v["processes"].as_array().unwrap() {
        let pid = p["pid"].as_i64().unwrap();
        let uid = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
        assert_eq!(uid, JAIL_UID, "pid {pid}");
    }

    let out = capsa(
        &env,
        &["exec", "uml-d", "--", "sh", "-c", "echo in $(hostname)"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).starts_with("in "), "{out:?}");

    // The VM's root environment: PID 1 is the agent.
    let out = capsa_with_input(
        &env,
        &["exec", "--vm", "uml-d"],
        b"echo sum=$((6*7)); echo pid1=$(readlink /proc/1/exe); exit\n",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("sum=42"), "{stdout}");
    assert!(stdout.contains("pid1=/init"), "{stdout}");

    let out = capsa(&env, &["rm", "-f", "uml-d"]);
    assert!(out.status.success(), "{out:?}");
    drop(sb);
    assert_all_gone(&env);
}

/// The UML kernel killed from outside: the sandbox's owner sees its VM
/// exit, records the workload killed (137), and nothing of the VM is
/// left (its guest processes, host processes in the kernel's PID
/// namespace, die with it).
#[test]
fn a_killed_uml_kernel_is_reported_exited_and_nothing_is_left() {
    let env = uml_env();
    let sb = Detached::start(&env, "uml-k", &["sleep", "1000"]);
    let kernel = sb.hypervisor_pid();
    let dir = env.state_dir.join("uml-k");
    assert!(!processes_naming(&dir.display().to_string()).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kernel),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let v = sb.wait_state("stopped");
    assert_eq!(v["containers"][0]["exit_code"], 137, "{v:#}");
    assert!(
        wait_until(std::time::Duration::from_secs(10), || gone(kernel)),
        "UML {kernel} still there"
    );
    let left = processes_naming(&dir.display().to_string());
    assert!(left.is_empty(), "VM processes left: {left:?}");
    let out = capsa(&env, &["rm", "uml-k"]);
    assert!(out.status.success(), "{out:?}");
    drop(sb);
    assert_all_gone(&env);
}

/// Block device use on: a rootfs image and image volumes are hot-plugged
/// as ubd disks (the rootfs first: `/dev/ubda`); the container writes its
/// rootfs and the read-write volume, not the read-only one; the host
/// never mounts them, and nothing is left.
#[test]
fn a_rootfs_image_and_block_volumes_are_ubd_disks() {
    let env = uml_env_with_block();
    let data_dir = env.dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("hello"), "from the host\n").unwrap();
    let root = ImageFile::ext4(env.dir.path(), 64, Some(&env.rootfs));
    let rw = ImageFile::ext4(env.dir.path(), 16, Some(&data_dir));
    let ro = ImageFile::ext4(env.dir.path(), 16, Some(&data_dir));
    let (img, rw_volume, ro_volume) = (
        root.path().display().to_string(),
        format!("{}:/rw", rw.path().display()),
        format!("{}:/ro:ro", ro.path().display()),
    );
    let script = "grep ' / ' /proc/mounts | cut -d' ' -f1,3; cat /rw/hello; \
                  echo x > /rw/new; echo y > /ro/new 2>/dev/null || echo refused; \
                  echo kept > /written";
    let out = capsa(
        &env,
        &[
            "run",
            "--rootfs-image",
            &img,
            "-v",
            &rw_volume,
            "-v",
            &ro_volume,
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "/dev/ubda ext4\nfrom the host\nrefused\n",
        "{out:?}"
    );
    assert_eq!(root.text("/written").as_deref(), Some("kept\n"));
    assert_eq!(rw.text("/new").as_deref(), Some("x\n"));
    assert_eq!(ro.text("/new"), None, "the read-only image is unchanged");
    for image in [&root, &rw, &ro] {
        assert!(!image.used_by_host(), "{}", image.path().display());
    }
    assert_all_gone(&env);
}

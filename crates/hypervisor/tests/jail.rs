//! `capsa_hypervisor::jail` on real processes: a static busybox confined,
//! asserted from the host (`/proc/PID/status`, `/proc/PID/ns`, cgroups,
//! limits) and from inside (what it can open, what a syscall outside its
//! allow-list does). Root is required (id maps, cgroups).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_hypervisor::jail::{
    self, BindMount, Deny, Identity, JailConfig, JailError, JailedProcess, Limits, SeccompProfile,
    Tmpfs,
};
use capsa_test_infra::wait_until;

const BUSYBOX: &str = "/usr/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "cat", "ls", "id", "mkdir", "sleep", "hostname", "touch",
];
const WAIT: Duration = Duration::from_secs(10);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the jail tests need root: they map ids into user namespaces and join cgroups"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing (Debian's busybox-static)"
    );
}

/// An identity of its own per test: nothing else on the host runs as it.
fn identity(n: u32) -> Identity {
    let id = 1_990_000 + (std::process::id() % 1000) * 10 + n;
    Identity { uid: id, gid: id }
}

/// What busybox's shell and the applets used here call, without
/// `mkdir`/`mkdirat`: the syscall the tests expect refused.
fn busybox_profile() -> SeccompProfile {
    SeccompProfile::new("busybox-test", Deny::Errno(libc::EPERM)).allow(&[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_openat,
        libc::SYS_open,
        libc::SYS_close,
        libc::SYS_lseek,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_statx,
        libc::SYS_readlink,
        libc::SYS_getdents64,
        libc::SYS_ioctl,
        libc::SYS_fcntl,
        libc::SYS_dup2,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_brk,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigsuspend,
        libc::SYS_wait4,
        libc::SYS_clone,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_getpid,
        libc::SYS_getppid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        // busybox drops set-id privileges it does not have at start.
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_uname,
        libc::SYS_umask,
        libc::SYS_prlimit64,
        libc::SYS_getrlimit,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_sendfile,
        libc::SYS_utimensat,
        libc::SYS_prctl,
        libc::SYS_arch_prctl,
        libc::SYS_set_tid_address,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_getrandom,
        libc::SYS_getcwd,
        libc::SYS_chdir,
        libc::SYS_access,
        libc::SYS_kill,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ])
}

/// A cgroup made for one test, removed when dropped (once empty).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(tag: &str) -> Self {
        // A v1 `pids` hierarchy on hybrid hosts, else the v2 root.
        let base = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("no cgroup hierarchy with cgroup.procs under /sys/fs/cgroup");
        let dir = base.join(format!("capsa-jail-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self(dir)
    }

    /// The line of `/proc/PID/cgroup` naming this cgroup ends with this.
    fn suffix(&self) -> String {
        format!(":/{}", self.0.file_name().unwrap().to_string_lossy())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let gone = wait_until(WAIT, || std::fs::remove_dir(&self.0).is_ok());
        if !gone && !std::thread::panicking() {
            panic!("cgroup {} not removed", self.0.display());
        }
    }
}

/// busybox in a jail: `/bin/busybox` and its applets as links, `/dev/null`,
/// a small `/tmp`, its own `/proc`; output to `out`.
fn busybox_jail(name: &str, id: Identity, args: &[&str], out: &File) -> JailConfig {
    let mut cfg = JailConfig::new(name, "/bin/busybox", id, busybox_profile());
    cfg.args = args.iter().map(|s| s.to_string()).collect();
    cfg.env = vec![("PATH".into(), "/bin".into())];
    cfg.binds = vec![
        BindMount::read_only(BUSYBOX).at("/bin/busybox"),
        BindMount::read_only("/dev/null"),
    ];
    cfg.symlinks = APPLETS
        .iter()
        .map(|a| (PathBuf::from(format!("/bin/{a}")), PathBuf::from("busybox")))
        .collect();
    cfg.tmpfs = vec![Tmpfs {
        target: "/tmp".into(),
        size_bytes: 1 << 20,
        noexec: true,
    }];
    cfg.proc = true;
    cfg.new_network = true;
    cfg.limits = Limits {
        open_files: 64,
        processes: 256,
        address_space: Some(1 << 30),
        file_size: Some(1 << 20),
    };
    let fd = |f: &File| OwnedFd::from(f.try_clone().unwrap());
    cfg.fds = vec![(fd(out), 1), (fd(out), 2)];
    cfg
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Host pids whose `kind` namespace is `id` (`pid:[4026...]`).
fn processes_in(kind: &str, id: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ns(&pid.to_string(), kind) == id)
        .collect()
}

#[tokio::test]
async fn seen_from_the_host_the_jail_is_confined_and_leaves_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = File::create(dir.path().join("out")).unwrap();
    let cgroup = TestCgroup::new("host");
    let id = identity(1);
    let mut cfg = busybox_jail(
        "host-view",
        id,
        &["sh", "-c", "sleep 600 & sleep 601; :"],
        &out,
    );
    cfg.cgroups = vec![cgroup.0.clone()];
    let mut jailed: JailedProcess = jail::spawn(cfg).expect("spawn");
    let pid = jailed.pid();
    let pid_ns = ns(&pid.to_string(), "pid");
    let mnt_ns = ns(&pid.to_string(), "mnt");
    assert!(
        wait_until(WAIT, || processes_in("pid", &pid_ns).len() == 3),
        "the shell and its two sleeps: {:?}",
        processes_in("pid", &pid_ns)
    );
    let all = processes_in("pid", &pid_ns);
    for p in &all {
        assert_eq!(status_field(*p, "Seccomp"), "2", "pid {p}");
        assert_eq!(status_field(*p, "NoNewPrivs"), "1", "pid {p}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status_field(*p, caps), "0000000000000000", "{caps} of {p}");
        }
        let uid = id.uid.to_string();
        assert_eq!(status_field(*p, "Uid"), [uid.as_str(); 4].join("\t"));
        let gid = id.gid.to_string();
        assert_eq!(status_field(*p, "Gid"), [gid.as_str(); 4].join("\t"));
        assert_eq!(status_field(*p, "Groups"), "", "no supplementary group");
        for kind in ["user", "mnt", "pid", "ipc", "uts", "net", "cgroup"] {
            let theirs = ns(&p.to_string(), kind);
            assert!(!theirs.is_empty());
            assert_ne!(theirs, ns("self", kind), "{kind} namespace of {p}");
        }
        let cgroups = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap();
        assert!(
            cgroups.lines().any(|l| l.ends_with(&cgroup.suffix())),
            "pid {p} not in {}: {cgroups}",
            cgroup.0.display()
        );
        let limits = std::fs::read_to_string(format!("/proc/{p}/limits")).unwrap();
        for (what, value) in [
            ("Max open files", "64"),
            ("Max processes", "256"),
            ("Max core file size", "0"),
            ("Max file size", "1048576"),
            ("Max address space", "1073741824"),
        ] {
            let line = limits.lines().find(|l| l.starts_with(what)).unwrap();
            let fields: Vec<&str> = line[what.len()..].split_whitespace().collect();
            assert_eq!(&fields[..2], [value, value], "{line}");
        }
    }
    jailed.kill().unwrap();
    let status = tokio::time::timeout(WAIT, jailed.wait())
        .await
        .expect("the jail did not exit after SIGKILL")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // No process of the jail is left, so its mount namespace, which held
    // all its mounts, is gone too.
    assert!(
        wait_until(WAIT, || processes_in("pid", &pid_ns).is_empty()),
        "left behind: {:?}",
        processes_in("pid", &pid_ns)
    );
    assert!(processes_in("mnt", &mnt_ns).is_empty());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(jail::root::HOST), "{mountinfo}");
    drop(cgroup);
}

/// Runs `script` in the busybox jail; returns its output and exit code.
async fn run_inside(script: &str, id: Identity) -> (String, Option<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let out = File::create(&path).unwrap();
    let cfg = busybox_jail("inside", id, &["sh", "-c", script], &out);
    let mut jailed = jail::spawn(cfg).expect("spawn");
    let status = tokio::time::timeout(WAIT, jailed.wait())
        .await
        .expect("the script did not finish")
        .unwrap();
    (std::fs::read_to_string(&path).unwrap(), status.code())
}

#[tokio::test]
async fn inside_the_jail_only_the_binds_exist_and_the_allow_list_holds() {
    require_root();
    let id = identity(2);
    let script = "\
        echo ids $(id -u) $(id -g); \
        echo root: $(ls /); \
        echo dev: $(ls /dev); \
        cat /etc/shadow; echo shadow=$?; \
        ls /root; echo slash-root=$?; \
        cat /proc/1/root/etc/passwd; echo via-proc=$?; \
        touch /new; echo root-write=$?; \
        echo data > /tmp/f; echo tmp-write=$?; \
        mkdir /tmp/d; echo mkdir=$?; \
        echo limits $(ulimit -n) $(ulimit -u) $(ulimit -c); \
        echo host $(hostname); \
        echo pid $$";
    let (out, code) = run_inside(script, id).await;
    assert_eq!(code, Some(0), "{out}");
    let expect = |line: &str| {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        )
    };
    expect(&format!("ids {} {}", id.uid, id.gid));
    expect("root: bin dev proc tmp");
    expect("dev: null");
    // Nothing of the host outside the binds: not by path, not through /proc.
    expect("cat: can't open '/etc/shadow': No such file or directory");
    expect("shadow=1");
    expect("slash-root=1");
    expect("via-proc=1");
    // The root is read-only; the tmpfs is writable; mkdir is not in the
    // allow-list, so it fails with EPERM although /tmp is writable.
    expect("root-write=1");
    expect("tmp-write=0");
    expect("mkdir: can't create directory '/tmp/d': Operation not permitted");
    expect("mkdir=1");
    expect("limits 64 256 0");
    expect("host capsa");
    expect("pid 1");
}

#[tokio::test]
async fn a_failing_step_is_named_and_nothing_is_left() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = File::create(dir.path().join("out")).unwrap();
    let mut cfg = busybox_jail("missing", identity(3), &[], &out);
    cfg.program = "/bin/nonexistent".into();
    let err = jail::spawn(cfg).unwrap_err();
    assert!(matches!(err, JailError::Setup { .. }), "{err:?}");
    assert_eq!(err.to_string(), "jail missing: exec /bin/nonexistent");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("ENOENT"), "{source}");

    let mut cfg = busybox_jail("root-id", identity(4), &[], &out);
    cfg.identity = Identity { uid: 0, gid: 0 };
    let err = jail::spawn(cfg).unwrap_err();
    assert_eq!(
        err.to_string(),
        "jail root-id: uid must not be 0 (root on the host)"
    );

    let mut cfg = busybox_jail("bad-bind", identity(5), &[], &out);
    cfg.binds
        .push(BindMount::read_only("/nonexistent/capsa-jail"));
    let err = jail::spawn(cfg).unwrap_err();
    assert_eq!(
        err.to_string(),
        "jail bad-bind: bind source /nonexistent/capsa-jail"
    );
}

#[tokio::test]
async fn a_killing_profile_kills_the_process_that_steps_outside() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let out = File::create(&path).unwrap();
    // A forked mkdir dies alone; the shell goes on. Then the shell
    // itself (PID 1) becomes mkdir and dies, and the jail with it.
    let mut cfg = busybox_jail(
        "kill",
        identity(6),
        &[
            "sh",
            "-c",
            "echo before; mkdir /tmp/d; echo status $?; exec mkdir /tmp/d; echo after",
        ],
        &out,
    );
    cfg.seccomp.deny = Deny::KillProcess;
    let mut jailed = jail::spawn(cfg).expect("spawn");
    let status = tokio::time::timeout(WAIT, jailed.wait())
        .await
        .expect("not killed")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    let output = std::fs::read_to_string(&path).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{output}");
    let sigsys = 128 + libc::SIGSYS;
    assert_eq!(
        output,
        format!("before\nBad system call\nstatus {sigsys}\n"),
        "the first mkdir dies of SIGSYS, the second takes PID 1 with it"
    );
}

/// The UML kernel (`linux-uml` of the UML kernel issue) boots an initrd
/// in its jail, under its own profile: its guest processes fork, exec and
/// loop, all confined.
#[tokio::test]
async fn a_uml_kernel_boots_in_its_jail() {
    require_root();
    // `$CAPSA_UML_KERNEL`, else the assets' (`make assets`).
    let kernel = std::env::var_os("CAPSA_UML_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let assets = std::env::var_os("CAPSA_TEST_ASSETS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/capsa/assets"));
            assets.join("linux-uml")
        });
    assert!(
        kernel.is_file(),
        "{} is missing: capsa's UML kernel (`make assets`, or CAPSA_UML_KERNEL)",
        kernel.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    write_initrd(&initrd);
    let path = dir.path().join("out");
    let out = File::create(&path).unwrap();
    let mut cfg = JailConfig::new(
        "uml",
        "/uml/linux",
        identity(7),
        jail::profiles::uml_kernel(),
    );
    cfg.seccomp.deny = match std::env::var("CAPSA_JAIL_DENY").as_deref() {
        Ok("log") => Deny::Log,
        Ok("kill") => Deny::KillProcess,
        _ => cfg.seccomp.deny,
    };
    cfg.args = [
        "mem=64M",
        "initrd=/uml/initrd",
        "rdinit=/init",
        "con0=fd:0,fd:1",
        "con=null",
    ]
    .map(String::from)
    .to_vec();
    cfg.env = vec![
        ("HOME".into(), "/tmp".into()),
        ("TMPDIR".into(), "/tmp".into()),
    ];
    cfg.binds = vec![
        BindMount::read_only(&kernel).at("/uml/linux"),
        BindMount::read_only(&initrd).at("/uml/initrd"),
        BindMount::read_only("/dev/null"),
    ];
    cfg.binds.extend(
        shared_libraries(&kernel)
            .into_iter()
            .map(BindMount::read_only),
    );
    // UML's RAM is a file in TMPDIR, mapped executable.
    cfg.tmpfs = vec![Tmpfs {
        target: "/tmp".into(),
        size_bytes: 128 << 20,
        noexec: false,
    }];
    cfg.new_network = true;
    cfg.limits.processes = 256;
    let fd = |f: &File| OwnedFd::from(f.try_clone().unwrap());
    // The guest's console reads this pipe: init waits on it.
    let (console, go) = nix::unistd::pipe().unwrap();
    let mut go = File::from(go);
    cfg.fds = vec![(console, 0), (fd(&out), 1), (fd(&out), 2)];
    let mut jailed = jail::spawn(cfg).expect("spawn");
    let text = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || text().contains("waiting")),
        "init did not start:\n{}",
        text()
    );
    // The kernel process, its guest processes (init and its shell's
    // children), its helpers: all confined alike.
    let pid_ns = ns(&jailed.pid().to_string(), "pid");
    let all = processes_in("pid", &pid_ns);
    assert!(all.len() >= 2, "{all:?}");
    for p in &all {
        assert_eq!(status_field(*p, "Seccomp"), "2", "pid {p}");
        assert_eq!(status_field(*p, "NoNewPrivs"), "1", "pid {p}");
        assert_eq!(status_field(*p, "CapEff"), "0000000000000000", "pid {p}");
        assert_eq!(status_field(*p, "CapBnd"), "0000000000000000", "pid {p}");
        assert_ne!(ns(&p.to_string(), "mnt"), ns("self", "mnt"), "pid {p}");
    }
    use std::io::Write;
    go.write_all(b"go\n").unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), jailed.wait())
        .await
        .expect("UML did not power off")
        .unwrap();
    let output = text();
    for line in ["UML-INIT-OK", "loop-done 20", "got go"] {
        assert!(
            output.lines().any(|l| l.trim_end() == line),
            "no {line} in:\n{output}"
        );
    }
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(processes_in("pid", &pid_ns).is_empty());
}

/// A gzip-less newc initramfs: busybox and an `/init` that forks and execs,
/// waits for a line on its console, and powers off.
fn write_initrd(path: &Path) {
    let dir = path.with_extension("d");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    let init = "#!/bin/busybox sh\n\
        /bin/busybox echo UML-INIT-OK\n\
        i=0; while [ $i -lt 20 ]; do /bin/busybox true; i=$((i+1)); done\n\
        /bin/busybox echo loop-done $i\n\
        /bin/busybox echo waiting\n\
        read x\n\
        /bin/busybox echo got $x\n\
        /bin/busybox poweroff -f\n";
    std::fs::write(dir.join("init"), init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            dir.display(),
            path.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio");
}

/// The shared libraries `binary` loads, with its interpreter (from `ldd`).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// A directory the jail's uid owns, under a test directory it can cross.
fn owned_dir(parent: &Path, name: &str, id: Identity) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711)).unwrap();
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(id.uid), Some(id.gid)).unwrap();
    dir
}

/// A vhost-user helper in its jail: binary and libraries read-only, its
/// socket directory writable at `/run/sockets`, its own `/proc`.
fn helper_jail(program: &str, profile: SeccompProfile, id: Identity, sockets: &Path) -> JailConfig {
    let mut cfg = JailConfig::new(profile.name.clone(), program, id, profile);
    cfg.seccomp.deny = match std::env::var("CAPSA_JAIL_DENY").as_deref() {
        Ok("log") => Deny::Log,
        _ => Deny::KillProcess,
    };
    cfg.binds = vec![
        BindMount::read_only(program),
        BindMount::read_only("/dev/null"),
        BindMount::read_write(sockets).at("/run/sockets"),
    ];
    cfg.binds.extend(
        shared_libraries(Path::new(program))
            .into_iter()
            .map(BindMount::read_only),
    );
    // virtiofsd reopens files through /proc/self/fd.
    cfg.proc = true;
    cfg.new_network = true;
    cfg
}

fn with_output(mut cfg: JailConfig, args: &[&str], out: &File) -> JailedProcess {
    cfg.args = args.iter().map(|s| s.to_string()).collect();
    let fd = |f: &File| OwnedFd::from(f.try_clone().unwrap());
    cfg.fds = vec![(fd(out), 1), (fd(out), 2)];
    jail::spawn(cfg).expect("spawn")
}

#[tokio::test]
async fn the_vhost_user_helpers_start_in_their_jails() {
    require_root();
    for bin in [
        "/usr/local/bin/virtiofsd",
        "/usr/local/bin/vhost-device-vsock",
    ] {
        assert!(Path::new(bin).exists(), "{bin} missing (make installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let id = identity(8);
    let sockets = owned_dir(dir.path(), "sockets", id);
    let share = owned_dir(dir.path(), "share", id);
    let log = dir.path().join("log");
    let out = File::create(&log).unwrap();
    let mut cfg = helper_jail(
        "/usr/local/bin/virtiofsd",
        jail::profiles::virtiofsd(),
        id,
        &sockets,
    );
    cfg.binds.push(BindMount::read_write(&share).at("/share"));
    let mut fs = with_output(
        cfg,
        &[
            "--socket-path=/run/sockets/fs.sock",
            "--shared-dir=/share",
            "--sandbox=none",
            // The jail sets the limit.
            "--rlimit-nofile=0",
            "--tag=kataShared",
        ],
        &out,
    );
    let cfg = helper_jail(
        "/usr/local/bin/vhost-device-vsock",
        jail::profiles::vhost_device_vsock(),
        id,
        &sockets,
    );
    let mut vsock = with_output(
        cfg,
        &[
            "--vm",
            "guest-cid=3,socket=/run/sockets/vsock.sock,uds-path=/run/sockets/vsock",
        ],
        &out,
    );
    let ready = wait_until(WAIT, || {
        sockets.join("fs.sock").exists() && sockets.join("vsock.sock").exists()
    });
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready, "sockets missing; log:\n{}", text());
    for p in [&mut fs, &mut vsock] {
        assert_eq!(
            p.try_wait().unwrap(),
            None,
            "{} exited; log:\n{}",
            p.name(),
            text()
        );
        assert_eq!(status_field(p.pid(), "Seccomp"), "2");
        assert_eq!(status_field(p.pid(), "CapEff"), "0000000000000000");
        p.kill().unwrap();
        let status = tokio::time::timeout(WAIT, p.wait()).await.unwrap().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{}: {}",
            p.name(),
            text()
        );
    }
}

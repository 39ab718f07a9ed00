//! capsa's User-Mode Linux kernel (`linux-uml` in the test assets, built
//! from `kernel/um/` and `kernel/patches/um/`) boots a busybox init from an
//! initramfs, mounts a virtio-fs share served by `virtiofsd` and talks to
//! the host over vsock through `vhost-device-vsock` (hybrid vsock: the guest
//! connects to host port P, the host listens on `<uds-path>_P`). The guest
//! also checks what it must not see or do: mount hostfs, find the host's
//! kernel release or host name in `/proc/cpuinfo` or `/proc/version`.
//!
//! The guest's RAM is UML's unlinked physmem file (in `TMPDIR`): the test
//! checks that both vhost-user daemons map that very file, which they only
//! can through the memory table's file descriptor.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use capsa_test_infra::{tool, wait_until};

/// Guest port the init connects to.
const PORT: u32 = 1234;
/// virtio-fs tag (virtio_uml reads it from the device's configuration,
/// which virtiofsd only offers with `--tag`).
const TAG: &str = "umlshare";
/// What the share holds for the guest to read back.
const SHARED_TEXT: &str = "hello from the host share";

/// The guest's vsock client: connects to the host (CID 2) on `argv[1]`,
/// sends its stdin, then copies the host's one-line reply to stdout. No
/// half-close: vhost-device-vsock ends the whole Unix stream on a guest's
/// shutdown. Busybox has no AF_VSOCK client.
const VSOCK_CLIENT: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>
int main(int argc, char **argv) {
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = 2 };
    char buf[4096];
    ssize_t n;
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (argc < 2 || s < 0) { perror("socket"); return 1; }
    a.svm_port = atoi(argv[1]);
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); return 1; }
    while ((n = read(0, buf, sizeof(buf))) > 0)
        if (write(s, buf, n) != n) { perror("write"); return 1; }
    while ((n = read(s, buf, sizeof(buf))) > 0) {
        if (write(1, buf, n) != n) return 1;
        if (buf[n - 1] == '\n') break;
    }
    return 0;
}
"#;

/// The guest's init: mounts, reads the share, reports over vsock, waits for
/// the host's "bye" (so the host can inspect the running processes), powers
/// off.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt /hostfs
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "capsa-uml-init: started"
if mount -t virtiofs {TAG} /mnt; then share="$(cat /mnt/hello.txt)"; else share="mount failed"; fi
if mount -t hostfs none /hostfs 2>/dev/null; then hostfs=mounted; else hostfs=refused; fi
{{
  echo "share: $share"
  echo "hostfs: $hostfs"
  echo "hostfs-registered: $(grep -c hostfs /proc/filesystems)"
  echo "--- cpuinfo"
  cat /proc/cpuinfo
  echo "--- version"
  cat /proc/version
  echo "--- end"
}} | /bin/vsock-send {PORT}
echo "capsa-uml-init: powering off"
poweroff -f
"#
    )
}

/// The UML kernel under test.
fn uml_kernel() -> PathBuf {
    let dir = std::env::var_os("CAPSA_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/capsa/assets"));
    let kernel = dir.join("linux-uml");
    assert!(
        kernel.is_file(),
        "{} is missing: run `make assets` (capsa's UML kernel, kernel/um/), or set CAPSA_TEST_ASSETS",
        kernel.display()
    );
    kernel
}

/// Builds the initramfs (newc cpio, by Debian's cpio) in `dir`.
fn build_initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("initramfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(tool("busybox"), root.join("bin/busybox")).unwrap();
    let src = dir.join("vsock-send.c");
    std::fs::write(&src, VSOCK_CLIENT).unwrap();
    let out = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(root.join("bin/vsock-send"))
        .arg(&src)
        .output()
        .expect("cc (gcc) is needed to build the guest's vsock client");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let init = root.join("init");
    std::fs::write(&init, init_script()).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();

    let image = dir.join("initramfs.cpio");
    let list = ["init", "bin", "bin/busybox", "bin/vsock-send"].join("\n") + "\n";
    let mut cpio = Command::new(tool("cpio"))
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&image).unwrap())
        .spawn()
        .expect("cpio");
    cpio.stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    assert!(cpio.wait().unwrap().success(), "cpio failed");
    image
}

/// The `dev:inode` of every deleted file under `dir` that `pid` maps.
fn mapped_deleted_files(pid: u32, dir: &Path) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut files: Vec<String> = maps
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5..)?.join(" ");
            (path.starts_with(&*dir.to_string_lossy()) && path.ends_with("(deleted)"))
                .then(|| format!("{}:{}", f[3], f[4]))
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Pids of the processes whose environment holds `marker` (the ones this
/// test started and their children, which inherit it).
fn processes_with(marker: &str) -> Vec<u32> {
    let needle = format!("CAPSA_UML_TEST={marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Kills and reaps the test's processes, should an assertion fail midway.
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The host's `what` (`hostname`, `osrelease`) from /proc/sys/kernel.
fn host_kernel_value(what: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/kernel/{what}"))
        .unwrap()
        .trim()
        .to_string()
}

/// Whether `text` holds `word` delimited by non-alphanumeric characters
/// (host names such as "vm" are also parts of CPU flags like "vme").
fn contains_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '.' || c == '_'))
        .any(|w| w == word)
}

#[test]
fn uml_kernel_boots_with_virtio_fs_and_vsock() {
    let kernel = uml_kernel();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().to_string_lossy().into_owned();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), SHARED_TEXT).unwrap();
    let initramfs = build_initramfs(dir.path());
    // UML wants its memory file on tmpfs.
    let mem = tempfile::tempdir_in("/dev/shm").unwrap();
    let mem_dir = mem.path().to_path_buf();

    let fs_sock = dir.path().join("fs.sock");
    let vsock_sock = dir.path().join("vsock.sock");
    let uds = dir.path().join("vsock.uds");
    let listener = UnixListener::bind(format!("{}_{PORT}", uds.display())).unwrap();

    let mut reaper = Reaper(Vec::new());
    let virtiofsd = Command::new(tool("virtiofsd"))
        .arg(format!("--socket-path={}", fs_sock.display()))
        .arg(format!("--shared-dir={}", share.display()))
        .arg(format!("--tag={TAG}"))
        .args(["--cache=auto", "--sandbox=none"])
        .env("CAPSA_UML_TEST", &marker)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("virtiofsd.log")).unwrap())
        .spawn()
        .expect("virtiofsd");
    let virtiofsd_pid = virtiofsd.id();
    reaper.0.push(virtiofsd);
    let vsockd = Command::new(tool("vhost-device-vsock"))
        .arg("--vm")
        .arg(format!(
            "guest-cid=3,socket={},uds-path={}",
            vsock_sock.display(),
            uds.display()
        ))
        .env("CAPSA_UML_TEST", &marker)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("vsock.log")).unwrap())
        .spawn()
        .expect("vhost-device-vsock");
    let vsockd_pid = vsockd.id();
    reaper.0.push(vsockd);
    assert!(
        wait_until(Duration::from_secs(10), || fs_sock.exists()
            && vsock_sock.exists()),
        "the vhost-user daemons did not create their sockets"
    );

    let start = Instant::now();
    let mut uml = Command::new(&kernel)
        .arg("mem=128M")
        .arg(format!("initrd={}", initramfs.display()))
        .arg(format!("virtio_uml.device={}:26", fs_sock.display()))
        .arg(format!("virtio_uml.device={}:19", vsock_sock.display()))
        .arg("quiet")
        .env("TMPDIR", &mem_dir)
        .env("CAPSA_UML_TEST", &marker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("linux-uml");
    let uml_pid = uml.id();
    // The console: every line with the time it arrived.
    let (tx, console) = mpsc::channel::<(Duration, String)>();
    for out in [
        Box::new(uml.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(uml.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((start.elapsed(), line));
            }
        });
    }
    drop(tx);
    reaper.0.push(uml);

    // The guest's report, over vsock.
    listener.set_nonblocking(true).unwrap();
    let mut stream = None;
    wait_until(Duration::from_secs(60), || {
        stream = listener.accept().ok().map(|(s, _)| s);
        stream.is_some()
    });
    let console_so_far = || -> String {
        console
            .try_iter()
            .map(|(_, l)| l + "\n")
            .collect::<String>()
    };
    let Some(mut stream) = stream else {
        panic!(
            "the guest did not connect over vsock; console:\n{}",
            console_so_far()
        );
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut report = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    while !report.ends_with("--- end\n") {
        let before = report.len();
        reader.read_line(&mut report).unwrap();
        assert!(
            report.len() > before,
            "the guest's report ended early:\n{report}"
        );
    }

    // Guest RAM: UML's unlinked file, mapped by both daemons through the
    // memory table's descriptor.
    let uml_mem = mapped_deleted_files(uml_pid, &mem_dir);
    assert!(
        !uml_mem.is_empty(),
        "UML maps no memory file in {}",
        mem_dir.display()
    );
    for (name, pid) in [
        ("virtiofsd", virtiofsd_pid),
        ("vhost-device-vsock", vsockd_pid),
    ] {
        let theirs = mapped_deleted_files(pid, &mem_dir);
        assert!(
            theirs.iter().any(|f| uml_mem.contains(f)),
            "{name} does not map the guest's memory file ({uml_mem:?}; it maps {theirs:?})"
        );
    }
    stream.write_all(b"bye\n").unwrap();
    drop(stream);

    let uml = reaper.0.last_mut().unwrap();
    let exited = wait_until(Duration::from_secs(30), || {
        matches!(uml.try_wait(), Ok(Some(_)))
    });
    let total = start.elapsed();
    let status = uml.wait().unwrap();
    let lines: Vec<(Duration, String)> = console.iter().collect();
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert!(exited, "UML did not power off; console:\n{text}");
    assert!(
        status.success(),
        "UML exited with {status}; console:\n{text}"
    );
    let init_at = lines
        .iter()
        .find(|(_, l)| l.contains("capsa-uml-init: started"))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("init did not start; console:\n{text}"));
    eprintln!(
        "UML timings: start to init {} ms, start to power-off {} ms",
        init_at.as_millis(),
        total.as_millis()
    );

    assert!(
        report.contains(&format!("share: {SHARED_TEXT}\n")),
        "report:\n{report}"
    );
    assert!(report.contains("hostfs: refused\n"), "report:\n{report}");
    assert!(
        report.contains("hostfs-registered: 0\n"),
        "report:\n{report}"
    );
    assert!(report.contains("--- end\n"), "report:\n{report}");
    let cpuinfo_version = report
        .split("--- cpuinfo\n")
        .nth(1)
        .unwrap()
        .split("--- end\n")
        .next()
        .unwrap();
    assert!(
        cpuinfo_version.contains("Linux version"),
        "report:\n{report}"
    );
    for (what, secret) in [
        ("kernel release", host_kernel_value("osrelease")),
        ("host name", host_kernel_value("hostname")),
    ] {
        assert!(
            !contains_word(cpuinfo_version, &secret),
            "the host's {what} ({secret}) is visible in the guest:\n{cpuinfo_version}"
        );
    }

    // virtiofsd ends with its VM; vhost-device-vsock serves the next one
    // until it is told to stop.
    let virtiofsd = &mut reaper.0[0];
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            virtiofsd.try_wait(),
            Ok(Some(_))
        )),
        "virtiofsd did not exit with its VM"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vsockd_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    reaper.0[1].wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || processes_with(&marker)
            .is_empty()),
        "processes the test started are still running: {:?}",
        processes_with(&marker)
    );
}

//! Shared infrastructure of capsa's integration tests.
//!
//! Tests boot real VMs: they need the guest assets built by `make assets`
//! (`$CAPSA_TEST_ASSETS`, default `/var/cache/capsa/assets`), QEMU, virtiofsd
//! and vhost-device-vsock. A missing piece fails the test with a message
//! saying what to run; nothing is skipped silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod block;
pub mod cgroup;
pub mod cli;
pub mod cni;
pub mod containerd;
pub mod leaks;
pub mod net;
pub mod netns;
pub mod otlp;
pub mod prometheus; // metrics hook
pub mod rootfs;
pub mod share_attack;
pub mod snapshotter;

/// How often [`wait_until`] and [`wait_until_async`] look again.
const POLL: Duration = Duration::from_millis(50);

/// Polls `cond` until it holds or `limit` has passed; whether it held.
/// For conditions nothing announces (a file, a process state, a counter).
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    cond()
}

/// [`wait_until`] for async tests: polls the future `cond` makes (an
/// agent call, a guest's state) without blocking the runtime.
pub async fn wait_until_async<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    cond().await
}

/// `RUNS`, the samples of each measurement of a benchmark: `default` when
/// unset or not a number.
pub fn bench_runs(default: usize) -> usize {
    std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

pub use leaks::assert_no_leaks;

/// Directory with `vmlinuz` and `initrd.img`.
pub fn assets_dir() -> PathBuf {
    let dir = std::env::var_os("CAPSA_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/capsa/assets"));
    for f in ["vmlinuz", "initrd.img"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: run `make assets` (or set CAPSA_TEST_ASSETS)",
            dir.join(f).display()
        );
    }
    dir
}

/// The root image of the test assets (`capsa.img`, Kata's DAX layout) and
/// its boot initrd next to it, which `make assets` builds.
pub fn image_path() -> PathBuf {
    let dir = assets_dir();
    let image = dir.join("capsa.img");
    for f in [image.clone(), dir.join("capsa.img.initrd")] {
        assert!(
            f.is_file(),
            "{} is missing: run `make assets` (it builds the image with `capsa assets build --image`)",
            f.display()
        );
    }
    image
}

/// Tool paths; the Makefile installs them here (Debian's system tools,
/// `losetup`, `mkfs.ext4`, `debugfs`, are in the sbin directories).
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/bin", "/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run `make deps`");
}

/// `containerd-shim-capsa-v2` for tests outside the shim's own crate
/// (which use `env!("CARGO_BIN_EXE_...")`): `$CAPSA_TEST_SHIM`, else the
/// one of this build's profile (next to the test binary's `deps/`), which
/// `cargo build -p capsa-shim` makes (`make test` builds it).
pub fn shim_binary() -> PathBuf {
    workspace_binary("containerd-shim-capsa-v2", "CAPSA_TEST_SHIM", "capsa-shim")
}

/// The binary `name` of package `package`: `$env_var`, else the one of
/// this build's profile (next to the test binary's `deps/`); fails the
/// test, saying how to build it, when it is missing.
pub fn workspace_binary(name: &str, env_var: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join(name))
        })
        .unwrap_or_else(|| PathBuf::from(name));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p {package}` (or set {env_var})",
        path.display()
    );
    path
}

/// One test's world: a private state directory, a configuration file that
/// points at it and at the test assets, and a busybox rootfs.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub rootfs: PathBuf,
}

impl TestEnv {
    pub fn new() -> Self {
        Self::with_qemu_extra("")
    }

    /// Appends `toml` (whole tables) to the configuration file; sandboxes
    /// started afterwards read it.
    pub fn append_config(&self, toml: &str) {
        let config = std::fs::read_to_string(&self.config).expect("read the test configuration");
        std::fs::write(&self.config, format!("{config}\n{toml}\n"))
            .expect("write the test configuration");
    }

    /// `extra` is appended to the `[hypervisor.qemu]` table.
    pub fn with_qemu_extra(extra: &str) -> Self {
        Self::build("capsa-test-", "state", extra)
    }

    /// VMs boot from the root image of the test assets ([`image_path`])
    /// instead of the initrd; `extra` is appended to `[hypervisor.qemu]`.
    pub fn with_image(extra: &str) -> Self {
        let boot = format!("image = {:?}\n{extra}", image_path());
        Self::build_booting("capsa-test-", "state", None, &boot)
    }

    /// VMs boot the initrd of the test assets whatever `CAPSA_TEST_BOOT`
    /// says: for tests that rebuild the initrd with modules of their own.
    pub fn with_initrd() -> Self {
        let initrd = assets_dir().join("initrd.img");
        Self::build_booting("capsa-test-", "state", Some(&initrd), "")
    }

    /// A state directory with a short path (`/tmp/cs-XXXXXX/s`): sandbox
    /// ids of 64 characters, as containerd's, still give socket paths that
    /// fit in `sun_path`.
    pub fn short() -> Self {
        Self::build("cs-", "s", "")
    }

    /// [`TestEnv::short`] with `extra` in the `[hypervisor.qemu]` table.
    pub fn short_with_qemu_extra(extra: &str) -> Self {
        Self::build("cs-", "s", extra)
    }

    /// The VMs boot the initrd, or the root image with
    /// `CAPSA_TEST_BOOT=image` (the whole suite run on the image), or are
    /// User-Mode Linux VMs of the installed `configuration-uml.toml` with
    /// `CAPSA_TEST_BOOT=uml` (the driver-neutral suites run on UML; a
    /// test that sets QEMU keys of its own stays on QEMU).
    fn build(prefix: &str, state: &str, extra: &str) -> Self {
        match std::env::var("CAPSA_TEST_BOOT").as_deref() {
            Ok("uml") if extra.is_empty() => {
                Self::installed_config_in("configuration-uml.toml", prefix, state)
            }
            Ok("uml") => {
                let initrd = assets_dir().join("initrd.img");
                Self::build_booting(prefix, state, Some(&initrd), extra)
            }
            Ok("image") => {
                let boot = format!("image = {:?}\n{extra}", image_path());
                Self::build_booting(prefix, state, None, &boot)
            }
            Ok("initrd") | Err(_) => {
                let initrd = assets_dir().join("initrd.img");
                Self::build_booting(prefix, state, Some(&initrd), extra)
            }
            Ok(other) => panic!("CAPSA_TEST_BOOT={other:?}: use image, initrd or uml"),
        }
    }

    /// With `initrd` (else `initrd = ""`: `extra` names the image).
    fn build_booting(prefix: &str, state: &str, initrd: Option<&Path>, extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("temp dir");
        let state_dir = dir.path().join(state);
        let rootfs = dir.path().join("rootfs");
        rootfs::busybox(&rootfs);
        let assets = assets_dir();
        let config = dir.path().join("configuration.toml");
        std::fs::write(
            &config,
            format!(
                "[hypervisor.qemu]\nkernel = {kernel:?}\ninitrd = {initrd:?}\n\
                 virtio_fs_daemon = {fsd:?}\nvhost_user_vsock_daemon = {vsock:?}\n{extra}\n\
                 [runtime]\nstate_dir = {state:?}\n",
                kernel = assets.join("vmlinuz"),
                initrd = initrd.unwrap_or(Path::new("")),
                fsd = tool("virtiofsd"),
                vsock = tool("vhost-device-vsock"),
                state = state_dir,
            ),
        )
        .expect("write config");
        Self {
            dir,
            config,
            state_dir,
            rootfs,
        }
    }

    /// A world whose configuration is the installed configuration file
    /// `config/<name>` of this repository (`configuration.toml`,
    /// `configuration-uml.toml`), as it is, but for its paths: the
    /// kernel and initrd are the test assets' files of the same names,
    /// virtiofsd and the vsock daemon the installed ones, the state
    /// directory the test's. The test directory is searchable by others
    /// (`0711`): a driver whose processes run unprivileged reaches the
    /// state directory through it.
    pub fn with_installed_config(name: &str) -> Self {
        Self::installed_config_in(name, "capsa-test-", "state")
    }

    /// [`TestEnv::with_installed_config`] with a state directory as short
    /// as [`TestEnv::short`]'s: CRI's 64-character sandbox ids must leave
    /// the UML driver's socket paths within `sun_path`.
    pub fn short_with_installed_config(name: &str) -> Self {
        Self::installed_config_in(name, "cs-", "s")
    }

    fn installed_config_in(name: &str, prefix: &str, state: &str) -> Self {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../config")
            .join(name);
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("temp dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the test directory");
        let state_dir = dir.path().join(state);
        let rootfs = dir.path().join("rootfs");
        rootfs::busybox(&rootfs);
        let assets = assets_dir();
        let file_name = |v: &str| {
            Path::new(v)
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_default()
        };
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                let Some((key, value)) = line.split_once(" = ") else {
                    return line.to_string();
                };
                let value = value.trim_matches('"');
                let path = match key {
                    "kernel" | "initrd" if !value.is_empty() => assets.join(file_name(value)),
                    "virtio_fs_daemon" | "vhost_user_vsock_daemon" => {
                        tool(&file_name(value).to_string_lossy())
                    }
                    "state_dir" => state_dir.clone(),
                    _ => return line.to_string(),
                };
                assert!(
                    key == "state_dir" || path.is_file(),
                    "{} ({key} of {name}) is missing: run `make assets` (or set CAPSA_TEST_ASSETS)",
                    path.display()
                );
                format!("{key} = {path:?}")
            })
            .collect();
        let config = dir.path().join(name);
        std::fs::write(&config, lines.join("\n") + "\n").expect("write config");
        Self {
            dir,
            config,
            state_dir,
            rootfs,
        }
    }

    /// Writes a configuration file with `text` and returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// Whatever a failed test left mounted below the environment (a sandbox
/// whose owner was killed) is detached, and so are loop devices over its
/// images, so that the directory can go.
impl Drop for TestEnv {
    fn drop(&mut self) {
        containerd::cleanup::unmount_below(self.dir.path());
        block::detach_loops_below(self.dir.path());
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// A child process that is killed (by pid) if the test ends before it does.
pub struct Guarded(pub Option<Child>);

impl Guarded {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(Some(cmd.spawn().expect("spawn")))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }

    /// Waits up to `limit` for the output; kills the child past it.
    pub fn output(mut self, limit: Duration) -> Output {
        let mut child = self.0.take().expect("child");
        let start = Instant::now();
        let out = std::thread::scope(|s| {
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            let read = |p: Option<Box<dyn std::io::Read + Send>>| {
                s.spawn(move || {
                    let mut buf = Vec::new();
                    if let Some(mut p) = p {
                        let _ = p.read_to_end(&mut buf);
                    }
                    buf
                })
            };
            let o = read(stdout.map(|p| Box::new(p) as _));
            let e = read(stderr.map(|p| Box::new(p) as _));
            let status = loop {
                if let Some(st) = child.try_wait().expect("wait") {
                    break st;
                }
                if start.elapsed() > limit {
                    let _ = child.kill();
                    let st = child.wait().expect("wait");
                    panic!("timed out after {limit:?} (killed, {st})");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            Output {
                status,
                stdout: o.join().unwrap(),
                stderr: e.join().unwrap(),
            }
        });
        out
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `bin` with `args` (stdin from `input`) and returns its output,
/// bounded by `limit`.
pub fn run_bounded(mut cmd: Command, input: Option<&[u8]>, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut g = Guarded::spawn(&mut cmd);
    if let Some(input) = input {
        use std::io::Write;
        let mut stdin = g.child().stdin.take().expect("stdin");
        stdin.write_all(input).expect("write stdin");
    }
    g.output(limit)
}

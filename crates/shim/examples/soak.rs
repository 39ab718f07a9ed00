//! `make soak`: `SANDBOXES` sandboxes (default 20) created and removed in
//! parallel, for `ROUNDS` rounds (default 5), through `capsa run` (`run -d
//! --network bridge`, `exec`, `rm -f`) and through containerd's CRI with
//! real CNI (a pod with a `sleep` container, `ExecSync`, stop and remove).
//! Before the first round it counts what the host holds for it; after each
//! round the counts must come back to that baseline:
//!
//! - processes whose command line names the soak's directories (QEMU,
//!   virtiofsd, vhost-device-vsock, `capsa` owners, shims);
//! - mounts below those directories;
//! - Unix sockets: socket files below them, listening sockets bound there
//!   (`/proc/net/unix`), and the shims' sockets of its pods
//!   (`/run/containerd/s/<hash>`);
//! - state directories: capsa's `state_dir` (the shim's too) and
//!   containerd's task bundles and CRI sandboxes;
//! - taps (`tap<N>_capsa`) in the pods' network namespaces, network
//!   namespaces (CRI's in its subnet, `capsa run`'s bound in the state
//!   directory), veths on the two bridges, iptables rules of the two
//!   networks, loop devices over files below the directories.
//!
//! Everything is scoped to the soak's own directories, networks and ids, so
//! other users of the host (tests running at the same time) do not count.
//! A sandbox that fails is reported with its error and counted; the soak
//! goes on and fails at the end, as it does when anything leaked (named).
//! Interrupted (SIGINT/SIGTERM/SIGHUP) or failing, its guards remove what
//! it made: containerd and its shims, the CNI networks, the directories.
//!
//! Needs the release shim in `$SHIM_DIR`, the release `capsa` in
//! `$CAPSA_BIN` (the Makefile sets both) and the guest assets
//! (`$CAPSA_TEST_ASSETS`). `SOAK_LIMIT` (seconds, default 900) bounds each
//! step of a sandbox, and two thirds of it the agent's dial (the guest's
//! boot, `dial_timeout`): under TCG, 20 VMs booting at once on 2 cores
//! take minutes.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capsa_test_infra::cni::TestNetwork;
use capsa_test_infra::containerd::cni::ip;
use capsa_test_infra::containerd::{kill_processes_naming, try_run, Containerd, Opts};
use capsa_test_infra::leaks::processes_naming;
use capsa_test_infra::{block, run_bounded, TestEnv};

#[path = "common/interrupt.rs"]
mod interrupt;
#[path = "common/machine.rs"]
mod machine;
#[path = "common/stats.rs"]
mod stats;

/// containerd's namespace of CRI (the shims' sockets are keyed by it).
const NAMESPACE: &str = "k8s.io";
/// How long the counts may take to settle after a round (shims and
/// helpers exit asynchronously after their sandbox is removed).
const SETTLE: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    if interrupt::run(soak) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn soak() {
    let rounds = env_number("ROUNDS", 5) as usize;
    let sandboxes = env_number("SANDBOXES", 20) as usize;
    let limit = Duration::from_secs(env_number("SOAK_LIMIT", 900));
    let capsa_bin = PathBuf::from(std::env::var("CAPSA_BIN").expect("CAPSA_BIN: the capsa binary"));
    let shim_dir =
        PathBuf::from(std::env::var("SHIM_DIR").expect("SHIM_DIR: the shim's directory"));
    assert!(
        capsa_bin.is_file(),
        "CAPSA_BIN={} is missing",
        capsa_bin.display()
    );

    let env = TestEnv::short();
    // `capsa run --network bridge`'s own network: a bridge and a subnet no
    // test uses (tests take 10.4.10-199), removed on drop.
    let pid = std::process::id();
    let net = TestNetwork {
        bridge: format!("capsas{}", pid % 10_000),
        subnet: format!("10.4.{}", 200 + pid % 50),
        ipam_dir: env.dir.path().join("ipam"),
    };
    let conflist = env.write_config("soak.conflist", &net.conflist());
    // `[runtime]` is the configuration file's last table. The agent's
    // dial waits for the guest's boot: 20 of them at once under TCG take
    // minutes, not the default 30 s.
    let config = std::fs::read_to_string(&env.config).expect("read the configuration");
    std::fs::write(
        &env.config,
        format!(
            "{config}cni_conflist = {conflist:?}\n\n[agent.capsa]\ndial_timeout = {}\n",
            limit.as_secs() * 2 / 3
        ),
    )
    .expect("write the configuration");

    let shim_sockets = Arc::new(Mutex::new(Vec::new()));
    let _leftovers = Leftovers {
        capsa: capsa_bin.clone(),
        config: env.config.clone(),
        state_dir: env.state_dir.clone(),
        dir: env.dir.path().to_path_buf(),
        shim_sockets: shim_sockets.clone(),
    };

    let ctrd = Containerd::start(Opts {
        shim_dir: Some(shim_dir),
        capsa_config: Some(env.config.clone()),
        cni: true,
        ..Default::default()
    });
    let image = ctrd.import_busybox();
    ctrd.import_pause();

    let scope = Arc::new(Scope {
        dirs: vec![env.dir.path().to_path_buf(), ctrd.dir().to_path_buf()],
        state_dir: env.state_dir.clone(),
        ctrd_dir: ctrd.dir().to_path_buf(),
        ctrd_socket: ctrd.socket().display().to_string(),
        ctrd_pid: ctrd.pid(),
        bridges: vec![net.bridge.clone(), ctrd.cni().bridge()],
        networks: vec![
            format!("name: \\\"{}\\\"", ctrd.cni().name()),
            format!("id: \\\"soak{pid}-"),
        ],
        cri_subnet: format!("inet {}", ctrd.cni().subnet().trim_end_matches("0/24")),
        shim_sockets,
    });
    let baseline = scope.counts();
    println!(
        "== soak: {rounds} round(s) of {sandboxes} sandboxes in parallel, through capsa run and CRI; \
         {} CPUs, load {} ==",
        machine::cpus(),
        machine::loadavg()
    );
    println!("baseline: {}", summary(&baseline));

    let capsa = Arc::new(CapsaRun {
        bin: capsa_bin,
        config: env.config.clone(),
        rootfs: env.rootfs.clone(),
        limit,
    });
    let ctrd = Arc::new(ctrd);
    let image = Arc::new(image);
    let soak_start = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut leaked_rounds = 0;
    for round in 1..=rounds {
        interrupt::check();
        let load = machine::loadavg();
        let (t_capsa, capsa_failures) = phase(sandboxes, |i| {
            let capsa = capsa.clone();
            let id = format!("soak{pid}-r{round}-{i}");
            move || capsa.sandbox(&id)
        });
        interrupt::check();
        let (t_cri, cri_failures) = phase(sandboxes, |i| {
            let (ctrd, image, scope) = (ctrd.clone(), image.clone(), scope.clone());
            let name = format!("soak-r{round}-{i}");
            move || cri_pod(&ctrd, &image, &scope, &name, limit)
        });
        let settle_start = Instant::now();
        let (now, diff) = scope.settled(&baseline);
        println!(
            "round {round}/{rounds} (load at start {load}): capsa run {} ok of {sandboxes} in {:.0} s{}, \
             CRI {} ok of {sandboxes} in {:.0} s{}; counts {} ({:.1} s to settle)",
            sandboxes - capsa_failures.len(),
            t_capsa.wall,
            t_capsa.each_summary(),
            sandboxes - cri_failures.len(),
            t_cri.wall,
            t_cri.each_summary(),
            summary(&now),
            settle_start.elapsed().as_secs_f64(),
        );
        for f in capsa_failures.iter().chain(&cri_failures) {
            println!("  FAILED {f}");
        }
        failures.extend(
            capsa_failures
                .into_iter()
                .map(|f| format!("round {round}: {f}")),
        );
        failures.extend(
            cri_failures
                .into_iter()
                .map(|f| format!("round {round}: {f}")),
        );
        if diff.is_empty() {
            println!("  back to the baseline");
        } else {
            leaked_rounds += 1;
            println!("  NOT back to the baseline:\n{}", indent(&diff));
        }
    }
    let (last, diff) = scope.settled(&baseline);
    println!(
        "== after {rounds} round(s), {:.0} s: {} (baseline {}); {} sandbox(es) failed, \
         {leaked_rounds} round(s) left something behind ==",
        soak_start.elapsed().as_secs_f64(),
        summary(&last),
        summary(&baseline),
        failures.len(),
    );
    if !failures.is_empty() || !diff.is_empty() {
        let mut why = Vec::new();
        if !failures.is_empty() {
            why.push(format!("sandboxes that failed:\n{}", indent(&failures)));
        }
        if !diff.is_empty() {
            why.push(format!("left behind at the end:\n{}", indent(&diff)));
        }
        panic!("soak failed: {}", why.join("\n"));
    }
    println!("soak passed");
}

fn indent(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wall time of a phase and each sandbox's time, in seconds.
struct Timing {
    wall: f64,
    each: Vec<f64>,
}

impl Timing {
    /// ` (per sandbox that succeeded: median M s, max X s)`, or nothing.
    fn each_summary(&self) -> String {
        if self.each.is_empty() {
            return String::new();
        }
        let max = self.each.iter().copied().fold(0.0, f64::max);
        format!(
            " (per sandbox that succeeded: median {:.0} s, max {max:.0} s)",
            stats::median(&self.each)
        )
    }
}

/// Runs `n` sandboxes at once (`make(i)` gives each its job) and waits for
/// all; a job that panics is a failure, reported with its message.
fn phase<F, J>(n: usize, make: F) -> (Timing, Vec<String>)
where
    F: Fn(usize) -> J,
    J: FnOnce() -> Result<(), String> + Send + 'static,
{
    let start = Instant::now();
    let jobs: Vec<_> = (0..n)
        .map(|i| {
            let job = make(i);
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                    .unwrap_or_else(|p| Err(panic_message(&p)));
                (t.elapsed().as_secs_f64(), r)
            })
        })
        .collect();
    let mut each = Vec::new();
    let mut failures = Vec::new();
    for job in jobs {
        match job.join() {
            Ok((secs, Ok(()))) => each.push(secs),
            Ok((_, Err(e))) => failures.push(e),
            Err(p) => failures.push(panic_message(&p)),
        }
    }
    let wall = start.elapsed().as_secs_f64();
    (Timing { wall, each }, failures)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// On the way out (the end, a failure, an interrupt): `capsa rm -f` of
/// every sandbox still in the state directory, so that its network is
/// released, then a SIGKILL to whatever still names the environment's
/// directory, and the socket files its pods' shims left in
/// `/run/containerd/s` (none listens any more: containerd and its shims
/// are gone by then). Dropped before the network and the environment it
/// uses.
struct Leftovers {
    capsa: PathBuf,
    config: PathBuf,
    state_dir: PathBuf,
    dir: PathBuf,
    shim_sockets: Arc<Mutex<Vec<PathBuf>>>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.state_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            let mut cmd = Command::new(&self.capsa);
            cmd.arg("--config")
                .arg(&self.config)
                .args(["rm", "-f", &id]);
            let ok = try_run(cmd, Duration::from_secs(60)).is_some_and(|o| o.status.success());
            eprintln!(
                "soak: removed leftover sandbox {id}{}",
                if ok { "" } else { " (capsa rm -f failed)" }
            );
        }
        let killed = kill_processes_naming(&format!("{}/", self.dir.display()));
        if !killed.is_empty() {
            eprintln!("soak: killed leftovers:\n{}", killed.join("\n"));
        }
        let sockets = self.shim_sockets.lock().unwrap_or_else(|e| e.into_inner());
        for path in sockets.iter().filter(|p| p.exists()) {
            let _ = std::fs::remove_file(path);
            eprintln!("soak: removed leftover shim socket {}", path.display());
        }
    }
}

/// `capsa` with the soak's configuration.
struct CapsaRun {
    bin: PathBuf,
    config: PathBuf,
    rootfs: PathBuf,
    limit: Duration,
}

impl CapsaRun {
    /// `capsa ARGS`, bounded; its error names the command and its output.
    fn capsa(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config).args(args);
        let start = Instant::now();
        let out = run_bounded(cmd, None, self.limit);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "capsa {} ({}, after {:.0} s): {}",
                args.join(" "),
                out.status,
                start.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// One sandbox: started detached on the bridge network, an `exec`
    /// into it, then `rm -f`. A failed step still removes the sandbox.
    fn sandbox(&self, id: &str) -> Result<(), String> {
        let rootfs = self.rootfs.display().to_string();
        let run = self
            .capsa(&[
                "run",
                "-d",
                "--name",
                id,
                "--network",
                "bridge",
                "--rootfs",
                &rootfs,
                "--",
                "sleep",
                "100000",
            ])
            .and_then(|_| self.capsa(&["exec", id, "--", "true"]));
        let rm = self.capsa(&["rm", "-f", id]);
        run.and(rm)
            .map(|_| ())
            .map_err(|e| format!("capsa run {id}: {e}"))
    }
}

/// One CRI pod with a `sleep` container, an `ExecSync` into it, then
/// stopped and removed (also after a failed step, if the pod was made).
fn cri_pod(
    ctrd: &Containerd,
    image: &str,
    scope: &Scope,
    name: &str,
    limit: Duration,
) -> Result<(), String> {
    let mut cri = ctrd.cri();
    cri.set_call_limit(limit);
    let config = cri.pod_config_with_network(name, None, Vec::new());
    let pod = cri
        .try_run_pod_with(config.clone(), "capsa")
        .map_err(|e| format!("CRI pod {name}: RunPodSandbox: {}", e.message()))?;
    let address = containerd_shim::socket_address(&scope.ctrd_socket, NAMESPACE, &pod);
    scope
        .shim_sockets
        .lock()
        .unwrap()
        .push(PathBuf::from(address.trim_start_matches("unix://")));
    let work = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ctr = cri.create_container(&pod, &config, "sleep", image, &["sleep", "100000"]);
        cri.start(&ctr);
        let (out, err, code) = cri.exec_sync(&ctr, &["true"], limit);
        assert_eq!(code, 0, "ExecSync true: {out}{err}");
    }));
    let remove = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cri.stop_pod(&pod);
        cri.remove_pod(&pod);
    }));
    work.and(remove)
        .map_err(|p| format!("CRI pod {name} ({pod}): {}", panic_message(&p)))
}

/// What belongs to the soak, to count it.
struct Scope {
    /// The soak's directories (capsa's environment, containerd's).
    dirs: Vec<PathBuf>,
    state_dir: PathBuf,
    ctrd_dir: PathBuf,
    ctrd_socket: String,
    ctrd_pid: u32,
    /// The two networks' bridges.
    bridges: Vec<String>,
    /// What the iptables rules of the two networks contain (CNI's
    /// comments: CRI's network name, `capsa run`'s sandbox ids).
    networks: Vec<String>,
    /// `inet 10.200.N.`: addresses of the CRI network's pods.
    cri_subnet: String,
    /// The socket files of the shims of every CRI pod made.
    shim_sockets: Arc<Mutex<Vec<PathBuf>>>,
}

/// What the host holds, by kind: one line per thing.
type Counts = BTreeMap<&'static str, Vec<String>>;

fn summary(c: &Counts) -> String {
    c.iter()
        .map(|(k, v)| format!("{k} {}", v.len()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `now` has that `base` has not (and what went), by kind.
fn difference(base: &Counts, now: &Counts) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, items) in now {
        let before = base.get(kind).cloned().unwrap_or_default();
        let mut rest = before.clone();
        let mut extra = Vec::new();
        for item in items {
            match rest.iter().position(|b| b == item) {
                Some(i) => {
                    rest.remove(i);
                }
                None => extra.push(item.clone()),
            }
        }
        if !extra.is_empty() {
            out.push(format!(
                "{kind}: {} instead of {}, new: {}",
                items.len(),
                before.len(),
                extra.join("; ")
            ));
        } else if !rest.is_empty() {
            out.push(format!(
                "{kind}: {} instead of {}, gone: {}",
                items.len(),
                before.len(),
                rest.join("; ")
            ));
        }
    }
    out
}

impl Scope {
    /// Counts until they match `base` or [`SETTLE`] passed; returns the
    /// last counts and their difference from `base`.
    fn settled(&self, base: &Counts) -> (Counts, Vec<String>) {
        let start = Instant::now();
        loop {
            let now = self.counts();
            let diff = difference(base, &now);
            if diff.is_empty() || start.elapsed() > SETTLE {
                return (now, diff);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn counts(&self) -> Counts {
        let mut c = Counts::new();
        c.insert("processes", self.processes());
        c.insert("mounts", self.mounts());
        c.insert("unix sockets", self.sockets());
        c.insert("state directories", self.state_dirs());
        let netns = self.netns();
        c.insert("taps", netns.iter().flat_map(|ns| taps_in(ns)).collect());
        c.insert(
            "network namespaces",
            netns.iter().map(|p| p.display().to_string()).collect(),
        );
        c.insert("bridge ports", self.bridge_ports());
        c.insert("iptables rules", self.iptables_rules());
        c.insert(
            "loop devices",
            self.dirs
                .iter()
                .flat_map(|d| block::loops_below(d))
                .map(|(dev, file)| format!("{} {}", dev.display(), file.display()))
                .collect(),
        );
        c
    }

    /// Processes naming the soak's directories (containerd itself aside),
    /// as `name (pid): command line`.
    fn processes(&self) -> Vec<String> {
        let me = std::process::id();
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for dir in &self.dirs {
            for line in processes_naming(&format!("{}/", dir.display())) {
                let Some((pid, cmdline)) = line.split_once(": ") else {
                    continue;
                };
                let Ok(pid) = pid.parse::<u32>() else {
                    continue;
                };
                if pid == me || pid == self.ctrd_pid || !seen.insert(pid) {
                    continue;
                }
                out.push(format!("{}: {cmdline}", program(cmdline)));
            }
        }
        out.sort();
        out
    }

    /// Mount points at or below the soak's directories, with their type.
    fn mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        info.lines()
            .filter_map(|l| {
                let point = l.split(' ').nth(4)?;
                let fstype = l.split_once(" - ")?.1.split(' ').next()?;
                self.dirs
                    .iter()
                    .any(|d| point.starts_with(&d.display().to_string()))
                    .then(|| format!("{point} ({fstype})"))
            })
            .collect()
    }

    /// Socket files below the directories, listening sockets bound below
    /// them, and the shims' sockets of the CRI pods.
    fn sockets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            socket_files(dir, &mut out);
        }
        let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        for line in table.lines().skip(1) {
            // Num RefCount Protocol Flags Type St Inode Path
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f
                .get(3)
                .and_then(|x| u32::from_str_radix(x, 16).ok())
                .unwrap_or(0)
                & 0x10000
                != 0;
            if let (true, Some(path)) = (listening, f.get(7)) {
                if self
                    .dirs
                    .iter()
                    .any(|d| path.starts_with(&d.display().to_string()))
                {
                    out.push(format!("listening {path}"));
                }
            }
        }
        for path in self.shim_sockets.lock().unwrap().iter() {
            if path.exists() {
                out.push(format!("shim socket {}", path.display()));
            }
        }
        out.sort();
        out
    }

    /// Sandboxes in capsa's state directory, containerd's task bundles and
    /// task state, and CRI's sandbox directories.
    fn state_dirs(&self) -> Vec<String> {
        let ns = NAMESPACE;
        let mut dirs = vec![self.state_dir.clone()];
        for base in ["root", "state"] {
            let b = self.ctrd_dir.join(base);
            dirs.push(b.join("io.containerd.runtime.v2.task").join(ns));
            dirs.push(b.join("io.containerd.grpc.v1.cri/sandboxes"));
            dirs.push(b.join("io.containerd.grpc.v1.cri/containers"));
        }
        let mut out = Vec::new();
        for d in dirs {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                out.push(e.path().display().to_string());
            }
        }
        out.sort();
        out
    }

    /// CRI's network namespaces holding an address of its subnet, and
    /// `capsa run`'s netns files bound in the state directory.
    fn netns(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir("/var/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                ip(&["-n", &name, "-o", "-4", "addr", "show"]).contains(&self.cri_subnet)
            })
            .map(|e| e.path())
            .collect();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let state = self.state_dir.display().to_string();
        out.extend(
            info.lines()
                .filter(|l| l.contains(" - nsfs "))
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&state))
                .map(PathBuf::from),
        );
        out.sort();
        out.dedup();
        out
    }

    /// The host ends of veths on the two bridges.
    fn bridge_ports(&self) -> Vec<String> {
        self.bridges
            .iter()
            .flat_map(|b| {
                ip(&["-o", "link", "show", "master", b])
                    .lines()
                    .filter_map(|l| l.split(": ").nth(1))
                    .map(|n| format!("{b}: {}", n.split('@').next().unwrap_or(n)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Rules (all tables) of the two networks.
    fn iptables_rules(&self) -> Vec<String> {
        let mut cmd = Command::new("iptables-save");
        cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let text = try_run(cmd, Duration::from_secs(20))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|l| self.networks.iter().any(|n| l.contains(n.as_str())))
            .map(String::from)
            .collect()
    }
}

/// The program of a command line (its first word's base name).
fn program(cmdline: &str) -> &str {
    let first = cmdline.split(' ').next().unwrap_or(cmdline);
    first.rsplit('/').next().unwrap_or(first)
}

/// Socket files at or below `dir` (symbolic links not followed).
fn socket_files(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_socket() {
            out.push(e.path().display().to_string());
        } else if t.is_dir() {
            socket_files(&e.path(), out);
        }
    }
}

/// capsa's taps in network namespace `netns` (a path).
fn taps_in(netns: &Path) -> Vec<String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "link", "show"]);
    let text = try_run(cmd, Duration::from_secs(10))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| n.starts_with("tap") && n.ends_with("_capsa"))
        .map(|n| format!("{} {n}", netns.display()))
        .collect()
}

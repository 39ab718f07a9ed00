//! `make bench`, density part (issue 14, item 5): idle pods through a
//! private containerd's CRI, each a capsa pod (runtime handler `capsa`)
//! with one busybox `sleep` container, as a Kubernetes user's pod is.
//!
//! In one run:
//! 1. **settings side by side**: for each candidate setting (`VARIANTS`,
//!    default those of [`VARIANTS`] marked so), `RUNS` (2) single pods, the settings
//!    taking turns: the pod's start (RunPodSandbox, CreateContainer,
//!    StartContainer until CRI reports the container running) and its
//!    memory once settled;
//! 2. **density**: 1, then 10, then 50 idle pods at once with the
//!    configuration as it is (`DENSITY_COUNTS=1,10,50` to override): PSS per
//!    pod, broken down;
//! 3. **parallel start**: one pod alone, then 10 started at once (`PARALLEL`
//!    to change 10): the time until the last is up against one pod's start
//!    (with the agent's `dial_timeout` raised: 10 TCG guests booting on
//!    two cores take longer than the default 30 s).
//!
//! A pod's memory is the PSS of its host processes, from `/proc/PID/smaps`
//! mapping by mapping: QEMU, virtiofsd and vhost-device-vsock (their
//! command lines name the pod's state directory) and the shim (`-id <id>`).
//! It is broken down into **guest RAM** (the memfd backend, mapped by
//! QEMU and by both vhost-user helpers: a page counts once in all), the
//! **hypervisor**'s anonymous memory (mostly TCG's translation cache) and
//! files (binary, libraries, the root image's pages), and the **helpers**
//! (virtiofsd, the vsock daemon and the shim, less guest RAM). It is taken
//! once settled: when the pods' total PSS stopped moving (see
//! [`SETTLE_POLLS`]): free page reporting gives pages back in rounds, a
//! few seconds after the guest freed them.
//!
//! Before each pod the host's `MemAvailable` must stay above a reserve
//! (`RESERVE_MIB`, 2048) after the pod (the largest pod measured so far, at
//! first 512 MiB); else the run says so and stops adding pods. Everything
//! it made (pods, containerd, the directory) is removed also on a failure
//! or a stop signal (the guards' `Drop`: containerd removes every pod CRI
//! knows before it goes).
//!
//! Needs the release shim in `$SHIM_DIR` (the Makefile builds it) and the
//! guest assets (`$CAPSA_TEST_ASSETS`, default /var/cache/capsa/assets),
//! the root image (`capsa.img`) for the `image` setting.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use capsa_test_infra::containerd::cri_v1::{ContainerState, PodSandboxConfig};
use capsa_test_infra::containerd::{Containerd, Cri, Opts};
use capsa_test_infra::leaks::processes_naming;
use capsa_test_infra::{image_path, TestEnv};
use machine::{cpus, loadavg};
use procfs_core::process::{MMapPath, MemoryMaps};
use procfs_core::{FromRead, Meminfo};
use stats::median;

#[path = "common/interrupt.rs"]
mod interrupt;
#[path = "common/machine.rs"]
mod machine;
#[path = "common/params.rs"]
mod params;
#[path = "common/stats.rs"]
mod stats;

/// CRI runtime handler of capsa's shim.
const CAPSA: &str = "capsa";
const MIB: f64 = 1024.0 * 1024.0;
/// How long a started container may take to be reported running.
const RUNNING_LIMIT: Duration = Duration::from_secs(300);
/// What a pod is assumed to take before one was measured: its guest's
/// whole default memory.
const FIRST_ESTIMATE: u64 = 512 << 20;
/// `[agent.capsa] dial_timeout` (s) of part 3.
const PARALLEL_DIAL_TIMEOUT: u32 = 240;
/// Settled: the total PSS moved less than 1 MiB per pod over the last
/// `SETTLE_POLLS` polls `SETTLE_POLL` apart (the guest reports free memory
/// in rounds 2 s apart, a part of its free lists each), at most
/// `SETTLE_LIMIT`.
const SETTLE_POLL: Duration = Duration::from_secs(2);
const SETTLE_POLLS: usize = 3;
const SETTLE_LIMIT: Duration = Duration::from_secs(45);

/// A setting compared in part 1: lines for `[hypervisor.qemu]`, whether
/// the VM boots the root image instead of the initrd, and whether it is
/// compared when `VARIANTS` is unset.
struct Variant {
    name: &'static str,
    qemu: &'static str,
    image: bool,
    default: bool,
}

const fn variant(name: &'static str, qemu: &'static str, default: bool) -> Variant {
    Variant {
        name,
        qemu,
        image: false,
        default,
    }
}

/// Restores the guest kernel's own swiotlb (64 MiB, capsa passes
/// `swiotlb=noforce` unless `kernel_params` sets `swiotlb=`).
const SWIOTLB: &str = "kernel_params = \"swiotlb=32768\"\n";

/// The candidates: the configuration as it is first (capsa's defaults:
/// free page reporting on, no swiotlb), then what each default is worth,
/// then one change each on top of the defaults.
const VARIANTS: &[Variant] = &[
    variant("configured", "", true),
    variant(
        "before: no reporting + swiotlb",
        "reclaim_guest_freed_memory = false\nkernel_params = \"swiotlb=32768\"\n",
        true,
    ),
    variant("reporting + swiotlb", SWIOTLB, true),
    variant(
        "no reporting + no swiotlb",
        "reclaim_guest_freed_memory = false\n",
        true,
    ),
    Variant {
        name: "image",
        qemu: "",
        image: true,
        default: true,
    },
    variant("tcg_tb_size 32", "tcg_tb_size = 32\n", true),
    variant(
        "reporting order 0",
        "kernel_params = \"page_reporting.page_reporting_order=0\"\n",
        false,
    ),
    variant(
        "init_on_alloc=0",
        "kernel_params = \"init_on_alloc=0\"\n",
        false,
    ),
    variant(
        "THP madvise",
        "kernel_params = \"transparent_hugepage=madvise\"\n",
        false,
    ),
    variant("256 MiB", "default_memory = 256\n", false),
];

/// One pod's host memory, bytes of PSS.
#[derive(Default, Clone, Copy)]
struct Breakdown {
    guest_ram: u64,
    qemu_anon: u64,
    qemu_files: u64,
    helpers: u64,
}

impl Breakdown {
    fn total(&self) -> u64 {
        self.guest_ram + self.qemu_anon + self.qemu_files + self.helpers
    }

    fn add(&mut self, o: &Breakdown) {
        self.guest_ram += o.guest_ram;
        self.qemu_anon += o.qemu_anon;
        self.qemu_files += o.qemu_files;
        self.helpers += o.helpers;
    }

    /// Each part divided by `n`, in MiB.
    fn per_pod(&self, n: usize) -> [f64; 5] {
        let n = n as f64 * MIB;
        [
            self.guest_ram as f64 / n,
            self.qemu_anon as f64 / n,
            self.qemu_files as f64 / n,
            self.helpers as f64 / n,
            self.total() as f64 / n,
        ]
    }
}

struct Params {
    runs: usize,
    counts: Vec<usize>,
    parallel: usize,
    reserve: u64,
    variants: Vec<&'static Variant>,
}

impl Params {
    fn from_env() -> Self {
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.into())
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let num = |name: &str, v: &str| -> usize {
            v.parse()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("{name}: {v:?} is not a positive number"))
        };
        let counts = list("DENSITY_COUNTS", "1,10,50")
            .iter()
            .map(|c| num("DENSITY_COUNTS", c))
            .collect();
        let all: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
        let defaults: Vec<&str> = VARIANTS
            .iter()
            .filter(|v| v.default)
            .map(|v| v.name)
            .collect();
        let variants = list("VARIANTS", &defaults.join(","))
            .iter()
            .filter(|n| n.as_str() != "none")
            .map(|n| {
                VARIANTS
                    .iter()
                    .find(|v| v.name == n)
                    .unwrap_or_else(|| panic!("VARIANTS: no setting {n:?} (known: {all:?}, none)"))
            })
            .collect();
        let one = |name: &str, default: &str| {
            num(
                name,
                &std::env::var(name).unwrap_or_else(|_| default.into()),
            )
        };
        Self {
            runs: params::runs(2),
            counts,
            parallel: one("PARALLEL", "10"),
            reserve: one("RESERVE_MIB", "2048") as u64 * 1024 * 1024,
            variants,
        }
    }
}

fn main() -> ExitCode {
    let p = Params::from_env();
    if interrupt::run(move || bench(&p)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The pods of one run and what they share.
struct Bench {
    env: TestEnv,
    base: String,
    ctrd: Containerd,
    image: String,
    /// Largest pod measured so far, bytes.
    estimate: u64,
    reserve: u64,
}

fn bench(p: &Params) {
    let env = TestEnv::short();
    let base = std::fs::read_to_string(&env.config).expect("read the configuration");
    let ctrd = Containerd::start(Opts {
        shim_dir: Some(params::shim_dir()),
        capsa_config: Some(env.config.clone()),
        ..Default::default()
    });
    let image = ctrd.import_busybox();
    ctrd.import_pause();
    let mut b = Bench {
        env,
        base,
        ctrd,
        image,
        estimate: FIRST_ESTIMATE,
        reserve: p.reserve,
    };
    println!(
        "machine: {} CPU(s), load average {}, MemAvailable {:.0} MiB",
        cpus(),
        loadavg(),
        mem_available() as f64 / MIB
    );
    if !p.variants.is_empty() {
        settings(&mut b, p);
    }
    b.configure(&VARIANTS[0]);
    let mut cri = b.ctrd.cri();
    for &n in &p.counts {
        if !density(&mut b, &mut cri, n) {
            break;
        }
    }
    parallel(&mut b, p.parallel);
    println!("load average at the end {}", loadavg());
}

impl Bench {
    /// The configuration file the next pods' shims read: the test
    /// configuration with `v`'s lines.
    fn configure(&self, v: &Variant) {
        let mut text = self.base.replacen(
            "[hypervisor.qemu]\n",
            &format!("[hypervisor.qemu]\n{}", v.qemu),
            1,
        );
        if v.image {
            let initrd = text
                .lines()
                .find(|l| l.starts_with("initrd = "))
                .expect("the test configuration names an initrd")
                .to_string();
            text = text.replacen(
                &initrd,
                &format!("initrd = \"\"\nimage = {:?}", image_path()),
                1,
            );
        }
        std::fs::write(&self.env.config, text).expect("write the configuration");
    }

    /// Whether `n` more pods leave the reserve; says why not.
    fn room_for(&self, n: usize) -> bool {
        let avail = mem_available();
        let need = self.estimate * n as u64 + self.reserve;
        if avail < need {
            println!(
                "stopping: MemAvailable {:.0} MiB, {n} more pod(s) of up to {:.0} MiB \
                 would leave less than the {:.0} MiB reserve",
                avail as f64 / MIB,
                self.estimate as f64 / MIB,
                self.reserve as f64 / MIB
            );
        }
        avail >= need
    }

    /// Starts pod `name` (a `sleep` container) and waits until it runs;
    /// returns its id and the start's duration in ms.
    fn start_pod(&self, cri: &Cri, name: &str) -> (String, f64) {
        self.try_start_pod(cri, name)
            .unwrap_or_else(|e| panic!("pod {name}: RunPodSandbox failed: {e}"))
    }

    /// [`Self::start_pod`] that returns RunPodSandbox's error (a VM that
    /// did not come up) instead of panicking.
    fn try_start_pod(&self, cri: &Cri, name: &str) -> Result<(String, f64), String> {
        interrupt::check();
        let config = cri.pod_config(name);
        let t = Instant::now();
        let pod = cri
            .try_run_pod_with(config.clone(), CAPSA)
            .map_err(|e| e.message().to_string())?;
        run_sleep(cri, &pod, &config, &self.image);
        Ok((pod, t.elapsed().as_secs_f64() * 1000.0))
    }

    /// A pod's memory now; the estimate grows with it.
    fn measure(&mut self, pod: &str) -> Breakdown {
        let m = pod_memory(&self.env.state_dir, pod);
        self.estimate = self.estimate.max(m.total());
        m
    }
}

/// CreateContainer and StartContainer of `sleep` in `pod`, until CRI
/// reports it running.
fn run_sleep(cri: &Cri, pod: &str, config: &PodSandboxConfig, image: &str) {
    let c = cri.create_container(pod, config, "sleep", image, &["sleep", "1000000"]);
    cri.start(&c);
    let deadline = Instant::now() + RUNNING_LIMIT;
    loop {
        let status = cri.container_status(&c);
        if status.state == ContainerState::ContainerRunning as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "container {c} of pod {pod} not running after {RUNNING_LIMIT:?}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_pods(cri: &Cri, pods: &[String]) {
    for pod in pods {
        cri.stop_pod(pod);
        cri.remove_pod(pod);
    }
}

/// Waits until the pods' total PSS stops moving (see the module's
/// documentation), then returns each pod's breakdown and the wait.
fn settled(b: &mut Bench, pods: &[String]) -> (Vec<Breakdown>, Duration) {
    let start = Instant::now();
    let deadline = start + SETTLE_LIMIT;
    let tolerance = pods.len() as u64 * (1 << 20);
    let mut last: Vec<u64> = Vec::new();
    loop {
        let now: Vec<Breakdown> = pods.iter().map(|p| b.measure(p)).collect();
        last.push(now.iter().map(Breakdown::total).sum());
        let n = last.len();
        let stable = n > SETTLE_POLLS
            && last[n - 1 - SETTLE_POLLS..]
                .iter()
                .all(|t| t.abs_diff(last[n - 1]) <= tolerance);
        if stable || Instant::now() >= deadline {
            return (now, start.elapsed());
        }
        interrupt::check();
        std::thread::sleep(SETTLE_POLL);
    }
}

/// Part 1: the candidate settings, one pod at a time, taking turns.
fn settings(b: &mut Bench, p: &Params) {
    let vs = &p.variants;
    println!(
        "== settings side by side: {} runs each, one idle pod at a time ==",
        p.runs
    );
    let cri = b.ctrd.cri();
    let mut start: Vec<Vec<f64>> = vec![Vec::new(); vs.len()];
    let mut mem: Vec<Vec<Breakdown>> = vec![Vec::new(); vs.len()];
    for run in 0..p.runs {
        for k in 0..vs.len() {
            // Who goes first rotates, so that the load weighs on all.
            let k = (k + run) % vs.len();
            let v = vs[k];
            if !b.room_for(1) {
                return;
            }
            b.configure(v);
            let (pod, ms) = b.start_pod(&cri, &format!("set{run}-{k}"));
            let first = b.measure(&pod).total() as f64 / MIB;
            let (m, wait) = settled(b, std::slice::from_ref(&pod));
            let m = m[0];
            remove_pods(&cri, std::slice::from_ref(&pod));
            let [g, a, f, h, t] = m.per_pod(1);
            println!(
                "run {run} {:<24} start {ms:>6.0} ms, PSS {first:.0} MiB when up, {t:.0} MiB \
                 settled after {:.0} s (guest RAM {g:.0}, QEMU anon {a:.0}, QEMU files {f:.0}, \
                 helpers {h:.0})",
                v.name,
                wait.as_secs_f64()
            );
            start[k].push(ms);
            mem[k].push(m);
        }
    }
    println!(
        "== settings: medians ({} runs; load average now {}) ==",
        p.runs,
        loadavg()
    );
    println!(
        "| setting | start | PSS | guest RAM | QEMU anon | QEMU files | helpers | PSS ratio | start ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let med = |k: usize, f: fn(&Breakdown) -> u64| {
        median(&mem[k].iter().map(|m| f(m) as f64 / MIB).collect::<Vec<_>>())
    };
    let (base_t, base_s) = (med(0, Breakdown::total), median(&start[0]));
    for (k, v) in vs.iter().enumerate() {
        let t = med(k, Breakdown::total);
        let s = median(&start[k]);
        println!(
            "| {} | {:.2} s | {t:.0} MiB | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            v.name,
            s / 1000.0,
            med(k, |m| m.guest_ram),
            med(k, |m| m.qemu_anon),
            med(k, |m| m.qemu_files),
            med(k, |m| m.helpers),
            t / base_t,
            s / base_s
        );
    }
}

/// Part 2: `n` idle pods at once; false when the reserve stopped it.
fn density(b: &mut Bench, cri: &mut Cri, n: usize) -> bool {
    println!("== density: {n} idle pod(s) ==");
    let avail_before = mem_available();
    let mut pods = Vec::new();
    let mut times = Vec::new();
    let mut complete = true;
    for i in 0..n {
        if !b.room_for(1) {
            complete = false;
            break;
        }
        // A pod that does not come up ends this N, as the reserve does:
        // what started is still measured.
        let (pod, ms) = match b.try_start_pod(cri, &format!("dense{n}-{i}")) {
            Ok(started) => started,
            Err(e) => {
                println!("stopping: pod {i} of {n} did not start: {e}");
                complete = false;
                break;
            }
        };
        b.measure(&pod);
        pods.push(pod);
        times.push(ms);
    }
    if pods.is_empty() {
        return false;
    }
    let (each, wait) = settled(b, &pods);
    let mut sum = Breakdown::default();
    each.iter().for_each(|m| sum.add(m));
    let host = avail_before.saturating_sub(mem_available());
    let k = pods.len();
    let [g, a, f, h, t] = sum.per_pod(k);
    println!(
        "{k} pod(s){}, settled after {:.0} s: PSS per pod {t:.0} MiB (guest RAM {g:.0}, QEMU anon {a:.0}, \
         QEMU files {f:.0}, helpers {h:.0}); total {:.0} MiB; host MemAvailable \
         fell {:.0} MiB ({:.0} per pod); start median {:.2} s, last {:.2} s; load average {}",
        if complete { "" } else { " (stopped early)" },
        wait.as_secs_f64(),
        sum.total() as f64 / MIB,
        host as f64 / MIB,
        host as f64 / MIB / k as f64,
        median(&times) / 1000.0,
        times[k - 1] / 1000.0,
        loadavg()
    );
    remove_pods(cri, &pods);
    complete
}

/// Part 3: one pod alone, `n` at once, one alone again.
fn parallel(b: &mut Bench, n: usize) {
    println!("== parallel start: 1 pod alone, {n} at once, 1 alone ==");
    let cri = b.ctrd.cri();
    let alone = |b: &Bench, i: usize| {
        let (pod, ms) = b.start_pod(&cri, &format!("alone-{i}"));
        remove_pods(&cri, std::slice::from_ref(&pod));
        println!("1 pod alone: up after {:.2} s", ms / 1000.0);
        ms
    };
    // Under TCG on a few cores the guests of pods started at once share
    // them: the agent may take longer than the default 30 s to answer.
    b.configure(&VARIANTS[0]);
    let text = std::fs::read_to_string(&b.env.config).expect("read the configuration");
    std::fs::write(
        &b.env.config,
        format!("{text}\n[agent.capsa]\ndial_timeout = {PARALLEL_DIAL_TIMEOUT}\n"),
    )
    .expect("write the configuration");
    if !b.room_for(1) {
        return;
    }
    let before = alone(b, 0);
    if !b.room_for(n) {
        return;
    }
    // Each thread its own CRI client (each has its own tokio runtime).
    let clients: Vec<Cri> = (0..n).map(|_| b.ctrd.cri()).collect();
    let bench: &Bench = b;
    let t = Instant::now();
    let done: Vec<Result<(String, f64), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(j, c)| s.spawn(move || bench.try_start_pod(c, &format!("par-{j}"))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a parallel pod start panicked"))
            .collect()
    });
    let all = t.elapsed().as_secs_f64() * 1000.0;
    let pods: Vec<String> = done.iter().flatten().map(|(p, _)| p.clone()).collect();
    let mut each: Vec<f64> = done.iter().flatten().map(|(_, ms)| *ms).collect();
    each.sort_by(|a, b| a.total_cmp(b));
    for e in done.iter().filter_map(|r| r.as_ref().err()) {
        println!("a pod of the {n} did not start: {e}");
    }
    let last = each.last().copied().unwrap_or(all);
    println!(
        "{n} at once: {} up, the last after {:.2} s (each, s: {})",
        pods.len(),
        last / 1000.0,
        each.iter()
            .map(|ms| format!("{:.1}", ms / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    remove_pods(&cri, &pods);
    let after = alone(b, 1);
    let single = (before + after) / 2.0;
    println!(
        "ratio {n} at once / one alone: {:.2} ({} of {n} up; target <= 3; one alone {:.2} s, \
         the mean of before and after)",
        last / single,
        pods.len(),
        single / 1000.0
    );
}

/// The host's `MemAvailable`, bytes.
fn mem_available() -> u64 {
    let m = Meminfo::from_file("/proc/meminfo").expect("read /proc/meminfo");
    m.mem_available.unwrap_or(m.mem_free)
}

/// The PSS of pod `id`'s host processes, mapping by mapping.
fn pod_memory(state_dir: &Path, id: &str) -> Breakdown {
    let dir = format!("{}/{id}/", state_dir.display());
    let shim = format!("-id {id} ");
    let mut procs: Vec<(u32, bool)> = processes_naming(&dir)
        .iter()
        .filter_map(|p| {
            let (pid, cmd) = p.split_once(':')?;
            Some((pid.parse().ok()?, cmd.contains("qemu-system")))
        })
        .collect();
    procs.extend(
        processes_naming("containerd-shim-capsa-v2")
            .iter()
            .filter(|p| p.contains(&shim))
            .filter_map(|p| Some((p.split(':').next()?.parse().ok()?, false))),
    );
    let mut m = Breakdown::default();
    for (pid, qemu) in procs {
        // A process that just went has nothing to count.
        let Ok(maps) = MemoryMaps::from_file(format!("/proc/{pid}/smaps")) else {
            continue;
        };
        for map in maps.0 {
            let pss = map.extension.map.get("Pss").copied().unwrap_or(0);
            match &map.pathname {
                // The guest RAM backend (`memory-backend-memfd`: QEMU
                // names the memfd after the object's type).
                MMapPath::Path(p) if p.to_string_lossy().starts_with("/memfd:memory-backend") => {
                    m.guest_ram += pss
                }
                _ if !qemu => m.helpers += pss,
                MMapPath::Path(_) => m.qemu_files += pss,
                _ => m.qemu_anon += pss,
            }
        }
    }
    m
}

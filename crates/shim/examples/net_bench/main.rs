//! `make bench`, pod networking part: in one run, through a private
//! containerd's CRI with the test CNI network (bridge, host-local,
//! portmap), a capsa pod against a runc pod on the same bridge:
//! - TCP throughput host → pod: `MIB` MiB per round to a busybox `nc` sink,
//!   `RUNS` rounds, MiB/s;
//! - request latency host → pod: `REQUESTS` sequential `GET /` of a small
//!   page from busybox `httpd`, each over a fresh connection, ms (median
//!   and p90);
//! - pod start latency with and without networking: RunPodSandbox +
//!   CreateContainer + StartContainer until the container runs, a capsa
//!   pod in a CNI netns against a capsa pod on the host network (no NIC),
//!   runc with CNI as a reference, `RUNS` runs.
//!
//! capsa and runc alternate sample by sample, so the machine's load weighs
//! on both alike; every sample is printed, then the medians and the ratios.
//! Everything it made (pods, CNI network, containerd) is removed also on
//! a failure or a stop signal.
//!
//! Needs the release shim in `$SHIM_DIR` (the Makefile builds it) and the
//! guest assets (`$CAPSA_TEST_ASSETS`, default /var/cache/capsa/assets).

#[path = "../common/interrupt.rs"]
mod interrupt;
#[path = "../common/machine.rs"]
mod machine;
mod pods;
mod probe;
#[path = "../common/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use capsa_test_infra::containerd::{Containerd, Cri, Opts};
use capsa_test_infra::TestEnv;

use interrupt::check;
use machine::loadavg;
use pods::{ServerPod, CAPSA, RUNC};
use stats::{median, percentile};

/// What one run measures (environment variables, with defaults).
struct Params {
    /// `RUNS`: throughput rounds and pod starts of each kind.
    runs: usize,
    /// `MIB`: MiB sent per throughput round.
    mib: usize,
    /// `REQUESTS`: HTTP requests to each pod.
    requests: usize,
    /// `SHIM_DIR`: the directory of `containerd-shim-capsa-v2`.
    shim_dir: PathBuf,
}

impl Params {
    fn from_env() -> Self {
        let num = |name: &str, default: usize| match std::env::var(name) {
            Err(_) => default,
            Ok(v) => v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("{name}={v:?}: expected a positive number")),
        };
        Self {
            runs: num("RUNS", 5),
            mib: num("MIB", 32),
            requests: num("REQUESTS", 200),
            shim_dir: std::env::var_os("SHIM_DIR")
                .expect("SHIM_DIR: the shim's directory")
                .into(),
        }
    }
}

fn main() -> ExitCode {
    let params = Params::from_env();
    if interrupt::run(move || bench(&params)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bench(p: &Params) {
    let env = TestEnv::short();
    let ctrd = Containerd::start(Opts {
        shim_dir: Some(p.shim_dir.clone()),
        capsa_config: Some(env.config.clone()),
        cni: true,
        ..Default::default()
    });
    let image = ctrd.import_busybox();
    ctrd.import_pause();
    let cri = ctrd.cri();
    let cni = ctrd.cni();
    println!(
        "== pod networking: CNI bridge {} on {}; load average {} ==",
        cni.bridge(),
        cni.subnet(),
        loadavg()
    );

    let capsa = ServerPod::start(&cri, &image, "bench-capsa", CAPSA);
    let runc = ServerPod::start(&cri, &image, "bench-runc", RUNC);
    // Both servers answer (the first request waits for them) and are warm.
    for pod in [&capsa, &runc] {
        probe::timed_get(pod.web(), &pod.body);
        probe::send(pod.sink(), 1);
    }
    throughput(p, &capsa, &runc);
    latency(p, &capsa, &runc);
    for pod in [&capsa, &runc] {
        pods::remove(&cri, &pod.id);
    }
    start_latency(p, &cri, &image);
    println!("load average at the end {}", loadavg());
}

/// Samples of capsa and runc, taken alternately.
#[derive(Default)]
struct Pair {
    capsa: Vec<f64>,
    runc: Vec<f64>,
}

impl Pair {
    /// Takes sample `i` of both, the one first that went second last time.
    fn take(&mut self, i: usize, mut sample: impl FnMut(&str) -> f64) {
        check();
        if i.is_multiple_of(2) {
            self.capsa.push(sample(CAPSA));
            self.runc.push(sample(RUNC));
        } else {
            self.runc.push(sample(RUNC));
            self.capsa.push(sample(CAPSA));
        }
    }
}

fn pod_of<'a>(handler: &str, capsa: &'a ServerPod, runc: &'a ServerPod) -> &'a ServerPod {
    if handler == CAPSA {
        capsa
    } else {
        runc
    }
}

fn throughput(p: &Params, capsa: &ServerPod, runc: &ServerPod) {
    println!(
        "== TCP throughput host -> pod: {} MiB to busybox nc, {} rounds ==",
        p.mib, p.runs
    );
    let mut t = Pair::default();
    for i in 0..p.runs {
        t.take(i, |h| probe::send(pod_of(h, capsa, runc).sink(), p.mib));
        println!(
            "round {i}: capsa {:.1} MiB/s, runc {:.1} MiB/s",
            t.capsa[i], t.runc[i]
        );
    }
    let (c, r) = (median(&t.capsa), median(&t.runc));
    println!(
        "median capsa {c:.1} MiB/s, runc {r:.1} MiB/s; ratio capsa/runc {:.3}",
        c / r
    );
}

fn latency(p: &Params, capsa: &ServerPod, runc: &ServerPod) {
    println!(
        "== HTTP latency host -> pod: {} GETs each of a small page from busybox httpd, \
         fresh connections ==",
        p.requests
    );
    let mut t = Pair::default();
    for i in 0..p.requests {
        t.take(i, |h| {
            let pod = pod_of(h, capsa, runc);
            probe::timed_get(pod.web(), &pod.body)
        });
    }
    for (name, v) in [("capsa", &t.capsa), ("runc", &t.runc)] {
        println!("{name} samples (ms): {}", list(v, 2));
    }
    let (cm, c90) = (median(&t.capsa), percentile(&t.capsa, 90.0));
    let (rm, r90) = (median(&t.runc), percentile(&t.runc, 90.0));
    println!("capsa median {cm:.2} ms, p90 {c90:.2} ms");
    println!("runc  median {rm:.2} ms, p90 {r90:.2} ms");
    println!(
        "ratio capsa/runc: median {:.1}, p90 {:.1}",
        cm / rm,
        c90 / r90
    );
}

fn start_latency(p: &Params, cri: &Cri, image: &str) {
    println!(
        "== pod start: RunPodSandbox + CreateContainer + StartContainer until running, \
         {} runs ==",
        p.runs
    );
    let (mut cni, mut host, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..p.runs {
        check();
        let with_cni = |name: &str| cri.pod_config_with_network(name, None, vec![]);
        let mut kinds: [(&mut Vec<f64>, _, &str); 3] = [
            (&mut cni, with_cni(&format!("start-cni-{i}")), CAPSA),
            (&mut host, cri.pod_config(&format!("start-host-{i}")), CAPSA),
            (&mut runc, with_cni(&format!("start-runc-{i}")), RUNC),
        ];
        // Alternate which capsa kind starts first.
        if i % 2 == 1 {
            kinds.swap(0, 1);
        }
        for (samples, config, handler) in kinds {
            samples.push(pods::start_latency(cri, image, config, handler));
        }
        println!(
            "run {i}: capsa with CNI {:.0} ms, capsa host network {:.0} ms, runc with CNI {:.0} ms",
            cni[i], host[i], runc[i]
        );
    }
    let (c, h, r) = (median(&cni), median(&host), median(&runc));
    println!(
        "median capsa with CNI {c:.0} ms, capsa host network {h:.0} ms, runc with CNI {r:.0} ms"
    );
    println!("ratio capsa with CNI / capsa host network {:.2}", c / h);
    println!("ratio capsa with CNI / runc with CNI {:.1}", c / r);
}

/// `v` with `decimals` decimals, comma-separated.
fn list(v: &[f64], decimals: usize) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.decimals$}")).collect();
    items.join(", ")
}

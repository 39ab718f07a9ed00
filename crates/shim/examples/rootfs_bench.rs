//! `make bench`, block rootfs part (issue 12): a container's rootfs as a
//! hot-plugged block device against the same image over virtio-fs, through
//! a private containerd 1.6, in one run, side by side:
//! - `ctr run --rm <busybox> true`: on `capsa-snapshotter` (proxy plugin
//!   `capsa`, ext4 image files) with `disable_block_device_use = false`,
//!   against the default snapshotter (overlayfs) with block use off;
//! - inside a container on each rootfs: a sequential read of a 256 MiB file
//!   of the rootfs (`dd bs=1M`) and a walk of a small-file tree (`find`
//!   over 100 directories of 30 files each), timed with the guest's clock.
//!
//! The file set is written once per rootfs by the container's first task;
//! each measurement is a new task of that stopped container, that is a new
//! VM: the guest's page cache is empty (no `drop_caches` in the guest,
//! whose `/proc/sys` containers only see read-only), and the host's page
//! cache is dropped before each task.
//!
//! Needs root, the release shim and `capsa-snapshotter` in `$SHIM_DIR`
//! (the Makefile builds both; `$SNAPSHOTTER` overrides the latter) and the
//! guest assets (`$CAPSA_TEST_ASSETS`, default /var/cache/capsa/assets).
//! `RUNS` (default 5) samples of each measurement. What it made
//! (containers, snapshots, the snapshotter daemon, containerd, the
//! directory) is removed also on a failure or a stop signal.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

use capsa_test_infra::containerd::{Containerd, Opts, CTR, NAMESPACE, PROXY_SNAPSHOTTER};
use capsa_test_infra::snapshotter::Snapshotter;
use capsa_test_infra::{run_bounded, TestEnv};
use machine::{cpus, loadavg};
use stats::median;

#[path = "common/interrupt.rs"]
mod interrupt;
#[path = "common/machine.rs"]
mod machine;
#[path = "common/params.rs"]
mod params;
#[path = "common/stats.rs"]
mod stats;

const CAPSA: &str = "io.containerd.capsa.v2";
const FILE_MIB: u64 = 256;
const DIRS: usize = 100;
const FILES_PER_DIR: usize = 30;
/// One `ctr` command (a TCG guest writing the file set takes a while).
const CTR_LIMIT: Duration = Duration::from_secs(300);

/// First task: writes `/big` (16 MiB of random data, 16 times) and
/// `/tree`, then the marker. Later tasks: the rootfs's device and type,
/// then guest uptimes around the read and the walk, and the walk's count.
const SCRIPT: &str = "\
if [ ! -e /bench-ready ]; then \
  dd if=/dev/urandom of=/chunk bs=1M count=16 2>/dev/null; \
  for i in $(seq 16); do cat /chunk; done > /big; rm /chunk; \
  mkdir /tree; for d in $(seq DIRS); do mkdir /tree/d$d; \
    for f in $(seq FILES); do echo $d.$f > /tree/d$d/f$f; done; done; \
  sync; touch /bench-ready; sync; echo populated; \
else \
  grep ' / ' /proc/mounts | cut -d' ' -f1,3; \
  t0=$(cut -d' ' -f1 /proc/uptime); dd if=/big of=/dev/null bs=1M 2>/dev/null; \
  t1=$(cut -d' ' -f1 /proc/uptime); n=$(find /tree | wc -l); \
  t2=$(cut -d' ' -f1 /proc/uptime); echo $t0 $t1 $t2 $n; \
fi";

/// One of the two rootfs paths compared.
struct Rootfs {
    name: &'static str,
    snapshotter: String,
    /// capsa configuration (`--runtime-config-path`).
    config: PathBuf,
    /// What `/proc/mounts` of the container must show for `/`.
    expect: fn(&str) -> bool,
}

impl Rootfs {
    /// `ctr run` arguments choosing the snapshotter and configuration.
    fn run_args(&self) -> Vec<String> {
        vec![
            "--snapshotter".into(),
            self.snapshotter.clone(),
            "--runtime".into(),
            CAPSA.into(),
            "--runtime-config-path".into(),
            self.config.display().to_string(),
        ]
    }
}

/// One measurement task's figures.
struct Sample {
    read_mib_s: f64,
    walk_ms: f64,
}

fn main() -> ExitCode {
    if interrupt::run(bench) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bench() {
    let runs = params::runs(5);
    let shim_dir = params::shim_dir();
    let snapshotter_bin = std::env::var_os("SNAPSHOTTER")
        .map(PathBuf::from)
        .unwrap_or_else(|| shim_dir.join("capsa-snapshotter"));
    println!("machine: {} CPU(s), load average {}", cpus(), loadavg());

    // Dropped in reverse order: containerd (with its leftover tasks and
    // containers), then the snapshotter, then the directory (unmounting
    // and detaching whatever is left below it).
    let env = TestEnv::short();
    let text = std::fs::read_to_string(&env.config).expect("read the configuration");
    let on = text.replacen(
        "[hypervisor.qemu]\n",
        "[hypervisor.qemu]\ndisable_block_device_use = false\n",
        1,
    );
    assert_ne!(on, text, "no [hypervisor.qemu] table in {text}");
    let block_config = env.write_config("block.toml", &on);
    let mut daemon = Snapshotter::start_in(&snapshotter_bin, &env.dir.path().join("snap"), "1G");
    let ctrd = Containerd::start(Opts {
        shim_dir: Some(shim_dir),
        capsa_config: Some(env.config.clone()),
        proxy_snapshotter: Some(daemon.socket().to_path_buf()),
        ..Default::default()
    });
    let image = ctrd.import_busybox();
    ctrd.import_busybox_into(PROXY_SNAPSHOTTER);
    let kinds = [
        Rootfs {
            name: "block",
            snapshotter: PROXY_SNAPSHOTTER.into(),
            config: block_config,
            expect: |m| m.starts_with("/dev/vd") && m.ends_with(" ext4"),
        },
        Rootfs {
            name: "virtio-fs",
            snapshotter: ctrd.snapshotter().into(),
            config: env.config.clone(),
            expect: |m| m.ends_with(" virtiofs"),
        },
    ];
    println!(
        "block: snapshotter {PROXY_SNAPSHOTTER}, block use on; \
         virtio-fs: snapshotter {}, block use off",
        ctrd.snapshotter()
    );

    println!("== ctr run --rm true: {runs} runs each, alternating ==");
    let mut start: [Vec<f64>; 2] = Default::default();
    for i in 0..runs {
        for k in order(i) {
            start[k].push(ctr_run_true(&ctrd, &image, &kinds[k], i));
        }
        println!(
            "run {i}: block {:.0} ms, virtio-fs {:.0} ms",
            start[0][i], start[1][i]
        );
    }

    println!("== snapshot prepare + remove (no VM): {runs} runs each, alternating ==");
    let parents = kinds
        .each_ref()
        .map(|k| committed_layer(&ctrd, &k.snapshotter));
    let mut snap: [Vec<f64>; 2] = Default::default();
    for i in 0..runs {
        for k in order(i) {
            snap[k].push(prepare_remove(&ctrd, &kinds[k].snapshotter, &parents[k], i));
        }
        println!(
            "run {i}: block {:.0} ms, virtio-fs {:.0} ms",
            snap[0][i], snap[1][i]
        );
    }

    println!(
        "== in the container: read of a {FILE_MIB} MiB file, find over {} files \
         ({runs} runs each, alternating, a new VM each) ==",
        DIRS * FILES_PER_DIR
    );
    let script = SCRIPT
        .replace("DIRS", &DIRS.to_string())
        .replace("FILES", &FILES_PER_DIR.to_string());
    for kind in &kinds {
        let t = Instant::now();
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(kind.run_args());
        args.extend([
            image.clone(),
            id(kind),
            "sh".into(),
            "-c".into(),
            script.clone(),
        ]);
        let out = stdout_ok(&ctrd, &args);
        assert_eq!(out, "populated\n", "{}: {out}", kind.name);
        println!(
            "{}: file set written in {:.1} s",
            kind.name,
            t.elapsed().as_secs_f64()
        );
    }
    let mut io: [Vec<Sample>; 2] = Default::default();
    for i in 0..runs {
        for k in order(i) {
            io[k].push(measure(&ctrd, &kinds[k]));
        }
        println!(
            "run {i}: read block {:.0} MiB/s, virtio-fs {:.0} MiB/s; \
             find block {:.0} ms, virtio-fs {:.0} ms",
            io[0][i].read_mib_s, io[1][i].read_mib_s, io[0][i].walk_ms, io[1][i].walk_ms
        );
    }
    for kind in &kinds {
        stdout_ok(&ctrd, &["containers".into(), "rm".into(), id(kind)]);
    }

    let (sb, sf) = (median(&start[0]), median(&start[1]));
    let read = |k: usize| median(&io[k].iter().map(|s| s.read_mib_s).collect::<Vec<_>>());
    let walk = |k: usize| median(&io[k].iter().map(|s| s.walk_ms).collect::<Vec<_>>());
    let (rb, rf, wb, wf) = (read(0), read(1), walk(0), walk(1));
    println!(
        "== medians ({runs} runs; load average now {}) ==",
        loadavg()
    );
    println!("ctr run --rm true, block:       {sb:.0} ms");
    println!("ctr run --rm true, virtio-fs:   {sf:.0} ms");
    println!("ratio block/virtio-fs (time):   {:.2}", sb / sf);
    let (pb, pf) = (median(&snap[0]), median(&snap[1]));
    println!("snapshot prepare+rm, block:     {pb:.0} ms");
    println!("snapshot prepare+rm, virtio-fs: {pf:.0} ms");
    println!("ratio block/virtio-fs (time):   {:.2}", pb / pf);
    println!("read {FILE_MIB} MiB, block:            {rb:.0} MiB/s");
    println!("read {FILE_MIB} MiB, virtio-fs:        {rf:.0} MiB/s");
    println!("ratio block/virtio-fs (rate):   {:.2}", rb / rf);
    println!("find, block:                    {wb:.0} ms");
    println!("find, virtio-fs:                {wf:.0} ms");
    println!("ratio block/virtio-fs (time):   {:.2}", wb / wf);

    drop(ctrd);
    // Its clean exit is the snapshotter's business (its own test); here
    // it is only reported, and a daemon that stays is killed by the guard.
    match daemon.stop() {
        Some(status) if status.success() => {}
        status => eprintln!(
            "capsa-snapshotter: {status:?} on SIGTERM (None: no exit within the limit)\n{}",
            daemon.log()
        ),
    }
}

/// Who goes first alternates, so that the machine's load weighs on both.
fn order(i: usize) -> [usize; 2] {
    if i.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

fn id(kind: &Rootfs) -> String {
    format!("io-{}", kind.name)
}

/// One `ctr run --rm <image> <id> true` on `kind`, in milliseconds.
fn ctr_run_true(ctrd: &Containerd, image: &str, kind: &Rootfs, i: usize) -> f64 {
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(kind.run_args());
    args.extend([
        image.into(),
        format!("lat-{}-{i}", kind.name),
        "true".into(),
    ]);
    let t = Instant::now();
    stdout_ok(ctrd, &args);
    t.elapsed().as_secs_f64() * 1000.0
}

/// The key of the one committed snapshot (busybox's one layer) of
/// `snapshotter`.
fn committed_layer(ctrd: &Containerd, snapshotter: &str) -> String {
    let committed = ctrd.committed_snapshots(snapshotter);
    let [layer] = committed.as_slice() else {
        panic!("{snapshotter}: not one committed snapshot: {committed:?}");
    };
    layer.clone()
}

/// `ctr snapshots prepare` of an active snapshot on `parent`, then its
/// `rm`, in milliseconds: the snapshotter's share of a container's start
/// and removal.
fn prepare_remove(ctrd: &Containerd, snapshotter: &str, parent: &str, i: usize) -> f64 {
    let key = format!("bench-snap-{i}");
    let base = ["snapshots", "--snapshotter", snapshotter].map(String::from);
    let t = Instant::now();
    stdout_ok(
        ctrd,
        &[&base[..], &["prepare".into(), key.clone(), parent.into()]].concat(),
    );
    stdout_ok(ctrd, &[&base[..], &["rm".into(), key]].concat());
    t.elapsed().as_secs_f64() * 1000.0
}

/// A new task of the populated container: host page cache dropped first.
fn measure(ctrd: &Containerd, kind: &Rootfs) -> Sample {
    drop_host_caches();
    let out = stdout_ok(ctrd, &["task".into(), "start".into(), id(kind)]);
    let lines: Vec<&str> = out.lines().collect();
    let [mount, times] = lines.as_slice() else {
        panic!("{}: unexpected output {out:?}", kind.name);
    };
    assert!((kind.expect)(mount), "{}: rootfs is {mount:?}", kind.name);
    let f: Vec<f64> = times
        .split_whitespace()
        .map(|w| {
            w.parse()
                .unwrap_or_else(|_| panic!("{}: {out:?}", kind.name))
        })
        .collect();
    let [t0, t1, t2, n] = f.as_slice() else {
        panic!("{}: unexpected output {out:?}", kind.name);
    };
    let entries = 1 + DIRS * (1 + FILES_PER_DIR);
    assert_eq!(*n as usize, entries, "{}: find saw {n} entries", kind.name);
    Sample {
        // /proc/uptime counts in 10 ms steps.
        read_mib_s: FILE_MIB as f64 / (t1 - t0).max(0.01),
        walk_ms: (t2 - t1).max(0.01) * 1000.0,
    }
}

/// `ctr --address <socket> --namespace k8s.io <args>`, bounded by
/// [`CTR_LIMIT`]; must succeed; returns its standard output. Every step
/// goes through here: a stop signal (Ctrl-C) ends the bench before it.
fn stdout_ok(ctrd: &Containerd, args: &[String]) -> String {
    interrupt::check();
    let mut cmd = Command::new(CTR);
    cmd.arg("--address")
        .arg(ctrd.socket())
        .args(["--namespace", NAMESPACE])
        .args(args);
    let out: Output = run_bounded(cmd, None, CTR_LIMIT);
    assert!(
        out.status.success(),
        "ctr {args:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Written-back, then dropped: the next read comes from the disk (or
/// what the machine's own virtual disk caches below it).
fn drop_host_caches() {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop the host's page cache");
}

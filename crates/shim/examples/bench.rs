//! `make bench`, containerd part: in one run, side by side,
//! - `ctr run --rm <busybox> true` with capsa's shim, with runc, and a bare
//!   QEMU boot of the same kernel (init powers off at once): medians and
//!   ratios;
//! - host memory of idle pods (PSS of QEMU, virtiofsd, vhost-device-vsock
//!   and the shim, from `/proc/PID/smaps_rollup`) for 1 and 5 pods.
//!
//! Needs the release shim in `$SHIM_DIR` (the Makefile builds it) and the
//! guest assets (`$CAPSA_TEST_ASSETS`, default /var/cache/capsa/assets).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capsa_test_infra::containerd::{Containerd, Opts};
use capsa_test_infra::leaks::processes_naming;
use capsa_test_infra::TestEnv;
use stats::median;

#[path = "common/params.rs"]
mod params;
#[path = "common/stats.rs"]
mod stats;

const CAPSA: &str = "io.containerd.capsa.v2";
const RUNC: &str = "io.containerd.runc.v2";

fn main() {
    let runs = params::runs(5);
    let shim_dir = params::shim_dir();
    let env = TestEnv::short();
    let ctrd = Containerd::start(Opts {
        shim_dir: Some(shim_dir),
        capsa_config: Some(env.config.clone()),
        ..Default::default()
    });
    let image = ctrd.import_busybox();
    let bare = BareVm::new(&env);

    println!("== start latency: {runs} runs each, alternating ==");
    let (mut t_capsa, mut t_runc, mut t_bare) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        t_bare.push(bare.boot());
        t_capsa.push(ctr_run(&ctrd, &image, CAPSA, &format!("lat-capsa-{i}")));
        t_runc.push(ctr_run(&ctrd, &image, RUNC, &format!("lat-runc-{i}")));
        println!(
            "run {i}: bare {:.0} ms, capsa {:.0} ms, runc {:.0} ms",
            t_bare[i], t_capsa[i], t_runc[i]
        );
    }
    let (mb, mc, mr) = (median(&t_bare), median(&t_capsa), median(&t_runc));
    println!("median bare QEMU boot (same kernel, init powers off): {mb:.0} ms");
    println!("median ctr run --rm true, capsa:                     {mc:.0} ms");
    println!("median ctr run --rm true, runc:                      {mr:.0} ms");
    println!("ratio capsa/bare: {:.2}", mc / mb);
    println!("ratio capsa/runc: {:.2}", mc / mr);

    println!("== host memory of idle pods (PSS) ==");
    for pods in [1, 5] {
        let ids: Vec<String> = (0..pods).map(|i| format!("idle{pods}-{i}")).collect();
        for id in &ids {
            let out = ctrd.ctr(&[
                "run",
                "-d",
                "--runtime",
                CAPSA,
                &image,
                id,
                "sleep",
                "100000",
            ]);
            assert!(out.status.success(), "start {id}: {out:?}");
        }
        // Let the guests settle.
        std::thread::sleep(Duration::from_secs(3));
        let mut total = 0u64;
        for id in &ids {
            let kib = pod_pss_kib(&env.state_dir, id);
            total += kib;
        }
        println!(
            "{pods} pod(s): total {:.1} MiB, per pod {:.1} MiB",
            total as f64 / 1024.0,
            total as f64 / 1024.0 / pods as f64
        );
        for id in &ids {
            ctrd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
        }
        for id in &ids {
            wait_stopped(&ctrd, id);
            ctrd.ctr(&["task", "delete", id]);
            ctrd.ctr(&["containers", "delete", id]);
        }
    }
}

/// One `ctr run --rm <image> <id> true`, in milliseconds.
fn ctr_run(ctrd: &Containerd, image: &str, runtime: &str, id: &str) -> f64 {
    let start = Instant::now();
    let out = ctrd.ctr(&["run", "--rm", "--runtime", runtime, image, id, "true"]);
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    assert!(out.status.success(), "{runtime} {id}: {out:?}");
    ms
}

fn wait_stopped(ctrd: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ls = ctrd.ctr_ok(&["task", "ls"]);
        if !ls
            .lines()
            .any(|l| l.starts_with(&format!("{id} ")) && !l.contains("STOPPED"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// PSS (KiB) of a pod's host processes: QEMU, virtiofsd and the vsock
/// daemon (their command lines name the pod's state directory) and its
/// shim (`-id <id>`).
fn pod_pss_kib(state_dir: &Path, id: &str) -> u64 {
    let dir = format!("{}/{id}/", state_dir.display());
    let mut procs = processes_naming(&dir);
    procs.extend(
        processes_naming("containerd-shim-capsa-v2")
            .into_iter()
            .filter(|p| p.contains(&format!("-id {id} "))),
    );
    procs
        .iter()
        .filter_map(|p| p.split(':').next()?.parse::<u32>().ok())
        .map(pss_kib)
        .sum()
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A bare QEMU boot of the guest kernel with a busybox initrd whose init
/// powers off at once: the floor for any VM-based runtime here.
struct BareVm {
    kernel: PathBuf,
    initrd: PathBuf,
    accel: &'static str,
}

impl BareVm {
    fn new(env: &TestEnv) -> Self {
        let assets = capsa_test_infra::assets_dir();
        let work = env.dir.path().join("bare");
        std::fs::create_dir_all(work.join("root/bin")).unwrap();
        std::fs::copy("/bin/busybox", work.join("root/bin/busybox")).expect("busybox-static");
        std::fs::write(
            work.join("root/init"),
            "#!/bin/busybox sh\n/bin/busybox poweroff -f\n",
        )
        .unwrap();
        let initrd = work.join("bare.img");
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "chmod 0755 init && find . | cpio -o -H newc --quiet | lz4 -l -9 -q -c > {}",
                initrd.display()
            ))
            .current_dir(work.join("root"))
            .status()
            .expect("cpio");
        assert!(status.success());
        let kvm = Path::new("/dev/kvm").exists()
            && std::fs::read_to_string("/proc/cpuinfo")
                .unwrap_or_default()
                .split_whitespace()
                .any(|f| f == "vmx" || f == "svm");
        Self {
            kernel: assets.join("vmlinuz"),
            initrd,
            accel: if kvm { "kvm" } else { "tcg" },
        }
    }

    fn boot(&self) -> f64 {
        let start = Instant::now();
        let status = Command::new("qemu-system-x86_64")
            .args(["-M", "q35", "-accel", self.accel, "-m", "512", "-smp", "1"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-serial", "null", "-kernel"])
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            // Kata's fast-boot parameters, which capsa passes too: what
            // speeds up the kernel speeds up the bare boot as well.
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=1 quiet {}",
                capsa_hypervisor::FAST_BOOT_PARAMS.join(" ")
            ))
            .status()
            .expect("qemu");
        assert!(status.success());
        start.elapsed().as_secs_f64() * 1000.0
    }
}

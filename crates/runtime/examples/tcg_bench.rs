//! `make bench`, TCG translation cache part: for `tcg_tb_size` 32, 64,
//! 128 and 256 MiB against QEMU's default (0: 1 GiB), side by side in one
//! run (the sizes alternate within each round),
//! - an idle sandbox's QEMU memory right after start: PSS and anonymous
//!   memory (`/proc/PID/smaps_rollup`; the translation cache is anonymous,
//!   guest RAM a shared memfd);
//! - the time of `capsa run --rootfs ... -- true` (the `capsa` binary on
//!   `PATH`, or `$CAPSA`).
//!
//! Then free page reporting (`reclaim_guest_freed_memory`) off against
//! on, alternating: an idle sandbox's QEMU PSS right after start and
//! [`IDLE`] later (the guest reports what it freed while booting).
//!
//! The translation cache part is only meaningful under TCG (the key is
//! ignored with KVM). Needs root and the guest assets
//! (`$CAPSA_TEST_ASSETS`).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use capsa_runtime::{Sandbox, VmSize};
use capsa_test_infra::TestEnv;

const SIZES: &[u32] = &[0, 32, 64, 128, 256];
/// How long an idle sandbox is left before its memory is measured again.
const IDLE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Samples {
    pss: Vec<f64>,
    anon: Vec<f64>,
    run_true: Vec<f64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = capsa_test_infra::bench_runs(3);
    let capsa = std::env::var("CAPSA").unwrap_or_else(|_| "capsa".into());
    let envs: Vec<(u32, TestEnv)> = SIZES
        .iter()
        .map(|&n| (n, TestEnv::with_qemu_extra(&format!("tcg_tb_size = {n}"))))
        .collect();
    let mut samples: BTreeMap<u32, Samples> = BTreeMap::new();
    println!("== TCG translation cache: tb-size (MiB) vs QEMU's default, {runs} rounds ==");
    for round in 0..runs {
        for (n, env) in &envs {
            let (config, _) = capsa_runtime::load_config(Some(&env.config)).expect("config");
            let sandbox = Sandbox::start(&config, VmSize::default())
                .await
                .expect("sandbox start");
            let pid = sandbox.hypervisor_pid().expect("QEMU pid");
            let (pss, anon) = rollup_mib(pid);
            sandbox.destroy().await.expect("destroy");

            let t = Instant::now();
            let out = Command::new(&capsa)
                .arg("--config")
                .arg(&env.config)
                .args(["run", "--rootfs"])
                .arg(&env.rootfs)
                .args(["--", "true"])
                .output()
                .unwrap_or_else(|e| panic!("{capsa}: {e}"));
            let took = t.elapsed().as_secs_f64() * 1000.0;
            assert!(out.status.success(), "capsa run true: {out:?}");
            println!(
                "round {}: tb-size {:>7}: QEMU PSS {pss:.0} MiB, anonymous {anon:.0} MiB; run true {took:.0} ms",
                round + 1,
                label(*n)
            );
            let s = samples.entry(*n).or_default();
            s.pss.push(pss);
            s.anon.push(anon);
            s.run_true.push(took);
        }
    }
    let base = &samples[&0];
    let (bp, ba, bt) = (
        median(&base.pss),
        median(&base.anon),
        median(&base.run_true),
    );
    println!(
        "tb-size  | QEMU PSS MiB | anonymous MiB | run true ms | PSS ratio | anon ratio | time ratio"
    );
    for (n, s) in &samples {
        let (p, a, t) = (median(&s.pss), median(&s.anon), median(&s.run_true));
        println!(
            "{:>8} | {p:>12.0} | {a:>13.0} | {t:>11.0} | {:>9.2} | {:>10.2} | {:>10.2}",
            label(*n),
            p / bp,
            a / ba,
            t / bt
        );
    }
    reporting(runs).await;
}

async fn reporting(runs: usize) {
    println!("== free page reporting: idle QEMU PSS at start and {IDLE:?} later, {runs} rounds ==");
    let envs: Vec<(bool, TestEnv)> = [false, true]
        .into_iter()
        .map(|on| {
            let extra = format!("reclaim_guest_freed_memory = {on}");
            (on, TestEnv::with_qemu_extra(&extra))
        })
        .collect();
    let mut later: BTreeMap<bool, Vec<f64>> = BTreeMap::new();
    for round in 0..runs {
        for (on, env) in &envs {
            let (config, _) = capsa_runtime::load_config(Some(&env.config)).expect("config");
            let sandbox = Sandbox::start(&config, VmSize::default())
                .await
                .expect("sandbox start");
            let pid = sandbox.hypervisor_pid().expect("QEMU pid");
            let (at_start, _) = rollup_mib(pid);
            tokio::time::sleep(IDLE).await;
            let (idle, _) = rollup_mib(pid);
            sandbox.destroy().await.expect("destroy");
            println!(
                "round {}: reporting {on:>5}: QEMU PSS {at_start:.0} MiB at start, {idle:.0} MiB idle",
                round + 1
            );
            later.entry(*on).or_default().push(idle);
        }
    }
    let (off, on) = (median(&later[&false]), median(&later[&true]));
    println!(
        "idle QEMU PSS: off {off:.0} MiB, on {on:.0} MiB, ratio on/off {:.2}",
        on / off
    );
}

fn label(n: u32) -> String {
    if n == 0 {
        "default".into()
    } else {
        n.to_string()
    }
}

/// PSS and anonymous memory of process `pid`, MiB.
fn rollup_mib(pid: u32) -> (f64, f64) {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {path}"))
            / 1024.0
    };
    (field("Pss:"), field("Anonymous:"))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

//! `make bench`, elastic part: in one run, side by side,
//! - hot-add latency: from the request until the guest can use it (one
//!   vCPU: hot-plugged, ACPI `_OST`, onlined by the agent; 1 GiB: a DIMM
//!   plugged and online in the guest) — through the runtime's sizing, as
//!   a container's limits would ask;
//! - sandbox start time with a VM booted at the default size (and room to
//!   grow) against one booted at the full size.
//!
//! Needs root and the guest assets (`$CAPSA_TEST_ASSETS`).

use std::time::Instant;

use capsa_runtime::resource::cpu_mem::Limits;
use capsa_runtime::{Sandbox, VmSize};
use capsa_test_infra::TestEnv;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = capsa_test_infra::bench_runs(3);
    let env = TestEnv::with_qemu_extra(
        "default_vcpus = 1\ndefault_maxvcpus = 2\ndefault_memory = 512\ndefault_maxmemory = 2048",
    );
    let (config, _) = capsa_runtime::load_config(Some(&env.config)).expect("config");

    println!("== hot-add, request to usable in the guest ({runs} runs) ==");
    let (mut cpu, mut mem) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut sandbox = Sandbox::start(&config, VmSize::default())
            .await
            .expect("sandbox start");
        let t = Instant::now();
        let one_cpu = Limits {
            milli_cpus: 1000,
            memory_bytes: 0,
        };
        sandbox.size_for("bench", one_cpu).await.expect("+1 vCPU");
        cpu.push(ms(t));
        let t = Instant::now();
        let one_gib = Limits {
            milli_cpus: 1000,
            memory_bytes: 1 << 30,
        };
        sandbox.size_for("bench", one_gib).await.expect("+1 GiB");
        mem.push(ms(t));
        let r = sandbox.record().resources.expect("resources recorded");
        assert_eq!((r.vcpus, r.memory_mib), (2, 512 + 1024), "{r:?}");
        sandbox.destroy().await.expect("destroy");
    }
    println!("+1 vCPU: median {:.0} ms ({cpu:.0?})", median(&cpu));
    println!("+1 GiB:  median {:.0} ms ({mem:.0?})", median(&mem));

    println!(
        "== sandbox start: default size (1 vCPU, 512 MiB) vs full size (2 vCPUs, 1536 MiB) =="
    );
    let full = VmSize {
        vcpus: Some(2),
        memory_mib: Some(1536),
    };
    let (mut small, mut big) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (size, out) in [(VmSize::default(), &mut small), (full, &mut big)] {
            let t = Instant::now();
            let sandbox = Sandbox::start(&config, size).await.expect("sandbox start");
            out.push(ms(t));
            sandbox.destroy().await.expect("destroy");
        }
    }
    let (s, b) = (median(&small), median(&big));
    println!("default size: median {s:.0} ms ({small:.0?})");
    println!("full size:    median {b:.0} ms ({big:.0?})");
    println!("ratio default/full: {:.2}", s / b);
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

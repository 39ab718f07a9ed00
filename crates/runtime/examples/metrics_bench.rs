//! `make bench`, metrics part: what a scrape of a pod's metrics socket
//! costs (docs/metrics.md):
//! - its time: `GET /metrics` on the socket (host `/proc` reads, the
//!   guest's GetMetrics, parsing and checking, rendering), `RUNS` times;
//! - the pod's CPU (owner, VMM, virtiofsd) over `WINDOW` seconds left
//!   alone, against the same window scraped every second.
//!
//! Needs root and the guest assets (`$CAPSA_TEST_ASSETS`).

use std::time::{Duration, Instant};

use capsa_runtime::metrics::{host, scrape, server};
use capsa_runtime::{Sandbox, VmSize};
use capsa_test_infra::TestEnv;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = capsa_test_infra::bench_runs(50);
    let window: u64 = std::env::var("WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(30);
    let env = TestEnv::new();
    let (config, _) = capsa_runtime::load_config(Some(&env.config)).expect("config");
    let sandbox = Sandbox::start(&config, VmSize::default())
        .await
        .expect("sandbox start");
    let socket = sandbox.dir().path().join(server::SOCKET);
    let limit = Duration::from_secs(10);

    println!("== one scrape of a pod's metrics socket ({runs} runs) ==");
    let mut took = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let families = scrape(&socket, limit).await.expect("scrape");
        took.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = capsa_runtime::metrics::text::render(&families).len();
    }
    took.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    println!(
        "scrape: median {:.1} ms, p90 {:.1} ms, max {:.1} ms; {} KiB of text",
        at(0.5),
        at(0.9),
        at(1.0),
        bytes / 1024
    );

    let vmm = sandbox.hypervisor_pid().expect("VMM pid") as i32;
    let mut pids = vec![std::process::id() as i32, vmm];
    pids.extend(host::children_named(std::process::id(), "virtiofsd"));
    println!("== the pod's CPU (owner, VMM, virtiofsd) over {window} s ==");
    let idle = cpu_percent(&pids, window, false, &socket).await;
    let scraped = cpu_percent(&pids, window, true, &socket).await;
    println!("left alone:          {idle:.2} % of one CPU");
    println!("scraped every 1 s:   {scraped:.2} % of one CPU");
    println!("cost of the scrapes: {:.2} % of one CPU", scraped - idle);
    sandbox.destroy().await.expect("destroy");
}

/// The CPU `pids` used over `window` seconds (scraping `socket` every
/// second if `scrape`), in percent of one CPU.
async fn cpu_percent(pids: &[i32], window: u64, scrape_it: bool, socket: &std::path::Path) -> f64 {
    let (_, before) = host::cost(pids);
    let start = Instant::now();
    for _ in 0..window {
        if scrape_it {
            scrape(socket, Duration::from_secs(10))
                .await
                .expect("scrape");
        }
        let next = start + Duration::from_secs(1) * (start.elapsed().as_secs() as u32 + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    let (_, after) = host::cost(pids);
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (after - before) as f64 / ticks / start.elapsed().as_secs_f64() * 100.0
}

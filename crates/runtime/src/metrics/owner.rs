//! What the owner process measures as it goes (the `capsa_shim_*`
//! histograms and counters): agent request latencies, the start-up
//! timeline's steps, hot-plugs, health-check failures. One set per
//! process: a shim or a `capsa run` owner serves one sandbox.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The owner's own measurements.
pub struct OwnerMetrics {
    registry: Mutex<Registry>,
    rpc: Histograms,
    steps: Histograms,
    hotplug: Histograms,
    hotplugs: Family<Labels, Counter>,
    health_failures: Counter,
    scrapes: Counter,
    guest_failures: Counter,
}

fn rpc_histogram() -> Histogram {
    // Kata's buckets: 1 ms doubling, 10 of them.
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

fn seconds_histogram() -> Histogram {
    // 5 ms to ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

static OWNER: LazyLock<OwnerMetrics> = LazyLock::new(|| {
    let rpc = Histograms::new_with_constructor(rpc_histogram as fn() -> Histogram);
    let steps = Histograms::new_with_constructor(seconds_histogram as fn() -> Histogram);
    let hotplug = Histograms::new_with_constructor(seconds_histogram as fn() -> Histogram);
    let hotplugs = Family::<Labels, Counter>::default();
    let health_failures = Counter::default();
    let scrapes = Counter::default();
    let guest_failures = Counter::default();
    let mut registry = Registry::with_prefix("capsa_shim");
    registry.register(
        "agent_rpc_durations_histogram_milliseconds",
        "Agent request latencies in milliseconds, by request",
        rpc.clone(),
    );
    registry.register(
        "step_duration_seconds",
        "Durations of the sandbox life's timeline steps (start-up, containers, teardown)",
        steps.clone(),
    );
    registry.register(
        "hotplug_duration_seconds",
        "Durations of hot-plugs into the running VM, by device kind",
        hotplug.clone(),
    );
    registry.register(
        "hotplug",
        "Hot-plugs into the running VM, by device kind",
        hotplugs.clone(),
    );
    registry.register(
        "health_check_failures",
        "Agent health checks that failed",
        health_failures.clone(),
    );
    registry.register(
        "scrapes",
        "Scrapes of the pod's metrics socket",
        scrapes.clone(),
    );
    registry.register(
        "guest_metrics_failures",
        "Scrapes whose GetMetrics failed, timed out or was refused",
        guest_failures.clone(),
    );
    OwnerMetrics {
        registry: Mutex::new(registry),
        scrapes,
        guest_failures,
        rpc,
        steps,
        hotplug,
        hotplugs,
        health_failures,
    }
});

/// Counts an agent request that took `took` (Kata's `action` label:
/// `grpc.<Method>Request`).
pub fn observe_rpc(method: &str, took: Duration) {
    // Kata's request names where capsa's method names differ.
    let method = match method {
        "WriteStdin" => "WriteStream",
        "Version" => "Check",
        m => m,
    };
    OWNER
        .rpc
        .get_or_create(&vec![("action", format!("grpc.{method}Request"))])
        .observe(took.as_secs_f64() * 1000.0);
}

/// The device kind of a timeline step that is a hot-plug, if it is one.
fn hotplug_kind(step: &str) -> Option<&'static str> {
    match step {
        "drive hot-plug" => Some("block"),
        "nic hot-plug" => Some("network"),
        "resize" => Some("resources"),
        _ => None,
    }
}

/// Counts a timeline step that took `took` (and a hot-plug if it is one).
pub fn observe_step(step: &str, took: Duration) {
    let secs = took.as_secs_f64();
    OWNER
        .steps
        .get_or_create(&vec![("step", step.to_string())])
        .observe(secs);
    if let Some(kind) = hotplug_kind(step) {
        let labels = vec![("device", kind.to_string())];
        OWNER.hotplug.get_or_create(&labels).observe(secs);
        OWNER.hotplugs.get_or_create(&labels).inc();
    }
}

/// Counts a failed agent health check.
pub fn health_check_failed() {
    OWNER.health_failures.inc();
}

/// Counts a scrape of the pod's socket.
pub fn count_scrape() {
    OWNER.scrapes.inc();
}

/// Counts a scrape without the guest's families.
pub fn count_guest_failure() {
    OWNER.guest_failures.inc();
}

/// The owner's measurements, encoded (OpenMetrics text).
pub fn encode(into: &mut String) {
    let registry = OWNER.registry.lock().unwrap_or_else(|e| e.into_inner());
    let _ = prometheus_client::encoding::text::encode_registry(into, &registry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_names_and_labels() {
        observe_rpc("CreateSandbox", Duration::from_millis(3));
        observe_step("drive hot-plug", Duration::from_millis(20));
        health_check_failed();
        let mut text = String::new();
        encode(&mut text);
        let families = crate::metrics::text::parse(&text).unwrap();
        let out = crate::metrics::text::render(&families);
        assert!(
            out.contains("capsa_shim_agent_rpc_durations_histogram_milliseconds_bucket{le=\"4.0\",action=\"grpc.CreateSandboxRequest\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("capsa_shim_hotplug_total{device=\"block\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("capsa_shim_health_check_failures_total "),
            "{out}"
        );
        assert!(
            out.contains("capsa_shim_step_duration_seconds_count{step=\"drive hot-plug\"} 1"),
            "{out}"
        );
    }
}

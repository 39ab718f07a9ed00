//! GetMetrics: guest and agent figures in the Prometheus text exposition
//! format (version 0.0.4), as the `metrics` string of the reply.
//!
//! Guest figures come from `/proc` (meminfo, loadavg, stat, uptime); agent
//! figures from `/proc/self` and the agent's own counters. A file that
//! cannot be read leaves its families out rather than failing the call.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests the agent has answered (every service and method).
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Counts one request.
pub fn count_request() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// Requests counted so far.
pub fn requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

/// One metric family: `# HELP`, `# TYPE`, then its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// Label pairs and value of each sample.
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn single(name: &'static str, kind: &'static str, help: &'static str, v: f64) -> Self {
        let mut f = Self::new(name, kind, help);
        f.samples.push((Vec::new(), v));
        f
    }

    fn sample(mut self, label: &'static str, value: &str, v: f64) -> Self {
        self.samples.push((vec![(label, value.to_string())], v));
        self
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The text exposition of `families`.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", l.join(","));
            }
            let _ = writeln!(out, " {v}");
        }
    }
    out
}

/// `/proc/meminfo`: the lines in kB, in bytes, labelled by field.
pub fn meminfo(text: &str) -> Family {
    let mut f = Family::new(
        "capsa_guest_meminfo_bytes",
        "gauge",
        "Fields of the guest's /proc/meminfo given in kB, in bytes.",
    );
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(kb) = rest.trim().strip_suffix(" kB") else {
            continue;
        };
        if let Ok(kb) = kb.trim().parse::<u64>() {
            f = f.sample("field", key.trim(), (kb * 1024) as f64);
        }
    }
    f
}

/// `/proc/loadavg`: the three load averages and the task counts.
pub fn loadavg(text: &str) -> Vec<Family> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let mut load = Family::new("capsa_guest_load", "gauge", "Load average of the guest.");
    for (period, value) in ["1m", "5m", "15m"].iter().zip(fields.iter()) {
        if let Ok(v) = value.parse::<f64>() {
            load = load.sample("period", period, v);
        }
    }
    let mut tasks = Family::new(
        "capsa_guest_tasks",
        "gauge",
        "Runnable and total scheduling entities of the guest.",
    );
    if let Some((running, total)) = fields.get(3).and_then(|t| t.split_once('/')) {
        for (state, v) in [("running", running), ("total", total)] {
            if let Ok(v) = v.parse::<f64>() {
                tasks = tasks.sample("state", state, v);
            }
        }
    }
    vec![load, tasks]
}

/// The `cpu` line of `/proc/stat`, in seconds (`ticks` per second).
pub fn cpu(text: &str, ticks: f64) -> Family {
    const MODES: [&str; 10] = [
        "user",
        "nice",
        "system",
        "idle",
        "iowait",
        "irq",
        "softirq",
        "steal",
        "guest",
        "guest_nice",
    ];
    let mut f = Family::new(
        "capsa_guest_cpu_seconds_total",
        "counter",
        "Time the guest's CPUs spent in each mode, all CPUs together.",
    );
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"));
    for (mode, v) in MODES
        .iter()
        .zip(line.into_iter().flat_map(|l| l.split_whitespace().skip(1)))
    {
        if let Ok(v) = v.parse::<u64>() {
            f = f.sample("mode", mode, v as f64 / ticks);
        }
    }
    f
}

/// `/proc/uptime`: seconds since boot.
pub fn uptime(text: &str) -> Family {
    let mut f = Family::new(
        "capsa_guest_uptime_seconds",
        "gauge",
        "Seconds since the guest booted.",
    );
    if let Some(v) = text.split_whitespace().next().and_then(|v| v.parse().ok()) {
        f.samples.push((Vec::new(), v));
    }
    f
}

/// A `Key: value` line of `/proc/<pid>/status` as a number (units dropped).
fn status_field(status: &str, key: &str) -> Option<f64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// What the agent knows of itself besides `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentFigures {
    pub containers: usize,
    pub requests: u64,
}

/// The agent's own families, from `proc_self` (`/proc/self`).
pub fn agent(proc_self: &Path, figures: AgentFigures) -> Vec<Family> {
    let status = std::fs::read_to_string(proc_self.join("status")).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(kb) = status_field(&status, "VmRSS") {
        out.push(Family::single(
            "capsa_agent_resident_memory_bytes",
            "gauge",
            "Resident memory of the agent.",
            kb * 1024.0,
        ));
    }
    if let Some(n) = status_field(&status, "Threads") {
        out.push(Family::single(
            "capsa_agent_threads",
            "gauge",
            "Threads of the agent.",
            n,
        ));
    }
    if let Ok(fds) = std::fs::read_dir(proc_self.join("fd")) {
        out.push(Family::single(
            "capsa_agent_open_fds",
            "gauge",
            "File descriptors the agent holds open.",
            fds.count() as f64,
        ));
    }
    out.push(Family::single(
        "capsa_agent_containers",
        "gauge",
        "Containers of the sandbox.",
        figures.containers as f64,
    ));
    out.push(Family::single(
        "capsa_agent_requests_total",
        "counter",
        "ttRPC requests the agent has received.",
        figures.requests as f64,
    ));
    out
}

/// Every family, read below `proc` (`/proc`).
pub fn collect(proc: &Path, figures: AgentFigures) -> String {
    let read = |name: &str| std::fs::read_to_string(proc.join(name)).unwrap_or_default();
    // SAFETY: sysconf only reads a configuration value.
    let ticks = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    let mut families = vec![meminfo(&read("meminfo"))];
    families.extend(loadavg(&read("loadavg")));
    families.push(cpu(&read("stat"), ticks));
    families.push(uptime(&read("uptime")));
    families.extend(agent(&proc.join("self"), figures));
    render(&families)
}

#[cfg(test)]
mod tests;

//! GetMetrics: guest and agent figures in the Prometheus text exposition
//! format (version 0.0.4), as the `metrics` string of the reply.
//!
//! The families and their `item` labels are Kata's agent's, with the
//! prefix `capsa_` (docs/metrics.md): guest figures from `/proc`
//! (meminfo, vmstat, loadavg, stat, net/dev, diskstats, mounts, uptime),
//! agent figures from `/proc/self` and the agent's own counters. A file
//! that cannot be read leaves its families out rather than failing the
//! call. The host checks this text before it passes it on.

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

    fn sample2(mut self, a: (&'static str, &str), b: (&'static str, &str), v: f64) -> Self {
        self.samples
            .push((vec![(a.0, a.1.to_string()), (b.0, b.1.to_string())], v));
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

/// Kata's `item` for a `/proc/meminfo` key (`MemTotal` → `mem_total`,
/// `Active(anon)` → `active_anon`, `DirectMap2M` → `direct_map_2M`).
fn meminfo_item(key: &str) -> String {
    match key {
        "AnonHugePages" => return "anon_hugepages".into(),
        "ShmemHugePages" => return "shmem_hugepages".into(),
        "FileHugePages" => return "file_hugepages".into(),
        "Percpu" => return "per_cpu".into(),
        "Committed_AS" => return "committed_as".into(),
        "NFS_Unstable" => return "nfs_unstable".into(),
        _ => {}
    }
    if let Some(size) = key.strip_prefix("DirectMap") {
        return format!("direct_map_{size}");
    }
    if let Some(rest) = key.strip_prefix("HugePages_") {
        return format!("hugepages_{}", rest.to_ascii_lowercase());
    }
    let mut out = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        match c {
            '(' | '_' => {
                if !out.ends_with('_') {
                    out.push('_');
                }
                prev_lower = false;
            }
            ')' => {}
            c if c.is_ascii_uppercase() => {
                if prev_lower && !out.ends_with('_') {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
                prev_lower = false;
            }
            c => {
                out.push(c);
                prev_lower = true;
            }
        }
    }
    out
}

/// `/proc/meminfo` as Kata's `guest_meminfo{item}`: sizes in bytes,
/// counts (the huge page counts) as they are.
pub fn meminfo(text: &str) -> Family {
    let mut f = Family::new(
        "capsa_guest_meminfo",
        "gauge",
        "The guest's /proc/meminfo (sizes in bytes).",
    );
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let rest = rest.trim();
        let (number, kb) = match rest.strip_suffix(" kB") {
            Some(n) => (n.trim(), true),
            None => (rest, false),
        };
        if let Ok(v) = number.parse::<u64>() {
            let v = if kb { v.saturating_mul(1024) } else { v };
            f = f.sample("item", &meminfo_item(key.trim()), v as f64);
        }
    }
    f
}

/// `/proc/vmstat` as Kata's `guest_vm_stat{item}`.
pub fn vmstat(text: &str) -> Family {
    let mut f = Family::new(
        "capsa_guest_vm_stat",
        "gauge",
        "The guest's virtual memory statistics (/proc/vmstat).",
    );
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(k), Some(v)) = (words.next(), words.next()) {
            if let Ok(v) = v.parse::<u64>() {
                f = f.sample("item", k, v as f64);
            }
        }
    }
    f
}

/// `/proc/loadavg`: Kata's `guest_load{item=load1|load5|load15}` and
/// `guest_tasks{item=cur|max}` (runnable and total entities).
pub fn loadavg(text: &str) -> Vec<Family> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let mut load = Family::new("capsa_guest_load", "gauge", "The guest's load averages.");
    for (item, value) in ["load1", "load5", "load15"].iter().zip(fields.iter()) {
        if let Ok(v) = value.parse::<f64>() {
            load = load.sample("item", item, v);
        }
    }
    let mut tasks = Family::new(
        "capsa_guest_tasks",
        "gauge",
        "The guest's runnable (cur) and total (max) scheduling entities.",
    );
    if let Some((cur, max)) = fields.get(3).and_then(|t| t.split_once('/')) {
        for (item, v) in [("cur", cur), ("max", max)] {
            if let Ok(v) = v.parse::<f64>() {
                tasks = tasks.sample("item", item, v);
            }
        }
    }
    vec![load, tasks]
}

/// The `cpu` lines of `/proc/stat` as Kata's `guest_cpu_time{cpu,item}`,
/// in clock ticks (USER_HZ) as `/proc` gives them; `cpu="total"` for all.
pub fn cpu(text: &str) -> Family {
    const ITEMS: [&str; 10] = [
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
        "capsa_guest_cpu_time",
        "gauge",
        "Time the guest's CPUs spent in each mode, in clock ticks (/proc/stat).",
    );
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let cpu = match words.next() {
            Some("cpu") => "total".to_string(),
            Some(c) => match c.strip_prefix("cpu") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.to_string(),
                _ => continue,
            },
            None => continue,
        };
        for (item, v) in ITEMS.iter().zip(words) {
            if let Ok(v) = v.parse::<u64>() {
                f = f.sample2(("cpu", &cpu), ("item", item), v as f64);
            }
        }
    }
    f
}

/// `/proc/net/dev` as Kata's `guest_netdev_stat{interface,item}`.
pub fn netdev(text: &str) -> Family {
    const ITEMS: [&str; 16] = [
        "recv_bytes",
        "recv_packets",
        "recv_errs",
        "recv_drop",
        "recv_fifo",
        "recv_frame",
        "recv_compressed",
        "recv_multicast",
        "sent_bytes",
        "sent_packets",
        "sent_errs",
        "sent_drop",
        "sent_fifo",
        "sent_colls",
        "sent_carrier",
        "sent_compressed",
    ];
    let mut f = Family::new(
        "capsa_guest_netdev_stat",
        "gauge",
        "The guest's network devices (/proc/net/dev).",
    );
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        for (item, v) in ITEMS.iter().zip(rest.split_whitespace()) {
            if let Ok(v) = v.parse::<u64>() {
                f = f.sample2(("interface", name.trim()), ("item", item), v as f64);
            }
        }
    }
    f
}

/// `/proc/diskstats` as Kata's `guest_diskstat{disk,item}`.
pub fn diskstats(text: &str) -> Family {
    const ITEMS: [&str; 17] = [
        "reads",
        "merged",
        "sectors_read",
        "time_reading",
        "writes",
        "writes_merged",
        "sectors_written",
        "time_writing",
        "in_progress",
        "time_in_progress",
        "weighted_time_in_progress",
        "discards",
        "discards_merged",
        "sectors_discarded",
        "time_discarding",
        "flushes",
        "time_flushing",
    ];
    let mut f = Family::new(
        "capsa_guest_diskstat",
        "gauge",
        "The guest's disks (/proc/diskstats).",
    );
    for line in text.lines() {
        let mut words = line.split_whitespace().skip(2);
        let Some(disk) = words.next() else { continue };
        // Loop and RAM disks say nothing about the pod's storage.
        if disk.starts_with("loop") || disk.starts_with("ram") {
            continue;
        }
        for (item, v) in ITEMS.iter().zip(words) {
            if let Ok(v) = v.parse::<u64>() {
                f = f.sample2(("disk", disk), ("item", item), v as f64);
            }
        }
    }
    f
}

/// File systems the guest's capacity figures are kept for.
const FILESYSTEM_TYPES: [&str; 6] = ["ext4", "xfs", "virtiofs", "tmpfs", "btrfs", "overlay"];
/// The most mounts reported: a container that mounts without end does not
/// make the reply grow without end.
const MAX_FILESYSTEMS: usize = 64;

/// Sizes of the guest's file systems (`/proc/mounts`, then `statvfs`):
/// `guest_filesystem{mountpoint,fstype,item=size_bytes|free_bytes|
/// avail_bytes|files|files_free}` (beyond Kata).
pub fn filesystems(mounts: &str) -> Family {
    let mut f = Family::new(
        "capsa_guest_filesystem",
        "gauge",
        "Capacity of the guest's file systems (bytes, inodes).",
    );
    let mut seen = Vec::new();
    for line in mounts.lines() {
        let mut words = line.split_whitespace();
        let (Some(_), Some(point), Some(fstype)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if !FILESYSTEM_TYPES.contains(&fstype) || seen.contains(&point) {
            continue;
        }
        if seen.len() >= MAX_FILESYSTEMS {
            break;
        }
        seen.push(point);
        let Ok(st) = nix::sys::statvfs::statvfs(Path::new(point)) else {
            continue;
        };
        let block = st.fragment_size() as f64;
        let mut add = |item: &str, v: f64| {
            let labels = vec![
                ("mountpoint", point.to_string()),
                ("fstype", fstype.to_string()),
                ("item", item.to_string()),
            ];
            f.samples.push((labels, v));
        };
        add("size_bytes", st.blocks() as f64 * block);
        add("free_bytes", st.blocks_free() as f64 * block);
        add("avail_bytes", st.blocks_available() as f64 * block);
        add("files", st.files() as f64);
        add("files_free", st.files_free() as f64);
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

/// GetMetrics calls answered (Kata's `agent_scrape_count`).
static SCRAPES: AtomicU64 = AtomicU64::new(0);

/// The agent's own families, from `proc_self` (`/proc/self`), as Kata's:
/// `agent_proc_status`, `agent_proc_stat`, `agent_io_stat` (`item`),
/// `agent_total_rss`, `agent_total_vm`, `agent_total_time`,
/// `agent_process_*`, `agent_scrape_count`; and capsa's containers and
/// requests.
pub fn agent(proc_self: &Path, figures: AgentFigures, ticks: f64) -> Vec<Family> {
    let read = |name: &str| std::fs::read_to_string(proc_self.join(name)).unwrap_or_default();
    let status = read("status");
    let mut out = Vec::new();
    let mut proc_status = Family::new(
        "capsa_agent_proc_status",
        "gauge",
        "The agent's /proc/self/status (sizes in bytes).",
    );
    for (key, item, kb) in [
        ("VmPeak", "vmpeak", true),
        ("VmSize", "vmsize", true),
        ("VmLck", "vmlck", true),
        ("VmPin", "vmpin", true),
        ("VmHWM", "vmhwm", true),
        ("VmRSS", "vmrss", true),
        ("RssAnon", "rssanon", true),
        ("RssFile", "rssfile", true),
        ("RssShmem", "rssshmem", true),
        ("VmData", "vmdata", true),
        ("VmStk", "vmstk", true),
        ("VmExe", "vmexe", true),
        ("VmLib", "vmlib", true),
        ("VmPTE", "vmpte", true),
        ("VmSwap", "vmswap", true),
        ("HugetlbPages", "hugetlbpages", true),
        ("voluntary_ctxt_switches", "voluntary_ctxt_switches", false),
        (
            "nonvoluntary_ctxt_switches",
            "nonvoluntary_ctxt_switches",
            false,
        ),
    ] {
        if let Some(v) = status_field(&status, key) {
            proc_status = proc_status.sample("item", item, if kb { v * 1024.0 } else { v });
        }
    }
    out.push(proc_status);
    let stat = read("stat");
    // Fields after the command's closing parenthesis: state is field 3.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|w| w.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    // utime, stime, cutime, cstime are fields 14..=17 (index 11.. here).
    let field = |n: usize| fields.get(n - 3).copied();
    let mut proc_stat = Family::new(
        "capsa_agent_proc_stat",
        "gauge",
        "The agent's CPU times in clock ticks (/proc/self/stat).",
    );
    for (n, item) in [(14, "utime"), (15, "stime"), (16, "cutime"), (17, "cstime")] {
        if let Some(v) = field(n) {
            proc_stat = proc_stat.sample("item", item, v);
        }
    }
    out.push(proc_stat);
    let mut io = Family::new(
        "capsa_agent_io_stat",
        "gauge",
        "The agent's I/O (/proc/self/io).",
    );
    for line in read("io").lines() {
        if let Some((k, v)) = line.split_once(':') {
            if let Ok(v) = v.trim().parse::<f64>() {
                io = io.sample("item", k.trim(), v);
            }
        }
    }
    out.push(io);
    let rss = status_field(&status, "VmRSS");
    let vm = status_field(&status, "VmSize");
    let time = field(14).zip(field(15)).map(|(u, s)| u + s);
    for (name, help, v) in [
        (
            "capsa_agent_total_rss",
            "The agent's resident memory, kB.",
            rss,
        ),
        (
            "capsa_agent_total_vm",
            "The agent's virtual memory, kB.",
            vm,
        ),
        (
            "capsa_agent_total_time",
            "The agent's CPU time, clock ticks.",
            time,
        ),
        (
            "capsa_agent_process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss.map(|kb| kb * 1024.0),
        ),
        (
            "capsa_agent_process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            vm.map(|kb| kb * 1024.0),
        ),
        (
            "capsa_agent_threads",
            "Threads of the agent.",
            status_field(&status, "Threads"),
        ),
        (
            "capsa_agent_process_open_fds",
            "Number of open file descriptors.",
            std::fs::read_dir(proc_self.join("fd"))
                .ok()
                .map(|fds| fds.count() as f64),
        ),
    ] {
        if let Some(v) = v {
            out.push(Family::single(name, "gauge", help, v));
        }
    }
    if let Some(t) = time {
        out.push(Family::single(
            "capsa_agent_process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            t / ticks,
        ));
    }
    out.push(Family::single(
        "capsa_agent_scrape_count",
        "counter",
        "GetMetrics calls answered.",
        SCRAPES.fetch_add(1, Ordering::Relaxed) as f64 + 1.0,
    ));
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
    let mut families = vec![meminfo(&read("meminfo")), vmstat(&read("vmstat"))];
    families.extend(loadavg(&read("loadavg")));
    families.push(cpu(&read("stat")));
    families.push(netdev(&read("net/dev")));
    families.push(diskstats(&read("diskstats")));
    families.push(filesystems(&read("mounts")));
    families.push(uptime(&read("uptime")));
    families.extend(agent(&proc.join("self"), figures, ticks));
    render(&families)
}

#[cfg(test)]
mod tests;

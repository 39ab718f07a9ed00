//! Host processes as Kata reports them: `<prefix>_fds`, `_threads`,
//! `_proc_status{item}`, `_proc_stat{item}`, `_io_stat{item}` and
//! `_netdev{interface,item}`, read with `procfs` at each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// One process's families, named `<prefix>_...` (`shim`, `hypervisor`,
/// `virtiofsd`; the registry adds `capsa_`). Several pids under one prefix
/// (virtiofsd has one per share) are summed.
#[derive(Debug)]
pub struct ProcessCollector {
    pub prefix: &'static str,
    pub pids: Vec<i32>,
    /// `/proc/<pid>/net/dev` too (the shim's and the VMM's, as Kata's).
    pub netdev: bool,
}

/// What one process's `/proc` says, summed over the collector's pids.
#[derive(Debug, Default)]
struct Figures {
    fds: u64,
    threads: u64,
    status: Vec<(&'static str, u64)>,
    stat: Vec<(&'static str, u64)>,
    io: Vec<(&'static str, u64)>,
    netdev: Vec<(String, &'static str, u64)>,
}

fn add(into: &mut Vec<(&'static str, u64)>, item: &'static str, v: u64) {
    match into.iter_mut().find(|(k, _)| *k == item) {
        Some((_, sum)) => *sum += v,
        None => into.push((item, v)),
    }
}

fn read(pids: &[i32], netdev: bool) -> Option<Figures> {
    let mut f = Figures::default();
    let mut any = false;
    for &pid in pids {
        let Ok(p) = procfs::process::Process::new(pid) else {
            continue;
        };
        let (Ok(stat), Ok(status)) = (p.stat(), p.status()) else {
            continue;
        };
        any = true;
        f.fds += p.fd_count().unwrap_or(0) as u64;
        f.threads += status.threads;
        let kb = |v: Option<u64>| v.unwrap_or(0) * 1024;
        for (item, v) in [
            ("hugetlbpages", kb(status.hugetlbpages)),
            ("rssanon", kb(status.rssanon)),
            ("rssfile", kb(status.rssfile)),
            ("rssshmem", kb(status.rssshmem)),
            ("vmdata", kb(status.vmdata)),
            ("vmexe", kb(status.vmexe)),
            ("vmhwm", kb(status.vmhwm)),
            ("vmlck", kb(status.vmlck)),
            ("vmlib", kb(status.vmlib)),
            ("vmpeak", kb(status.vmpeak)),
            ("vmpin", kb(status.vmpin)),
            ("vmpte", kb(status.vmpte)),
            ("vmrss", kb(status.vmrss)),
            ("vmsize", kb(status.vmsize)),
            ("vmstk", kb(status.vmstk)),
            ("vmswap", kb(status.vmswap)),
            (
                "voluntary_ctxt_switches",
                status.voluntary_ctxt_switches.unwrap_or(0),
            ),
            (
                "nonvoluntary_ctxt_switches",
                status.nonvoluntary_ctxt_switches.unwrap_or(0),
            ),
        ] {
            add(&mut f.status, item, v);
        }
        for (item, v) in [
            ("utime", stat.utime),
            ("stime", stat.stime),
            ("cutime", stat.cutime.max(0) as u64),
            ("cstime", stat.cstime.max(0) as u64),
        ] {
            add(&mut f.stat, item, v);
        }
        if let Ok(io) = p.io() {
            for (item, v) in [
                ("rchar", io.rchar),
                ("wchar", io.wchar),
                ("syscr", io.syscr),
                ("syscw", io.syscw),
                ("readbytes", io.read_bytes),
                ("writebytes", io.write_bytes),
                ("cancelledwritebytes", io.cancelled_write_bytes),
            ] {
                add(&mut f.io, item, v);
            }
        }
        if netdev && f.netdev.is_empty() {
            for (name, d) in p.dev_status().unwrap_or_default() {
                for (item, v) in [
                    ("recv_bytes", d.recv_bytes),
                    ("recv_packets", d.recv_packets),
                    ("recv_errs", d.recv_errs),
                    ("recv_drop", d.recv_drop),
                    ("recv_fifo", d.recv_fifo),
                    ("recv_frame", d.recv_frame),
                    ("recv_compressed", d.recv_compressed),
                    ("recv_multicast", d.recv_multicast),
                    ("sent_bytes", d.sent_bytes),
                    ("sent_packets", d.sent_packets),
                    ("sent_errs", d.sent_errs),
                    ("sent_drop", d.sent_drop),
                    ("sent_fifo", d.sent_fifo),
                    ("sent_colls", d.sent_colls),
                    ("sent_carrier", d.sent_carrier),
                    ("sent_compressed", d.sent_compressed),
                ] {
                    f.netdev.push((name.clone(), item, v));
                }
            }
        }
    }
    any.then_some(f)
}

/// Resident memory (bytes) and CPU time (clock ticks) of `pids`, summed:
/// the host's cost of a pod (see the pod overhead families).
pub fn cost(pids: &[i32]) -> (u64, u64) {
    read(pids, false).map_or((0, 0), |f| {
        let get = |v: &[(&str, u64)], k: &str| v.iter().find(|(n, _)| *n == k).map_or(0, |x| x.1);
        (
            get(&f.status, "vmrss"),
            get(&f.stat, "utime") + get(&f.stat, "stime"),
        )
    })
}

fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn items(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    if values.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (item, v) in values {
        let labels = [("item", *item)];
        ConstGauge::new(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(f) = read(&self.pids, self.netdev) else {
            return Ok(());
        };
        let p = self.prefix;
        let e = &mut encoder;
        single(e, &format!("{p}_fds"), "Open file descriptors", f.fds)?;
        single(e, &format!("{p}_threads"), "Threads", f.threads)?;
        items(
            e,
            &format!("{p}_proc_status"),
            "Process status (/proc/<pid>/status; sizes in bytes)",
            &f.status,
        )?;
        items(
            e,
            &format!("{p}_proc_stat"),
            "Process CPU times in clock ticks (/proc/<pid>/stat)",
            &f.stat,
        )?;
        items(
            e,
            &format!("{p}_io_stat"),
            "Process I/O (/proc/<pid>/io)",
            &f.io,
        )?;
        if !f.netdev.is_empty() {
            let name = format!("{p}_netdev");
            let mut family = e.encode_descriptor(
                &name,
                "Network devices seen by the process (/proc/<pid>/net/dev)",
                None,
                MetricType::Gauge,
            )?;
            for (interface, item, v) in &f.netdev {
                let labels = [("interface", interface.as_str()), ("item", *item)];
                ConstGauge::new(*v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The children of `pid` whose command is `comm` (every thread's
/// children: the runtime spawns from tokio's worker threads).
pub fn children_named(pid: u32, comm: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            let name = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if name.trim_end() == comm && !found.contains(&child) {
                found.push(child);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn this_process_as_kata_reports_it() {
        let mut registry = Registry::with_prefix("capsa");
        registry.register_collector(Box::new(ProcessCollector {
            prefix: "shim",
            pids: vec![std::process::id() as i32],
            netdev: true,
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let families = crate::metrics::text::parse(&text).unwrap();
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        for want in [
            "capsa_shim_fds",
            "capsa_shim_threads",
            "capsa_shim_proc_status",
            "capsa_shim_proc_stat",
            "capsa_shim_io_stat",
            "capsa_shim_netdev",
        ] {
            assert!(names.contains(&want), "{want} missing: {text}");
        }
        assert!(
            text.contains("capsa_shim_proc_status{item=\"vmrss\"}"),
            "{text}"
        );
        assert!(text.contains("interface=\"lo\""), "{text}");
        let (rss, _) = cost(&[std::process::id() as i32]);
        assert!(rss > 0);
    }

    #[test]
    fn a_gone_process_has_no_families() {
        let mut registry = Registry::with_prefix("capsa");
        registry.register_collector(Box::new(ProcessCollector {
            prefix: "hypervisor",
            pids: vec![i32::MAX],
            netdev: false,
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("capsa_hypervisor"), "{text}");
    }

    #[test]
    fn finds_children_by_command() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let found = children_named(std::process::id(), "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&(child.id() as i32)), "{found:?}");
    }
}

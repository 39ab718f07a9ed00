//! The agent's cgroup statistics (Kata's `CgroupStats`, in cgroup v1
//! terms as Kata's agent reports them) as containerd's cgroup v1 metrics
//! (`io.containerd.cgroups.v1.Metrics`), which `ctr task metrics` and the
//! CRI plugin decode. (containerd-shim 0.10, the last release whose
//! `start` speaks containerd 1.6's protocol, has no v2 metrics types.)

use capsa_protocols::agent::StatsContainerResponse;
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;

use crate::error::Error;

/// The type URL containerd expects for cgroup v2 metrics.
const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

pub fn to_metrics(reply: &StatsContainerResponse) -> Result<Any, Error> {
    let m = metrics(reply);
    let value = m.write_to_bytes().map_err(|e| Error::Invalid {
        what: "metrics",
        reason: e.to_string(),
    })?;
    Ok(Any {
        type_url: METRICS_TYPE.into(),
        value,
        ..Default::default()
    })
}

fn metrics(reply: &StatsContainerResponse) -> Metrics {
    let stats = reply.cgroup_stats.as_ref();
    let cpu = stats.and_then(|s| s.cpu_stats.as_ref());
    let usage = cpu.and_then(|c| c.cpu_usage.as_ref());
    let throttling = cpu.and_then(|c| c.throttling_data.as_ref());
    let memory = stats.and_then(|s| s.memory_stats.as_ref());
    let mem_usage = memory.and_then(|m| m.usage.as_ref());
    let swap = memory.and_then(|m| m.swap_usage.as_ref());
    let stat = |key: &str| memory.and_then(|m| m.stats.get(key).copied()).unwrap_or(0);
    let pids = stats.and_then(|s| s.pids_stats.as_ref());
    let entry = |d: Option<&capsa_protocols::agent::MemoryData>| {
        d.map(|d| MemoryEntry {
            usage: d.usage,
            max: d.max_usage,
            limit: d.limit,
            failcnt: d.failcnt,
            ..Default::default()
        })
        .into()
    };
    Metrics {
        cpu: Some(CPUStat {
            usage: Some(CPUUsage {
                total: usage.map_or(0, |u| u.total_usage),
                kernel: usage.map_or(0, |u| u.usage_in_kernelmode),
                user: usage.map_or(0, |u| u.usage_in_usermode),
                per_cpu: usage.map(|u| u.percpu_usage.clone()).unwrap_or_default(),
                ..Default::default()
            })
            .into(),
            throttling: Some(Throttle {
                periods: throttling.map_or(0, |t| t.periods),
                throttled_periods: throttling.map_or(0, |t| t.throttled_periods),
                throttled_time: throttling.map_or(0, |t| t.throttled_time),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            cache: memory.map_or(0, |m| m.cache),
            rss: stat("anon"),
            mapped_file: stat("file_mapped"),
            pg_fault: stat("pgfault"),
            pg_maj_fault: stat("pgmajfault"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            usage: entry(mem_usage),
            swap: entry(swap),
            kernel: entry(memory.and_then(|m| m.kernel_usage.as_ref())),
            ..Default::default()
        })
        .into(),
        pids: Some(PidsStat {
            current: pids.map_or(0, |p| p.current),
            limit: pids.map_or(0, |p| p.limit),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_protocols::agent::{CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats};

    #[test]
    fn converts_units_and_fields() {
        let reply = StatsContainerResponse {
            cgroup_stats: Some(CgroupStats {
                cpu_stats: Some(CpuStats {
                    cpu_usage: Some(CpuUsage {
                        total_usage: 5_000_000,
                        usage_in_usermode: 3_000_000,
                        usage_in_kernelmode: 2_000_000,
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                })
                .into(),
                memory_stats: Some(MemoryStats {
                    usage: Some(MemoryData {
                        usage: 4096,
                        limit: 1 << 20,
                        ..Default::default()
                    })
                    .into(),
                    stats: [("anon".to_string(), 1024u64)].into_iter().collect(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let any = to_metrics(&reply).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage.total, 5_000_000);
        assert_eq!(m.cpu.usage.user, 3_000_000);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 1 << 20);
        assert_eq!(m.memory.rss, 1024);
    }
}

//! The agent's cgroup statistics (Kata's `CgroupStats`: cgroup v1 terms,
//! filled by capsa's agent from the guest's cgroup v2 files) as the
//! metrics containerd's `Stats` carries, in the format the host's
//! containerd decodes, as Kata's shim does:
//! - cgroup v2 (`io.containerd.cgroups.v2.Metrics`) where the host's
//!   `/sys/fs/cgroup` is cgroup2 (containerd's "unified" mode);
//! - cgroup v1 (`io.containerd.cgroups.v1.Metrics`) on a legacy or hybrid
//!   host.
//!
//! `ctr task metrics` and the CRI plugin accept both types; the kubelet's
//! stats come from the CRI plugin. containerd-shim 0.10 (the last release
//! whose `start` speaks containerd 1.6's protocol) ships only the v1
//! types; the v2 messages are capsa-protocols' (`protos/cgroups_v2.proto`,
//! containerd's field numbers, the fields capsa fills).

use std::path::Path;

use capsa_protocols::agent::{BlkioStatsEntry, CgroupStats, StatsContainerResponse};
use containerd_shim::protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message as _;

use crate::error::Error;

/// The type URL of containerd's cgroup v1 metrics.
const V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
/// The type URL of containerd's cgroup v2 metrics.
const V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// The cgroup version whose metrics format the host's containerd expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    V1,
    V2,
}

impl Format {
    /// As containerd decides (`cgroups.Mode()`): v2 only when the cgroup
    /// mount point itself is cgroup2; a hybrid host (cgroup2 at
    /// `unified/` beside v1 controllers) is v1.
    /// Looked at once, as containerd does.
    pub fn of_host() -> Format {
        static HOST: std::sync::OnceLock<Format> = std::sync::OnceLock::new();
        *HOST.get_or_init(|| Format::of_mount(Path::new("/sys/fs/cgroup")))
    }

    fn of_mount(path: &Path) -> Format {
        match nix::sys::statfs::statfs(path) {
            Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Format::V2,
            _ => Format::V1,
        }
    }
}

/// The agent's reply as containerd's metrics of `format`.
pub fn to_metrics(reply: &StatsContainerResponse, format: Format) -> Result<Any, Error> {
    let empty = CgroupStats::default();
    let stats = reply.cgroup_stats.as_ref().unwrap_or(&empty);
    let (type_url, value) = match format {
        Format::V1 => (
            V1_TYPE,
            v1(stats).write_to_bytes().map_err(|e| Error::Invalid {
                what: "metrics",
                reason: e.to_string(),
            })?,
        ),
        Format::V2 => (
            V2_TYPE,
            v2::from(stats)
                .write_to_bytes()
                .map_err(|e| Error::Invalid {
                    what: "metrics",
                    reason: e.to_string(),
                })?,
        ),
    };
    Ok(Any {
        type_url: type_url.into(),
        value,
        ..Default::default()
    })
}

/// The value of the memory.stat key `key` (cgroup v2 names).
fn memory_stat(stats: &CgroupStats, key: &str) -> u64 {
    stats.memory_stats.stats.get(key).copied().unwrap_or(0)
}

fn v1(stats: &CgroupStats) -> Metrics {
    let usage = &stats.cpu_stats.cpu_usage;
    let throttling = &stats.cpu_stats.throttling_data;
    let memory = &stats.memory_stats;
    let stat = |key: &str| memory_stat(stats, key);
    let entry = |d: &capsa_protocols::agent::MemoryData| {
        Some(MemoryEntry {
            usage: d.usage,
            max: d.max_usage,
            limit: d.limit,
            failcnt: d.failcnt,
            ..Default::default()
        })
        .into()
    };
    let blkio = |entries: &[BlkioStatsEntry]| {
        entries
            .iter()
            .map(|e| BlkIOEntry {
                op: e.op.clone(),
                major: e.major,
                minor: e.minor,
                value: e.value,
                ..Default::default()
            })
            .collect()
    };
    Metrics {
        cpu: Some(CPUStat {
            usage: Some(CPUUsage {
                total: usage.total_usage,
                kernel: usage.usage_in_kernelmode,
                user: usage.usage_in_usermode,
                per_cpu: usage.percpu_usage.clone(),
                ..Default::default()
            })
            .into(),
            throttling: Some(Throttle {
                periods: throttling.periods,
                throttled_periods: throttling.throttled_periods,
                throttled_time: throttling.throttled_time,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        // cgroup v2's counters cover the subtree: each `total_*` (what
        // containerd's CRI plugin reads: the working set is usage less
        // `total_inactive_file`, RSS is `total_rss`) is the same figure.
        memory: Some(MemoryStat {
            cache: memory.cache,
            rss: stat("anon"),
            mapped_file: stat("file_mapped"),
            pg_fault: stat("pgfault"),
            pg_maj_fault: stat("pgmajfault"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            total_cache: memory.cache,
            total_rss: stat("anon"),
            total_mapped_file: stat("file_mapped"),
            total_dirty: stat("file_dirty"),
            total_writeback: stat("file_writeback"),
            total_pg_fault: stat("pgfault"),
            total_pg_maj_fault: stat("pgmajfault"),
            total_inactive_anon: stat("inactive_anon"),
            total_active_anon: stat("active_anon"),
            total_inactive_file: stat("inactive_file"),
            total_active_file: stat("active_file"),
            total_unevictable: stat("unevictable"),
            usage: entry(&memory.usage),
            swap: entry(&memory.swap_usage),
            kernel: entry(&memory.kernel_usage),
            ..Default::default()
        })
        .into(),
        pids: Some(PidsStat {
            current: stats.pids_stats.current,
            limit: stats.pids_stats.limit,
            ..Default::default()
        })
        .into(),
        blkio: Some(BlkIOStat {
            io_service_bytes_recursive: blkio(&stats.blkio_stats.io_service_bytes_recursive),
            io_serviced_recursive: blkio(&stats.blkio_stats.io_serviced_recursive),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// containerd's cgroup v2 metrics (`io.containerd.cgroups.v2`, declared
/// in `capsa_protocols::cgroups_v2`) from the agent's statistics.
mod v2 {
    use std::collections::BTreeMap;

    use capsa_protocols::agent::CgroupStats;
    use capsa_protocols::cgroups_v2::{
        CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
    };
    use containerd_shim::protos::protobuf::MessageField;

    use super::memory_stat;

    /// cgroup v2 counts CPU time in microseconds; Kata's stats carry
    /// nanoseconds.
    const NS_PER_US: u64 = 1000;

    /// One entry a device, from the agent's `Read` and `Write` entries.
    fn io(stats: &CgroupStats) -> IOStat {
        let mut devices: BTreeMap<(u64, u64), IOEntry> = BTreeMap::new();
        let blkio = &stats.blkio_stats;
        let all = [
            (&blkio.io_service_bytes_recursive, true),
            (&blkio.io_serviced_recursive, false),
        ];
        for (entries, bytes) in all {
            for e in entries.iter() {
                let d = devices.entry((e.major, e.minor)).or_insert(IOEntry {
                    major: e.major,
                    minor: e.minor,
                    ..Default::default()
                });
                let field = match (e.op.as_str(), bytes) {
                    ("Read", true) => &mut d.rbytes,
                    ("Write", true) => &mut d.wbytes,
                    ("Read", false) => &mut d.rios,
                    ("Write", false) => &mut d.wios,
                    _ => continue,
                };
                *field = e.value;
            }
        }
        IOStat {
            usage: devices.into_values().collect(),
            ..Default::default()
        }
    }

    pub fn from(stats: &CgroupStats) -> Metrics {
        let usage = &stats.cpu_stats.cpu_usage;
        let throttling = &stats.cpu_stats.throttling_data;
        let memory = &stats.memory_stats;
        let stat = |key: &str| memory_stat(stats, key);
        Metrics {
            pids: MessageField::some(PidsStat {
                current: stats.pids_stats.current,
                limit: stats.pids_stats.limit,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage_usec: usage.total_usage / NS_PER_US,
                user_usec: usage.usage_in_usermode / NS_PER_US,
                system_usec: usage.usage_in_kernelmode / NS_PER_US,
                nr_periods: throttling.periods,
                nr_throttled: throttling.throttled_periods,
                throttled_usec: throttling.throttled_time / NS_PER_US,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                anon: stat("anon"),
                file: stat("file"),
                kernel_stack: stat("kernel_stack"),
                slab: stat("slab"),
                sock: stat("sock"),
                shmem: stat("shmem"),
                file_mapped: stat("file_mapped"),
                file_dirty: stat("file_dirty"),
                file_writeback: stat("file_writeback"),
                inactive_anon: stat("inactive_anon"),
                active_anon: stat("active_anon"),
                inactive_file: stat("inactive_file"),
                active_file: stat("active_file"),
                unevictable: stat("unevictable"),
                pgfault: stat("pgfault"),
                pgmajfault: stat("pgmajfault"),
                usage: memory.usage.usage,
                usage_limit: memory.usage.limit,
                swap_usage: memory.swap_usage.usage,
                swap_limit: memory.swap_usage.limit,
                max_usage: memory.usage.max_usage,
                ..Default::default()
            }),
            io: MessageField::some(io(stats)),
            memory_events: MessageField::some(MemoryEvents {
                max: memory.usage.failcnt,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_protocols::agent::{
        BlkioStats, CpuStats, CpuUsage, MemoryData, MemoryStats, PidsStats,
    };

    fn reply() -> StatsContainerResponse {
        let io = |op: &str, value| BlkioStatsEntry {
            major: 254,
            minor: 0,
            op: op.into(),
            value,
            ..Default::default()
        };
        StatsContainerResponse {
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
                pids_stats: Some(PidsStats {
                    current: 3,
                    limit: 10,
                    ..Default::default()
                })
                .into(),
                blkio_stats: Some(BlkioStats {
                    io_service_bytes_recursive: vec![io("Read", 4096), io("Write", 512)],
                    io_serviced_recursive: vec![io("Read", 2), io("Write", 1)],
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn v1_carries_cpu_memory_pids_io() {
        let any = to_metrics(&reply(), Format::V1).unwrap();
        assert_eq!(any.type_url, V1_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage.total, 5_000_000);
        assert_eq!(m.cpu.usage.user, 3_000_000);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 1 << 20);
        assert_eq!((m.memory.rss, m.memory.total_rss), (1024, 1024));
        assert_eq!((m.pids.current, m.pids.limit), (3, 10));
        let bytes = &m.blkio.io_service_bytes_recursive;
        assert_eq!((bytes[0].op.as_str(), bytes[0].value), ("Read", 4096));
        assert_eq!((bytes[1].major, bytes[1].minor), (254, 0));
    }

    #[test]
    fn v2_carries_cpu_memory_pids_io() {
        let any = to_metrics(&reply(), Format::V2).unwrap();
        assert_eq!(any.type_url, V2_TYPE);
        let m = capsa_protocols::cgroups_v2::Metrics::parse_from_bytes(&any.value).unwrap();
        let cpu = m.cpu.unwrap();
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (5000, 3000, 2000)
        );
        let mem = m.memory.unwrap();
        assert_eq!(
            (mem.usage, mem.usage_limit, mem.anon),
            (4096, 1 << 20, 1024)
        );
        assert_eq!(m.pids.unwrap().current, 3);
        let io = &m.io.unwrap().usage;
        assert_eq!(io.len(), 1);
        assert_eq!(
            (io[0].major, io[0].minor, io[0].rbytes, io[0].wbytes),
            (254, 0, 4096, 512)
        );
        assert_eq!((io[0].rios, io[0].wios), (2, 1));
    }

    #[test]
    fn a_missing_reply_is_zeroes() {
        for format in [Format::V1, Format::V2] {
            to_metrics(&StatsContainerResponse::default(), format).unwrap();
        }
    }

    #[test]
    fn this_hosts_format_follows_its_cgroup_mount() {
        // Not a cgroup2 mount point: v1, as containerd decides.
        assert_eq!(Format::of_mount(Path::new("/")), Format::V1);
        let unified = Path::new("/sys/fs/cgroup/unified");
        if nix::sys::statfs::statfs(unified)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        {
            assert_eq!(Format::of_mount(unified), Format::V2);
        }
    }
}

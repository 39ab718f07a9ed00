//! StatsContainer: the container's cgroup v2 counters as Kata's
//! `CgroupStats` (times in nanoseconds, sizes in bytes).

use std::collections::BTreeMap;
use std::path::Path;

use capsa_protocols::agent::{
    BlkioStats, BlkioStatsEntry, CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats,
    PidsStats, ThrottlingData,
};

use super::cgroup::{self, CgroupError};
use super::{Sandbox, SandboxError};

/// cgroup v2 reports microseconds; Kata's stats are nanoseconds.
const NS_PER_US: u64 = 1000;

/// CPU usage from `cpu.stat`.
pub fn cpu_stats(cpu_stat: &BTreeMap<String, u64>) -> CpuStats {
    let us = |k: &str| {
        cpu_stat
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_mul(NS_PER_US)
    };
    let count = |k: &str| cpu_stat.get(k).copied().unwrap_or(0);
    CpuStats {
        cpu_usage: Some(CpuUsage {
            total_usage: us("usage_usec"),
            usage_in_usermode: us("user_usec"),
            usage_in_kernelmode: us("system_usec"),
            ..Default::default()
        })
        .into(),
        throttling_data: Some(ThrottlingData {
            periods: count("nr_periods"),
            throttled_periods: count("nr_throttled"),
            throttled_time: us("throttled_usec"),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// What the memory files of a cgroup say.
#[derive(Debug, Default)]
pub struct MemoryFiles {
    pub current: u64,
    pub peak: Option<u64>,
    /// `None` for no limit.
    pub max: Option<u64>,
    pub stat: BTreeMap<String, u64>,
    pub events: BTreeMap<String, u64>,
    pub swap_current: Option<u64>,
    pub swap_max: Option<u64>,
}

/// Memory usage as Kata's `MemoryStats`; no limit is `u64::MAX`, as runc
/// reports it.
pub fn memory_stats(m: &MemoryFiles) -> MemoryStats {
    let failcnt = m.events.get("max").copied().unwrap_or(0);
    let usage = MemoryData {
        usage: m.current,
        max_usage: m.peak.unwrap_or(m.current),
        failcnt,
        limit: m.max.unwrap_or(u64::MAX),
        ..Default::default()
    };
    let swap = MemoryData {
        usage: m.swap_current.unwrap_or(0),
        limit: m.swap_max.unwrap_or(u64::MAX),
        ..Default::default()
    };
    let kernel = MemoryData {
        usage: m.stat.get("kernel").copied().unwrap_or(0),
        ..Default::default()
    };
    MemoryStats {
        cache: m.stat.get("file").copied().unwrap_or(0),
        usage: Some(usage).into(),
        swap_usage: Some(swap).into(),
        kernel_usage: Some(kernel).into(),
        use_hierarchy: true,
        stats: m.stat.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        ..Default::default()
    }
}

/// Block I/O from `io.stat` (`MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..`
/// a line) as Kata's agent reports it on cgroup v2: bytes and operations
/// of each device as `Read` and `Write` entries. Lines that do not parse
/// are skipped.
pub fn blkio_stats(io_stat: &str) -> BlkioStats {
    let mut stats = BlkioStats::default();
    for line in io_stat.lines() {
        let mut words = line.split_whitespace();
        let Some((major, minor)) = words.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u64>(), minor.parse::<u64>()) else {
            continue;
        };
        let keys: BTreeMap<&str, u64> = words
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let entry = |op: &str, key: &str| BlkioStatsEntry {
            major,
            minor,
            op: op.to_string(),
            value: keys.get(key).copied().unwrap_or(0),
            ..Default::default()
        };
        stats
            .io_service_bytes_recursive
            .extend([entry("Read", "rbytes"), entry("Write", "wbytes")]);
        stats
            .io_serviced_recursive
            .extend([entry("Read", "rios"), entry("Write", "wios")]);
    }
    stats
}

fn read_limit(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    match cgroup::read_optional(dir, file)? {
        None => Ok(None),
        Some(text) => cgroup::limit(&text).ok_or_else(|| CgroupError::Parse {
            path: dir.join(file),
            text,
        }),
    }
}

fn read_flat(dir: &Path, file: &str) -> Result<BTreeMap<String, u64>, CgroupError> {
    Ok(cgroup::read_optional(dir, file)?
        .map(|t| cgroup::flat_keyed(&t))
        .unwrap_or_default())
}

/// Reads the stats of the cgroup at `dir`. Files of controllers that are
/// not enabled read as zero.
pub fn read(dir: &Path) -> Result<CgroupStats, CgroupError> {
    let memory = MemoryFiles {
        current: cgroup::read_u64(dir, "memory.current")?.unwrap_or(0),
        peak: cgroup::read_u64(dir, "memory.peak")?,
        max: read_limit(dir, "memory.max")?,
        stat: read_flat(dir, "memory.stat")?,
        events: read_flat(dir, "memory.events")?,
        swap_current: cgroup::read_u64(dir, "memory.swap.current")?,
        swap_max: read_limit(dir, "memory.swap.max")?,
    };
    let pids = PidsStats {
        current: cgroup::read_u64(dir, "pids.current")?.unwrap_or(0),
        // runc and Kata report no limit as 0.
        limit: read_limit(dir, "pids.max")?.unwrap_or(0),
        ..Default::default()
    };
    Ok(CgroupStats {
        cpu_stats: Some(cpu_stats(&read_flat(dir, "cpu.stat")?)).into(),
        memory_stats: Some(memory_stats(&memory)).into(),
        pids_stats: Some(pids).into(),
        blkio_stats: Some(blkio_stats(
            &cgroup::read_optional(dir, "io.stat")?.unwrap_or_default(),
        ))
        .into(),
        ..Default::default()
    })
}

impl Sandbox {
    pub async fn stats_container(&self, id: &str) -> Result<CgroupStats, SandboxError> {
        let container = self.container(id).await?;
        let dir = container.cgroup.clone();
        tokio::task::spawn_blocking(move || read(&dir))
            .await?
            .map_err(|e| SandboxError::Cgroup(id.to_string(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_becomes_nanoseconds() {
        let stat = cgroup::flat_keyed(
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 7\n",
        );
        let s = cpu_stats(&stat);
        let u = s.cpu_usage.as_ref().unwrap();
        assert_eq!(u.total_usage, 2_500_000);
        assert_eq!(u.usage_in_usermode, 2_000_000);
        assert_eq!(u.usage_in_kernelmode, 500_000);
        let t = s.throttling_data.as_ref().unwrap();
        assert_eq!(
            (t.periods, t.throttled_periods, t.throttled_time),
            (4, 1, 7000)
        );
    }

    #[test]
    fn memory_files_become_memory_stats() {
        let m = MemoryFiles {
            current: 100,
            peak: Some(300),
            max: Some(1 << 20),
            stat: cgroup::flat_keyed("anon 60\nfile 40\nkernel 5\n"),
            events: cgroup::flat_keyed("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            swap_current: None,
            swap_max: None,
        };
        let s = memory_stats(&m);
        let u = s.usage.as_ref().unwrap();
        assert_eq!(
            (u.usage, u.max_usage, u.limit, u.failcnt),
            (100, 300, 1 << 20, 3)
        );
        assert_eq!(s.cache, 40);
        assert_eq!(s.stats["anon"], 60);
        assert_eq!(s.kernel_usage.as_ref().unwrap().usage, 5);
        assert_eq!(s.swap_usage.as_ref().unwrap().limit, u64::MAX);

        let unlimited = memory_stats(&MemoryFiles {
            current: 7,
            ..Default::default()
        });
        let u = unlimited.usage.as_ref().unwrap();
        assert_eq!((u.max_usage, u.limit), (7, u64::MAX));
    }

    #[test]
    fn io_stat_becomes_blkio_entries() {
        let s = blkio_stats(
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\nbad line\n7:1 rbytes=5\n",
        );
        let bytes: Vec<_> = s
            .io_service_bytes_recursive
            .iter()
            .map(|e| (e.major, e.minor, e.op.as_str(), e.value))
            .collect();
        assert_eq!(
            bytes,
            [
                (254, 0, "Read", 4096),
                (254, 0, "Write", 8192),
                (7, 1, "Read", 5),
                (7, 1, "Write", 0)
            ]
        );
        let ios: Vec<_> = s.io_serviced_recursive.iter().map(|e| e.value).collect();
        assert_eq!(ios, [1, 2, 0, 0]);
    }

    #[test]
    fn reads_a_cgroup_directory() {
        let d = tempfile::tempdir().unwrap();
        let put = |f: &str, t: &str| std::fs::write(d.path().join(f), t).unwrap();
        put("cpu.stat", "usage_usec 10\nuser_usec 6\nsystem_usec 4\n");
        put("memory.current", "4096\n");
        put("memory.max", "max\n");
        put("pids.current", "2\n");
        put("pids.max", "max\n");
        let s = read(d.path()).unwrap();
        assert_eq!(s.cpu_stats.cpu_usage.total_usage, 10_000);
        assert_eq!(s.memory_stats.usage.usage, 4096);
        assert_eq!(s.memory_stats.usage.limit, u64::MAX);
        assert_eq!((s.pids_stats.current, s.pids_stats.limit), (2, 0));
        assert!(s.blkio_stats.io_service_bytes_recursive.is_empty());
        put("io.stat", "254:0 rbytes=512 wbytes=0 rios=1 wios=0\n");
        let s = read(d.path()).unwrap();
        assert_eq!(s.blkio_stats.io_service_bytes_recursive[0].value, 512);
        put("memory.max", "lots\n");
        assert!(matches!(read(d.path()), Err(CgroupError::Parse { .. })));
    }
}

//! UpdateContainer: OCI `LinuxResources` written to the container's cgroup
//! v2 files.
//!
//! Conventions of the OCI spec (and runc): a limit of 0 or absent leaves
//! the file alone, a negative limit means no limit (`max`); `memory.swap`
//! is memory plus swap, cgroup v2's `memory.swap.max` is swap alone; CPU
//! shares (2..=262144) map to `cpu.weight` (1..=10000).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::cgroup::{self, CgroupError};
use super::{Sandbox, SandboxError};

/// Why resources cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error("memory swap limit {swap} is below the memory limit {memory}")]
    SwapBelowMemory { swap: i64, memory: i64 },
    #[error("a swap limit needs a memory limit")]
    SwapWithoutMemory,
    #[error("cpu period {0} is out of range (1000..=1000000 microseconds)")]
    Period(u64),
    #[error("cpu shares {0} out of range (2..=262144)")]
    Shares(u64),
}

/// One write: the value of a cgroup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: &'static str,
    pub value: String,
}

fn write(file: &'static str, value: impl ToString) -> Write {
    Write {
        file,
        value: value.to_string(),
    }
}

fn limit_value(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// The writes that apply `r`; `cpu_max` is the current `cpu.max` (to keep
/// the half of it the request leaves out).
pub fn writes(r: &LinuxResources, cpu_max: Option<&str>) -> Result<Vec<Write>, ResourcesError> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        let memory = m.limit().filter(|&l| l != 0);
        if let Some(l) = memory {
            out.push(write("memory.max", limit_value(l)));
        }
        if let Some(swap) = m.swap().filter(|&s| s != 0) {
            let value = match (swap, memory) {
                (s, _) if s < 0 => "max".to_string(),
                (_, Some(l)) if l < 0 => "max".to_string(),
                (s, Some(l)) if s < l => {
                    return Err(ResourcesError::SwapBelowMemory { swap: s, memory: l })
                }
                (s, Some(l)) => (s - l).to_string(),
                (_, None) => return Err(ResourcesError::SwapWithoutMemory),
            };
            out.push(write("memory.swap.max", value));
        }
        if let Some(r) = m.reservation().filter(|&r| r != 0) {
            out.push(write("memory.low", limit_value(r)));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|&s| s != 0) {
            out.push(write("cpu.weight", shares_to_weight(shares)?));
        }
        let (quota, period) = (
            c.quota().filter(|&q| q != 0),
            c.period().filter(|&p| p != 0),
        );
        if quota.is_some() || period.is_some() {
            out.push(write("cpu.max", cpu_max_value(cpu_max, quota, period)?));
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            out.push(write("cpuset.cpus", cpus));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            out.push(write("cpuset.mems", mems));
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() != 0 {
            out.push(write("pids.max", limit_value(p.limit())));
        }
    }
    Ok(out)
}

/// runc's conversion of CPU shares to a cgroup v2 weight.
pub fn shares_to_weight(shares: u64) -> Result<u64, ResourcesError> {
    if !(2..=262_144).contains(&shares) {
        return Err(ResourcesError::Shares(shares));
    }
    Ok(1 + ((shares - 2) * 9999) / 262_142)
}

/// `cpu.max` (`$QUOTA $PERIOD`) with the given parts replaced.
fn cpu_max_value(
    current: Option<&str>,
    quota: Option<i64>,
    period: Option<u64>,
) -> Result<String, ResourcesError> {
    let mut words = current.unwrap_or("max 100000").split_whitespace();
    let old_quota = words.next().unwrap_or("max").to_string();
    let old_period = words.next().unwrap_or("100000").to_string();
    let quota = quota.map_or(old_quota, limit_value);
    let period = match period {
        Some(p) if !(1000..=1_000_000).contains(&p) => return Err(ResourcesError::Period(p)),
        Some(p) => p.to_string(),
        None => old_period,
    };
    Ok(format!("{quota} {period}"))
}

impl Sandbox {
    /// Applies `resources` to the container's cgroup, in order; stops at
    /// the first failure.
    pub async fn update_container(
        &self,
        id: &str,
        resources: LinuxResources,
    ) -> Result<(), SandboxError> {
        let container = self.container(id).await?;
        let dir = container.cgroup.clone();
        let cid = id.to_string();
        tokio::task::spawn_blocking(move || apply(&cid, &dir, &resources)).await?
    }
}

fn apply(id: &str, dir: &Path, resources: &LinuxResources) -> Result<(), SandboxError> {
    let cgroup_err = |e: CgroupError| SandboxError::Cgroup(id.to_string(), e);
    let cpu_max = cgroup::read_optional(dir, "cpu.max").map_err(cgroup_err)?;
    let writes = writes(resources, cpu_max.as_deref())
        .map_err(|e| SandboxError::Resources(id.to_string(), e))?;
    for w in &writes {
        // A kernel without swap (capsa's own: `CONFIG_SWAP=n`) has no
        // `memory.swap.max`: there is no swap to limit.
        if w.file == "memory.swap.max" && !dir.join(w.file).exists() {
            tracing::debug!(
                container = id,
                "no swap in this kernel: swap limit not applied"
            );
            continue;
        }
        cgroup::write(dir, w.file, &w.value).map_err(cgroup_err)?;
    }
    tracing::info!(container = id, ?writes, "resources updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    fn files(w: &[Write]) -> Vec<(&str, &str)> {
        w.iter().map(|w| (w.file, w.value.as_str())).collect()
    }

    #[test]
    fn memory_cpu_and_pids() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(96 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .cpus("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
            .build()
            .unwrap();
        let w = writes(&r, Some("max 100000\n")).unwrap();
        assert_eq!(
            files(&w),
            vec![
                ("memory.max", "67108864"),
                ("memory.swap.max", "33554432"),
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("cpuset.cpus", "0"),
                ("pids.max", "max"),
            ]
        );
    }

    #[test]
    fn zero_leaves_alone_and_negative_lifts() {
        let r = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(-1).build().unwrap())
            .cpu(
                LinuxCpuBuilder::default()
                    .period(20_000u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(0).build().unwrap())
            .build()
            .unwrap();
        let w = writes(&r, Some("25000 100000")).unwrap();
        assert_eq!(
            files(&w),
            vec![("memory.max", "max"), ("cpu.max", "25000 20000")]
        );
    }

    #[test]
    fn bad_values_are_named() {
        let swap_low = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(100)
                    .swap(50)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let e = writes(&swap_low, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "memory swap limit 50 is below the memory limit 100"
        );
        assert!(matches!(
            shares_to_weight(1),
            Err(ResourcesError::Shares(1))
        ));
        assert_eq!(shares_to_weight(2).unwrap(), 1);
        assert_eq!(shares_to_weight(262_144).unwrap(), 10_000);
        let e = cpu_max_value(None, None, Some(10)).unwrap_err();
        assert!(e.to_string().contains("cpu period 10"), "{e}");
    }
}

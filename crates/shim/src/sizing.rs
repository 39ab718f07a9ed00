//! The size of a pod's VM: the configured defaults plus what the pod asks
//! for, so the workload gets its limits on top of the guest's own needs
//! (as Kata's static sandbox sizing does).
//!
//! The pod's resources come from the sandbox annotations containerd's CRI
//! plugin sets (`io.kubernetes.cri.sandbox-memory`, `-cpu-quota`,
//! `-cpu-period`), or for a task without a pod, from its own spec's
//! `linux.resources` (`ctr run --memory-limit --cpus`).

use std::collections::HashMap;

use capsa_runtime::VmSize;
use oci_spec::runtime::Spec;

const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// Memory (bytes) and CPU (quota, period) the pod asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    memory: Option<u64>,
    cpu: Option<(i64, u64)>,
}

fn from_annotations(a: &HashMap<String, String>) -> Request {
    let num = |k: &str| a.get(k).and_then(|v| v.parse::<i64>().ok());
    Request {
        memory: num(SANDBOX_MEMORY).and_then(|m| u64::try_from(m).ok()),
        cpu: match (num(SANDBOX_CPU_QUOTA), num(SANDBOX_CPU_PERIOD)) {
            (Some(q), Some(p)) => u64::try_from(p).ok().map(|p| (q, p)),
            _ => None,
        },
    }
}

fn from_resources(spec: &Spec) -> Request {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|l| u64::try_from(l).ok());
    let cpu =
        resources
            .and_then(|r| r.cpu().as_ref())
            .and_then(|c| match (c.quota(), c.period()) {
                (Some(q), Some(p)) => Some((q, p)),
                _ => None,
            });
    Request { memory, cpu }
}

/// The VM size for a pod whose first task has `spec`, over the configured
/// `default_vcpus` and `default_memory`.
pub fn vm_size(spec: &Spec, default_vcpus: u32, default_memory_mib: u32) -> VmSize {
    let annotated = spec
        .annotations()
        .as_ref()
        .map(from_annotations)
        .unwrap_or_default();
    let request = if annotated == Request::default() {
        from_resources(spec)
    } else {
        annotated
    };
    let extra_mib = request.memory.map_or(0, |b| {
        u32::try_from(b.div_ceil(1 << 20)).unwrap_or(u32::MAX)
    });
    let extra_cpus = match request.cpu {
        Some((quota, period)) if quota > 0 && period > 0 => {
            u32::try_from((quota as u64).div_ceil(period)).unwrap_or(0)
        }
        _ => 0,
    };
    VmSize {
        vcpus: Some(default_vcpus.saturating_add(extra_cpus).min(256)),
        memory_mib: Some(default_memory_mib.saturating_add(extra_mib)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder,
    };

    #[test]
    fn defaults_without_requests() {
        let s = vm_size(&Spec::default(), 1, 512);
        assert_eq!((s.vcpus, s.memory_mib), (Some(1), Some(512)));
    }

    #[test]
    fn cri_sandbox_annotations_add_to_the_defaults() {
        let mut spec = Spec::default();
        spec.set_annotations(Some(
            [
                (SANDBOX_MEMORY, "268435456"),
                (SANDBOX_CPU_QUOTA, "150000"),
                (SANDBOX_CPU_PERIOD, "100000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ));
        let s = vm_size(&spec, 1, 512);
        assert_eq!((s.vcpus, s.memory_mib), (Some(3), Some(768)));
    }

    #[test]
    fn a_standalone_task_uses_its_own_limits() {
        let mut spec = Spec::default();
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(100 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(200000i64)
                    .period(100000u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .resources(resources)
                .build()
                .unwrap(),
        ));
        let s = vm_size(&spec, 1, 512);
        assert_eq!((s.vcpus, s.memory_mib), (Some(3), Some(612)));
    }
}

//! The VM's CPUs and memory.
//!
//! Static sizing (`static_sandbox_resource_mgmt`): the VM boots at the
//! configured defaults plus what the pod asks for ([`static_size`]) and
//! keeps that size.
//!
//! Elastic sizing (the default): the VM boots at the defaults; the size
//! it should have is the configured default plus the sum of the limits of
//! the pod's containers, as Kata computes it (`calculateSandboxCPUs` /
//! `calculateSandboxMemory`), capped at the configured maxima
//! ([`PodSizer`], pure arithmetic), applied with the driver's
//! [`ResourceHotplug`] and the agent's `OnlineCPUMem` ([`CpuMem::resize`]).
//!
//! A container counts with its CPU quota (`quota / period` CPUs, summed in
//! milli-CPUs and rounded up once for the pod) and its memory limit;
//! a container without a limit adds nothing. A request beyond a maximum
//! is capped, never refused: the pod runs, with fewer resources than its
//! limits ask for, and [`Plan::capped`] says so for the log.

use std::collections::BTreeMap;

use capsa_agent_client::AgentClient;
use capsa_config::Config;
use capsa_hypervisor::{ResourceHotplug, VmResources};
use oci_spec::runtime::LinuxResources;

use crate::vm::VmSize;
use crate::Error;

/// What one container asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU quota over period, in thousandths of a CPU.
    pub milli_cpus: u64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
}

impl Limits {
    /// The limits of an OCI `linux.resources` (a quota with its period,
    /// a positive memory limit); anything else counts as none.
    pub fn of(resources: Option<&LinuxResources>) -> Self {
        let Some(r) = resources else {
            return Self::default();
        };
        let milli_cpus = r
            .cpu()
            .as_ref()
            .and_then(|c| Some((c.quota()?, c.period()?)))
            .map_or(0, |(quota, period)| milli_cpus(quota, period));
        let memory_bytes = r
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .and_then(|l| u64::try_from(l).ok())
            .unwrap_or(0);
        Self {
            milli_cpus,
            memory_bytes,
        }
    }
}

impl Limits {
    /// These limits changed by an update (`UpdateContainer`): what
    /// `resources` sets replaces, what it leaves out stays. A quota
    /// without a period counts over the kernel's default period.
    pub fn updated(self, resources: &LinuxResources) -> Self {
        let milli = resources.cpu().as_ref().and_then(|c| {
            c.quota()
                .map(|q| milli_cpus(q, c.period().unwrap_or(DEFAULT_CFS_PERIOD)))
        });
        let memory = resources
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .map(|l| u64::try_from(l).unwrap_or(0));
        Self {
            milli_cpus: milli.unwrap_or(self.milli_cpus),
            memory_bytes: memory.unwrap_or(self.memory_bytes),
        }
    }
}

/// The kernel's CFS period, microseconds.
pub const DEFAULT_CFS_PERIOD: u64 = 100_000;

/// `quota / period` CPUs in thousandths, rounded up; 0 for no quota
/// (`-1`) or a nonsensical period.
pub fn milli_cpus(quota: i64, period: u64) -> u64 {
    match u64::try_from(quota) {
        Ok(q) if q > 0 && period > 0 => q.saturating_mul(1000).div_ceil(period),
        _ => 0,
    }
}

/// The bounds of a VM: what it boots with and how far it may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub default_vcpus: u32,
    pub max_vcpus: u32,
    pub default_memory_mib: u32,
    pub max_memory_mib: u32,
}

/// The size the VM should have now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// One line per capped dimension, for a warning in the log.
    pub capped: Vec<String>,
}

/// The containers of one pod and their limits.
#[derive(Debug, Clone)]
pub struct PodSizer {
    bounds: Bounds,
    containers: BTreeMap<String, Limits>,
}

impl PodSizer {
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            containers: BTreeMap::new(),
        }
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Sets (or replaces, for an update) what container `id` asks for.
    pub fn set(&mut self, id: &str, limits: Limits) {
        self.containers.insert(id.to_string(), limits);
    }

    /// Forgets container `id`; its share goes back.
    pub fn remove(&mut self, id: &str) -> Option<Limits> {
        self.containers.remove(id)
    }

    /// The limits container `id` was counted with.
    pub fn get(&self, id: &str) -> Option<Limits> {
        self.containers.get(id).copied()
    }

    /// Default plus the sum of the containers' limits, capped.
    pub fn plan(&self) -> Plan {
        let b = self.bounds;
        let milli: u64 = self
            .containers
            .values()
            .fold(0u64, |acc, l| acc.saturating_add(l.milli_cpus));
        let bytes: u64 = self
            .containers
            .values()
            .fold(0u64, |acc, l| acc.saturating_add(l.memory_bytes));
        let want_vcpus = u64::from(b.default_vcpus).saturating_add(milli.div_ceil(1000));
        let want_mib = u64::from(b.default_memory_mib).saturating_add(bytes.div_ceil(1 << 20));
        let mut capped = Vec::new();
        let vcpus = if want_vcpus > u64::from(b.max_vcpus) {
            capped.push(format!(
                "the containers ask for {want_vcpus} vCPUs with the default, more than \
                 default_maxvcpus = {}: the VM gets {}",
                b.max_vcpus, b.max_vcpus
            ));
            b.max_vcpus
        } else {
            want_vcpus as u32
        };
        let memory_mib = if want_mib > u64::from(b.max_memory_mib) {
            capped.push(format!(
                "the containers ask for {want_mib} MiB with the default, more than \
                 default_maxmemory = {} MiB: the VM gets {} MiB",
                b.max_memory_mib, b.max_memory_mib
            ));
            b.max_memory_mib
        } else {
            want_mib as u32
        };
        Plan {
            vcpus,
            memory_mib,
            capped,
        }
    }
}

impl Bounds {
    /// The bounds of a VM as its driver reports them after boot: what it
    /// has now is the default it never goes below.
    pub fn of(booted: VmResources) -> Self {
        Self {
            default_vcpus: booted.vcpus,
            max_vcpus: booted.max_vcpus.max(booted.vcpus),
            default_memory_mib: booted.memory_mib,
            max_memory_mib: booted.max_memory_mib.max(booted.memory_mib),
        }
    }
}

/// The VM's vCPUs and memory: elastic (sized after the containers'
/// limits) unless the configuration asks for static sizing or the driver
/// cannot resize.
#[derive(Debug, Default)]
pub struct CpuMem {
    sizer: Option<PodSizer>,
}

impl CpuMem {
    /// Elastic sizing from `booted` on, unless `static_sizing`.
    pub fn start(&mut self, booted: VmResources, static_sizing: bool) {
        if !static_sizing {
            self.sizer = Some(PodSizer::new(Bounds::of(booted)));
        }
    }

    pub fn is_elastic(&self) -> bool {
        self.sizer.is_some()
    }

    /// Counts container `cid` with `limits`; returns whether the VM is to
    /// be resized (elastic sizing).
    pub fn set(&mut self, cid: &str, limits: Limits) -> bool {
        match self.sizer.as_mut() {
            Some(sizer) => {
                sizer.set(cid, limits);
                true
            }
            None => false,
        }
    }

    /// Stops counting container `cid`; returns whether its share is to
    /// be given back (it had limits).
    pub fn remove(&mut self, cid: &str) -> bool {
        let Some(sizer) = self.sizer.as_mut() else {
            return false;
        };
        !sizer.remove(cid).is_none_or(|l| l == Limits::default())
    }

    /// The limits container `cid` was counted with (none without elastic
    /// sizing).
    pub fn limits(&self, cid: &str) -> Limits {
        self.sizer
            .as_ref()
            .and_then(|s| s.get(cid))
            .unwrap_or_default()
    }

    /// Brings the VM to the sizer's plan: vCPUs, then memory; what was
    /// added is onlined in the guest. Returns the size reached (`None`
    /// without elastic sizing).
    pub async fn resize(
        &self,
        hotplug: Result<&mut dyn ResourceHotplug, capsa_hypervisor::Error>,
        agent: &AgentClient,
        sandbox: &str,
    ) -> Result<Option<VmResources>, Error> {
        let Some(plan) = self.sizer.as_ref().map(PodSizer::plan) else {
            return Ok(None);
        };
        for line in &plan.capped {
            tracing::warn!(sandbox, "{line}");
        }
        let hotplug = hotplug.map_err(Error::Resize)?;
        let before = hotplug.current();
        let vcpus = hotplug
            .resize_vcpus(plan.vcpus)
            .await
            .map_err(Error::Resize)?;
        let memory_mib = hotplug
            .resize_memory(plan.memory_mib)
            .await
            .map_err(Error::Resize)?;
        let now = hotplug.current();
        if vcpus > before.vcpus {
            agent.online_cpu_mem(vcpus - before.vcpus, true).await?;
        }
        if memory_mib > before.memory_mib {
            agent.online_cpu_mem(0, false).await?;
        }
        if (vcpus, memory_mib) != (before.vcpus, before.memory_mib) {
            tracing::info!(
                sandbox,
                vcpus = format!("{} -> {vcpus}", before.vcpus),
                memory_mib = format!("{} -> {memory_mib}", before.memory_mib),
                "VM resized"
            );
        }
        if (vcpus, memory_mib) != (plan.vcpus, plan.memory_mib) {
            tracing::debug!(
                sandbox,
                want_vcpus = plan.vcpus,
                want_mib = plan.memory_mib,
                vcpus,
                memory_mib,
                "VM size differs from the plan"
            );
        }
        Ok(Some(now))
    }
}

/// The boot size of a VM: the per-sandbox size where given, else the
/// configured defaults (`default_vcpus`, `default_memory`).
pub fn boot_size(config: &Config, size: VmSize) -> (u32, u32) {
    let q = &config.hypervisor.vm;
    (
        size.vcpus.unwrap_or(q.default_vcpus),
        size.memory_mib.unwrap_or(q.default_memory),
    )
}

/// Static sizing (`static_sandbox_resource_mgmt`, as Kata's): the VM
/// boots at the configured defaults plus what the pod asks for, so the
/// workload gets its limits on top of the guest's own needs.
pub fn static_size(pod: Limits, default_vcpus: u32, default_memory_mib: u32) -> VmSize {
    let extra_mib = u32::try_from(pod.memory_bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX);
    let extra_cpus = u32::try_from(pod.milli_cpus.div_ceil(1000)).unwrap_or(0);
    VmSize {
        vcpus: Some(default_vcpus.saturating_add(extra_cpus).min(256)),
        memory_mib: Some(default_memory_mib.saturating_add(extra_mib)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};

    const BOUNDS: Bounds = Bounds {
        default_vcpus: 1,
        max_vcpus: 4,
        default_memory_mib: 512,
        max_memory_mib: 4096,
    };

    fn resources(quota: i64, period: u64, memory: i64) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(period)
                    .build()
                    .unwrap(),
            )
            .memory(LinuxMemoryBuilder::default().limit(memory).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn limits_of_a_spec() {
        let l = Limits::of(Some(&resources(150_000, 100_000, 768 << 20)));
        assert_eq!(l.milli_cpus, 1500);
        assert_eq!(l.memory_bytes, 768 << 20);
        // Unlimited: quota -1, memory -1.
        assert_eq!(
            Limits::of(Some(&resources(-1, 100_000, -1))),
            Limits::default()
        );
        assert_eq!(Limits::of(None), Limits::default());
        assert_eq!(milli_cpus(1, 3), 334);
        assert_eq!(milli_cpus(5, 0), 0);
    }

    #[test]
    fn default_plus_the_sum_of_the_containers() {
        let mut s = PodSizer::new(BOUNDS);
        assert_eq!((s.plan().vcpus, s.plan().memory_mib), (1, 512));
        s.set(
            "a",
            Limits::of(Some(&resources(200_000, 100_000, 768 << 20))),
        );
        s.set("b", Limits::of(Some(&resources(50_000, 100_000, 1))));
        // 2.5 CPUs round up to 3; 1 byte rounds up to 1 MiB.
        let p = s.plan();
        assert_eq!((p.vcpus, p.memory_mib), (4, 512 + 768 + 1));
        assert!(p.capped.is_empty());
        s.remove("a");
        assert_eq!((s.plan().vcpus, s.plan().memory_mib), (2, 513));
        // An update replaces the container's share.
        s.set("b", Limits::default());
        assert_eq!((s.plan().vcpus, s.plan().memory_mib), (1, 512));
    }

    #[test]
    fn an_update_changes_only_what_it_sets() {
        let old = Limits::of(Some(&resources(200_000, 100_000, 768 << 20)));
        let cpu_only = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().quota(300_000).build().unwrap())
            .build()
            .unwrap();
        let new = old.updated(&cpu_only);
        assert_eq!((new.milli_cpus, new.memory_bytes), (3000, 768 << 20));
        let unlimited = resources(-1, 100_000, -1);
        assert_eq!(old.updated(&unlimited), Limits::default());
        assert_eq!(old.updated(&LinuxResources::default()), old);
    }

    #[test]
    fn requests_beyond_the_maxima_are_capped_and_said() {
        let mut s = PodSizer::new(BOUNDS);
        s.set(
            "big",
            Limits::of(Some(&resources(800_000, 100_000, 8 << 30))),
        );
        let p = s.plan();
        assert_eq!((p.vcpus, p.memory_mib), (4, 4096));
        assert_eq!(p.capped.len(), 2);
        assert!(p.capped[0].contains("default_maxvcpus = 4"), "{p:?}");
        assert!(p.capped[1].contains("default_maxmemory = 4096"), "{p:?}");
    }

    #[test]
    fn absurd_limits_do_not_overflow() {
        let mut s = PodSizer::new(BOUNDS);
        for i in 0..3 {
            s.set(
                &i.to_string(),
                Limits {
                    milli_cpus: u64::MAX,
                    memory_bytes: u64::MAX,
                },
            );
        }
        let p = s.plan();
        assert_eq!((p.vcpus, p.memory_mib), (4, 4096));
    }
}

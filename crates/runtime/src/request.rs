//! What a sandbox is to be, decided once: [`SandboxRequest::parse`] reads
//! the configuration and the OCI spec of the task that starts the
//! sandbox (the pod's sandbox container, a standalone task, or the spec
//! `capsa run` builds) and says the VM's boot size, the pod network
//! (netns, DNS) and the host cgroup to join. The shim and `capsa run`
//! both hand it to [`crate::Sandbox::start_request`].
//!
//! The spec's annotations are read in one place, [`annotations`]: the
//! task's role in its pod (containerd's CRI plugin or CRI-O) and the
//! pod's sandbox limits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use capsa_config::Config;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::resource::cgroup::CgroupPath;
use crate::resource::cpu_mem::{self, Limits};
use crate::resource::network::PodNetwork;
use crate::vm::VmSize;
use crate::Error;

const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// Where containers find their DNS configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Longest `resolv.conf` read (the agent bounds what it takes as well).
const MAX_RESOLV_CONF: u64 = 64 * 1024;

/// A sandbox to start.
#[derive(Debug, Clone, Default)]
pub struct SandboxRequest {
    /// The VM's boot size (`None`: the configured default).
    pub size: VmSize,
    /// The pod network the VM joins.
    pub network: PodNetwork,
    /// The pod's host cgroup, joined before the VM's processes start
    /// (`sandbox_cgroup_only`).
    pub cgroup: Option<CgroupRequest>,
}

/// The host cgroup of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRequest {
    pub path: CgroupPath,
    /// The file listing the cgroup directories capsa makes, for a cleanup
    /// after the process that made them died (the shim's bundle).
    pub record: Option<PathBuf>,
}

impl SandboxRequest {
    /// A request of a size and a network only: no host cgroup.
    pub fn sized(size: VmSize, network: &PodNetwork) -> Self {
        Self {
            size,
            network: network.clone(),
            cgroup: None,
        }
    }

    /// The sandbox `id` that `spec` (with host paths) starts, under
    /// `config`: static sizing boots the VM at the defaults plus what the
    /// pod asks for (its sandbox annotations, else the spec's
    /// `linux.resources`), elastic sizing at the defaults; the netns and
    /// the `/etc/resolv.conf` mount's lines are the pod network; with
    /// `sandbox_cgroup_only`, `linux.cgroupsPath` is the cgroup to join.
    pub fn parse(config: &Config, id: &str, spec: &Spec) -> Result<Self, Error> {
        let q = &config.hypervisor.vm;
        let size = if config.runtime.static_sandbox_resource_mgmt {
            cpu_mem::static_size(pod_limits(spec), q.default_vcpus, q.default_memory)
        } else {
            VmSize::default()
        };
        let cgroup = if config.runtime.sandbox_cgroup_only {
            let raw = spec
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            Some(CgroupRequest {
                path: CgroupPath::parse(&raw, id)?,
                record: None,
            })
        } else {
            None
        };
        Ok(Self {
            size,
            network: pod_network(spec),
            cgroup,
        })
    }
}

/// What a task is to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The pod's sandbox (pause) container: it starts the VM.
    Sandbox,
    /// A container of the pod `sandbox_id`: it joins that VM.
    Container { sandbox_id: String },
    /// No pod annotations (`ctr run`): a VM of its own.
    Standalone,
}

impl Role {
    /// The id of the pod (and of its VM) a task with id `id` belongs to.
    pub fn pod_id<'a>(&'a self, id: &'a str) -> &'a str {
        match self {
            Role::Container { sandbox_id } => sandbox_id,
            Role::Sandbox | Role::Standalone => id,
        }
    }
}

/// What capsa reads from the annotations of an OCI spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// The task's role in its pod.
    pub role: Role,
    /// The pod's limits (`io.kubernetes.cri.sandbox-memory`, `-cpu-quota`,
    /// `-cpu-period`), when any is given.
    pub sandbox_limits: Option<Limits>,
}

/// The one reader of a spec's annotations (CRI's and CRI-O's).
pub fn annotations(spec: &Spec) -> Annotations {
    let none = HashMap::new();
    let a = spec.annotations().as_ref().unwrap_or(&none);
    Annotations {
        role: role(spec.annotations().as_ref()),
        sandbox_limits: sandbox_limits(a),
    }
}

fn role(annotations: Option<&HashMap<String, String>>) -> Role {
    let Some(a) = annotations else {
        return Role::Standalone;
    };
    let pair = [
        (CRI_CONTAINER_TYPE, CRI_SANDBOX_ID),
        (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID),
    ]
    .into_iter()
    .find_map(|(t, s)| a.get(t).map(|kind| (kind, a.get(s))));
    match pair {
        Some((kind, _)) if kind == "sandbox" => Role::Sandbox,
        Some((kind, Some(sandbox))) if kind == "container" && !sandbox.is_empty() => {
            Role::Container {
                sandbox_id: sandbox.clone(),
            }
        }
        _ => Role::Standalone,
    }
}

fn sandbox_limits(a: &HashMap<String, String>) -> Option<Limits> {
    let num = |k: &str| a.get(k).and_then(|v| v.parse::<i64>().ok());
    let memory = num(SANDBOX_MEMORY).and_then(|m| u64::try_from(m).ok());
    let cpu = match (num(SANDBOX_CPU_QUOTA), num(SANDBOX_CPU_PERIOD)) {
        (Some(q), Some(p)) => u64::try_from(p).ok().map(|p| (q, p)),
        _ => None,
    };
    if memory.is_none() && cpu.is_none() {
        return None;
    }
    Some(Limits {
        milli_cpus: cpu.map_or(0, |(q, p)| cpu_mem::milli_cpus(q, p)),
        memory_bytes: memory.unwrap_or(0),
    })
}

/// What the pod whose first task has `spec` asks for: its sandbox
/// annotations, or for a task without a pod, its own `linux.resources`
/// (`ctr run --memory-limit --cpus`).
pub fn pod_limits(spec: &Spec) -> Limits {
    annotations(spec)
        .sandbox_limits
        .unwrap_or_else(|| Limits::of(spec.linux().as_ref().and_then(|l| l.resources().as_ref())))
}

/// The network of the pod whose sandbox (or standalone task) spec is
/// `spec`: its netns path, if it joins one, and the lines of the file it
/// mounts at `/etc/resolv.conf`.
pub fn pod_network(spec: &Spec) -> PodNetwork {
    PodNetwork {
        netns: netns_path(spec),
        dns: spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new(RESOLV_CONF))
            .and_then(|m| m.source().as_deref())
            .map(dns_lines)
            .unwrap_or_default(),
    }
}

/// The path of the network namespace the spec joins; `None` when it asks
/// for a new one or none (the VM then has loopback only).
fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

/// The meaningful lines of the `resolv.conf` at `path`.
fn dns_lines(path: &Path) -> Vec<String> {
    use std::io::Read;
    let mut text = String::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_RESOLV_CONF).read_to_string(&mut text));
    if let Err(e) = read {
        tracing::warn!(path = %path.display(), error = %e, "the pod's resolv.conf not read: no DNS configuration for the guest");
        return Vec::new();
    }
    parse_dns(&text)
}

/// The meaningful lines of a `resolv.conf` (no blanks, no comments).
fn parse_dns(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder,
    };

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn vm_size(spec: &Spec, vcpus: u32, memory: u32) -> VmSize {
        cpu_mem::static_size(pod_limits(spec), vcpus, memory)
    }

    #[test]
    fn containerd_cri_annotations() {
        let a = map(&[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "p1")]);
        assert_eq!(role(Some(&a)), Role::Sandbox);
        let a = map(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "p1")]);
        let r = role(Some(&a));
        assert_eq!(
            r,
            Role::Container {
                sandbox_id: "p1".into()
            }
        );
        assert_eq!(r.pod_id("c1"), "p1");
    }

    #[test]
    fn crio_annotations() {
        let a = map(&[(CRIO_CONTAINER_TYPE, "container"), (CRIO_SANDBOX_ID, "p2")]);
        assert_eq!(role(Some(&a)).pod_id("c"), "p2");
        let a = map(&[(CRIO_CONTAINER_TYPE, "sandbox")]);
        assert_eq!(role(Some(&a)), Role::Sandbox);
    }

    #[test]
    fn without_annotations_a_task_stands_alone() {
        assert_eq!(role(None), Role::Standalone);
        assert_eq!(role(Some(&map(&[("other", "x")]))), Role::Standalone);
        // A container without its sandbox id cannot join anything.
        let a = map(&[(CRI_CONTAINER_TYPE, "container")]);
        assert_eq!(role(Some(&a)), Role::Standalone);
        assert_eq!(Role::Standalone.pod_id("me"), "me");
    }

    #[test]
    fn defaults_without_requests() {
        let s = vm_size(&Spec::default(), 1, 512);
        assert_eq!((s.vcpus, s.memory_mib), (Some(1), Some(512)));
    }

    #[test]
    fn cri_sandbox_annotations_add_to_the_defaults() {
        let mut spec = Spec::default();
        spec.set_annotations(Some(map(&[
            (SANDBOX_MEMORY, "268435456"),
            (SANDBOX_CPU_QUOTA, "150000"),
            (SANDBOX_CPU_PERIOD, "100000"),
        ])));
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

    #[test]
    fn the_request_follows_the_configuration() {
        let mut config = Config::default();
        let mut s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"cgroupsPath": "/kubepods/pod1/abc", "resources": {"memory": {"limit": 268435456}}}
        }));
        let elastic = SandboxRequest::parse(&config, "p", &s).unwrap();
        assert_eq!((elastic.size.vcpus, elastic.size.memory_mib), (None, None));
        assert!(elastic.cgroup.is_none());
        config.runtime.static_sandbox_resource_mgmt = true;
        config.runtime.sandbox_cgroup_only = true;
        let fixed = SandboxRequest::parse(&config, "p", &s).unwrap();
        let default = config.hypervisor.vm.default_memory;
        assert_eq!(fixed.size.memory_mib, Some(default + 256));
        assert_eq!(
            fixed.cgroup.map(|c| c.path),
            Some(CgroupPath::Cgroupfs("kubepods/pod1/abc".into()))
        );
        s.linux_mut()
            .as_mut()
            .unwrap()
            .set_cgroups_path(Some("/a/../../etc".into()));
        let e = SandboxRequest::parse(&config, "p", &s).unwrap_err();
        assert!(e.to_string().contains("/a/../../etc"), "{e}");
    }

    #[test]
    fn the_netns_is_the_network_namespace_path() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1234"}
            ]}
        }));
        assert_eq!(
            netns_path(&s).as_deref(),
            Some(Path::new("/var/run/netns/cni-1234"))
        );
        let own = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "network"}]}
        }));
        assert_eq!(netns_path(&own), None);
        let host = spec(serde_json::json!({"ociVersion": "1.0.2", "linux": {}}));
        assert_eq!(netns_path(&host), None);
    }

    #[test]
    fn dns_comes_from_the_resolv_conf_mount() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("resolv.conf");
        std::fs::write(
            &file,
            "# made by CRI\nnameserver 10.96.0.10\n\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
        )
        .unwrap();
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/etc/hostname", "source": "/nonexistent", "type": "bind"},
                {"destination": "/etc/resolv.conf", "source": file, "type": "bind", "options": ["rbind", "ro"]}
            ]
        }));
        assert_eq!(
            pod_network(&s).dns,
            [
                "nameserver 10.96.0.10",
                "search ns.svc.cluster.local svc.cluster.local",
                "options ndots:5"
            ]
        );
        let none = spec(serde_json::json!({"ociVersion": "1.0.2", "mounts": []}));
        assert!(pod_network(&none).dns.is_empty());
    }
}

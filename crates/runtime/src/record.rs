//! What a sandbox's state directory says about it: `state.json`, written by
//! the process that owns the sandbox, read by `capsa ps`, `inspect`, `exec`,
//! `kill` and `rm` from other processes.

use fs_err as fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use capsa_hypervisor::AgentEndpoint;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The record's file name in the state directory.
pub const RECORD_FILE: &str = "state.json";

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// The VM boots or the container is being created.
    Creating,
    /// The workload runs.
    Running,
    /// The workload exited (or its VM died): the VM is being taken down.
    Stopping,
    /// The workload exited and the VM is gone; only the record is left.
    Stopped,
}

/// How the host reaches the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AgentAddress {
    /// Kernel vsock: the guest's CID and the port.
    Vsock { cid: u32, port: u32 },
    /// Hybrid vsock: a Unix socket, `CONNECT <port>` first.
    HybridVsock { path: PathBuf, port: u32 },
}

impl From<&AgentEndpoint> for AgentAddress {
    fn from(e: &AgentEndpoint) -> Self {
        match e {
            AgentEndpoint::Vsock { cid, port } => Self::Vsock {
                cid: *cid,
                port: *port,
            },
            AgentEndpoint::HybridVsock { path, port } => Self::HybridVsock {
                path: path.clone(),
                port: *port,
            },
        }
    }
}

impl AgentAddress {
    /// The endpoint to dial.
    pub fn endpoint(&self) -> AgentEndpoint {
        match self {
            Self::Vsock { cid, port } => AgentEndpoint::Vsock {
                cid: *cid,
                port: *port,
            },
            Self::HybridVsock { path, port } => AgentEndpoint::HybridVsock {
                path: path.clone(),
                port: *port,
            },
        }
    }

    /// The same VM, another port (the debug console's).
    pub fn with_port(&self, port: u32) -> Self {
        let mut other = self.clone();
        match &mut other {
            Self::Vsock { port: p, .. } | Self::HybridVsock { port: p, .. } => *p = port,
        }
        other
    }
}

/// A container of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The host directory shared as its root filesystem.
    pub rootfs: PathBuf,
    pub command: Vec<String>,
    /// The file its stdout and stderr go to when detached.
    pub log: Option<PathBuf>,
    /// Exit status once it exited (128+N when killed by signal N).
    pub exit_code: Option<i32>,
}

/// A drive hot-plugged into the sandbox's VM for a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The drive's id in the VM.
    pub id: String,
    pub container: String,
    /// What it is for: `rootfs`, `volume <destination>` or
    /// `device <path in the container>`.
    pub role: String,
    /// The host block device or image file.
    pub source: PathBuf,
    /// `virtio-blk` or `virtio-scsi`.
    pub driver: String,
    /// Where the guest finds it: a PCI path (`02/00`) or a SCSI address.
    pub guest_address: String,
    pub read_only: bool,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub status: SandboxStatus,
    /// Seconds since the epoch when the sandbox was created.
    pub created: u64,
    /// The process that owns the sandbox (the VM dies with it).
    pub owner_pid: i32,
    pub hypervisor_pid: Option<u32>,
    /// Every host process the VM owns (the hypervisor, virtiofsd, the
    /// vsock backend), as its driver reports them: what `capsa rm
    /// --force` ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<capsa_hypervisor::VmProcess>,
    pub accelerator: Option<String>,
    pub agent: Option<AgentAddress>,
    /// Vsock port of the guest's debug console, when enabled.
    pub debug_console_port: Option<u32>,
    pub console_log: PathBuf,
    /// The owner's log.
    pub log: PathBuf,
    pub containers: Vec<ContainerRecord>,
    /// Drives attached to the VM now.
    #[serde(default)]
    pub devices: Vec<DeviceRecord>,
    /// The pod's network namespace, whose taps and filters are capsa's to
    /// remove (also after a crash).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The links of that netns the VM has a NIC for.
    #[serde(default)]
    pub network: Vec<crate::resource::network::Endpoint>,
    /// The network capsa made for the sandbox (`capsa run --network
    /// bridge`): its netns and CNI results. Released from `cni.json` in
    /// the state directory, which is written before anything is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<crate::resource::network::attachment::CniAttachment>,
    /// The VM's vCPUs and memory now and their maxima (elastic sizing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<capsa_hypervisor::VmResources>,
}

impl SandboxRecord {
    /// A record of a sandbox being created in `dir` by this process.
    pub fn new(id: &str, dir: &Path) -> Self {
        Self {
            id: id.into(),
            status: SandboxStatus::Creating,
            created: now(),
            owner_pid: std::process::id() as i32,
            hypervisor_pid: None,
            processes: Vec::new(),
            accelerator: None,
            agent: None,
            debug_console_port: None,
            console_log: dir.join("console.log"),
            log: dir.join("capsa.log"),
            containers: Vec::new(),
            devices: Vec::new(),
            netns: None,
            network: Vec::new(),
            cni: None,
            resources: None,
        }
    }

    /// Reads `<dir>/state.json`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(RECORD_FILE);
        let text = fs::read(&path)?;
        serde_json::from_slice(&text).map_err(|source| Error::Record { path, source })
    }

    /// Writes `<dir>/state.json` atomically (readers never see half a file).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let path = dir.join(RECORD_FILE);
        let tmp = dir.join(format!(".{RECORD_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(|source| Error::Record {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, text)?;
        Ok(fs::rename(&tmp, &path)?)
    }

    /// Seconds since the sandbox was created.
    pub fn age(&self) -> u64 {
        now().saturating_sub(self.created)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "3s", "4m", "2h", "5d".
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = SandboxRecord::new("sb", dir.path());
        r.agent = Some(AgentAddress::HybridVsock {
            path: "/run/capsa/sb/vsock.sock".into(),
            port: 1024,
        });
        r.containers.push(ContainerRecord {
            id: "sb".into(),
            rootfs: "/r".into(),
            command: vec!["sh".into()],
            log: None,
            exit_code: Some(3),
        });
        r.save(dir.path()).unwrap();
        assert_eq!(SandboxRecord::load(dir.path()).unwrap(), r);
        let text = std::fs::read_to_string(dir.path().join(RECORD_FILE)).unwrap();
        assert!(text.contains("\"kind\": \"hybrid-vsock\""), "{text}");
        assert!(text.contains("\"status\": \"creating\""), "{text}");
    }

    #[test]
    fn damaged_record_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RECORD_FILE), "{").unwrap();
        let err = SandboxRecord::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains(RECORD_FILE), "{err}");
    }

    #[test]
    fn ports_and_ages() {
        let a = AgentAddress::Vsock { cid: 3, port: 1024 };
        assert_eq!(
            a.with_port(1026),
            AgentAddress::Vsock { cid: 3, port: 1026 }
        );
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(125), "2m");
        assert_eq!(human_age(7200), "2h");
        assert_eq!(human_age(200_000), "2d");
    }
}

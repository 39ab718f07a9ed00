//! Starting a sandbox: its state directory, its host cgroup and pod
//! network, the VM, the agent, the guest's sandbox.

use std::path::PathBuf;
use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_config::Config;
use capsa_protocols::{agent, AGENT_READY_LINE, AGENT_VSOCK_PORT, GUEST_SHARED_DIR, SHARED_FS_TAG};
use tokio::time::Instant;
use tracing::Instrument;

use super::Sandbox;
use crate::record::{AgentAddress, SandboxRecord};
use crate::request::{CgroupRequest, SandboxRequest};
use crate::resource::block::Drives;
use crate::resource::cgroup::{check_fits, PodCgroup};
use crate::resource::cpu_mem::{self, CpuMem};
use crate::resource::network::{self, NetworkResource, PodNetwork};
use crate::resource::share::Share;
use crate::resource::Resources;
use crate::state::{self, StateDir};
use crate::vm::{self, VmSize};
use crate::{console, Error};

/// Lines of the guest console shown when the guest fails.
const CONSOLE_TAIL_LINES: usize = 30;
/// Longest wait for the agent's readiness line on the console.
const READY_LINE_WAIT: Duration = Duration::from_secs(5);
/// How long a VM whose driver failed to answer during the boot wait may
/// take to be seen exited (its hypervisor reaped).
const VM_EXIT_WAIT: Duration = Duration::from_secs(1);

impl Sandbox {
    /// Starts a sandbox with a new random id.
    pub async fn start(config: &Config, size: VmSize) -> Result<Self, Error> {
        Self::start_named(config, &vm::new_id(), size, &PodNetwork::default()).await
    }

    /// Creates the state directory `<state_dir>/<id>`, boots the VM,
    /// connects to the agent and creates the sandbox in the guest. With
    /// `net.netns`, the VM gets a NIC for each link of that netns (see
    /// [`network::setup`]) and the agent configures them as the links are.
    pub async fn start_named(
        config: &Config,
        id: &str,
        size: VmSize,
        net: &PodNetwork,
    ) -> Result<Self, Error> {
        let request = SandboxRequest::sized(size, net);
        Self::start_request(config, id, &request).await
    }

    /// Starts sandbox `id` as `request` says (see [`SandboxRequest`]).
    pub async fn start_request(
        config: &Config,
        id: &str,
        request: &SandboxRequest,
    ) -> Result<Self, Error> {
        for stale in StateDir::collect_stale(&config.runtime.state_dir) {
            tracing::info!(sandbox = %stale, "removed the state of a sandbox whose capsa died");
        }
        let dir = StateDir::create(&config.runtime.state_dir, id)?;
        Self::start_request_in(config, dir, request).await
    }

    /// Like [`Sandbox::start_named`] in a state directory created already
    /// (by a parent process); this process becomes its owner.
    pub async fn start_in(
        config: &Config,
        dir: StateDir,
        size: VmSize,
        net: &PodNetwork,
    ) -> Result<Self, Error> {
        let request = SandboxRequest::sized(size, net);
        Self::start_request_in(config, dir, &request).await
    }

    /// Like [`Sandbox::start_request`] in a state directory created
    /// already (by a parent process); this process becomes its owner.
    pub async fn start_request_in(
        config: &Config,
        dir: StateDir,
        request: &SandboxRequest,
    ) -> Result<Self, Error> {
        let step = crate::step!("sandbox start");
        let trace = crate::otel::trace_id(&step);
        let sandbox = Self::start_steps(config, dir, request)
            .instrument(step)
            .await?;
        // With tracing on: the agent's spans of this start, exported with
        // the host's (the root has ended: the trace is whole).
        crate::otel::export_agent_spans(sandbox.agent(), trace).await;
        Ok(sandbox)
    }

    async fn start_steps(
        config: &Config,
        dir: StateDir,
        request: &SandboxRequest,
    ) -> Result<Self, Error> {
        let id = dir.id();
        let net = &request.network;
        // Until the sandbox exists, a failure or a cancelled start (the
        // future dropped at this await) removes the state directory, the
        // pod cgroup and the taps of the pod network.
        let mut early = EarlyStart {
            dir: Some(dir),
            netns: net.netns.clone(),
            cgroup: None,
        };
        // With a pod cgroup, this process moves into it before the VM's
        // processes are started, once its limits are known to fit the VM.
        if let Some(cgroup) = &request.cgroup {
            early.cgroup = Some(join_cgroup(config, cgroup, request.size)?);
        }
        let network = NetworkResource::new(config, net.clone());
        let (endpoints, nics) = network
            .host(&id)
            .instrument(crate::step!("pod network"))
            .await?;
        let (dir, cgroup) = early.disarm();
        let vm = vm::create(config, &id, &dir, request.size, nics);
        let mut record = SandboxRecord::new(&id, dir.path());
        record.netns = net.netns.clone();
        record.network = endpoints;
        let resources = Resources {
            share: Share::new(dir.mounts_dir()),
            block: Drives::new(vm::block_policy(config)),
            network,
            cpu_mem: CpuMem::default(),
            cgroup,
        };
        let mut sandbox = Self {
            id,
            dir,
            vm,
            agent: None,
            record,
            finished: false,
            console: None,
            dead: None,
            resources,
            metrics: None,
        };
        tracing::info!(sandbox = %sandbox.id, dir = %sandbox.dir.path().display(), "starting sandbox");
        let booted = match sandbox.dir.claim() {
            Ok(()) => {
                sandbox.save_record();
                sandbox.boot(config).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = booted {
            sandbox.finished = true;
            sandbox.teardown().await;
            if let Err(e) = sandbox.dir.remove() {
                tracing::error!(sandbox = %sandbox.id, error = %e, "state directory not removed");
            }
            return Err(e);
        }
        Ok(sandbox)
    }

    async fn boot(&mut self, config: &Config) -> Result<(), Error> {
        // A VM whose processes run unprivileged reaches its run directory
        // and the share as their group, and sees host root's files in the
        // share as its own.
        if let Some(id) = self.vm.host_identity() {
            self.dir.grant_group(id.gid)?;
            self.resources.share.map_root_to(id.uid, id.gid)?;
        }
        self.vm
            .start()
            .instrument(crate::step!("vm start"))
            .await
            .map_err(Error::Vm)?;
        // Every process the VM owns, for `capsa rm --force`.
        let processes = self.vm.processes();
        self.update_record(|r| r.processes = processes);
        self.console = Some(console::Keeper::start(
            self.dir.console_log(),
            console::MAX_BYTES,
        ));
        if let Some(accel) = self.vm.accelerator() {
            tracing::info!(sandbox = %self.id, %accel, pid = ?self.vm.pid(), "VM started");
        }
        let endpoint = self.vm.agent_endpoint(AGENT_VSOCK_PORT);
        let dial_timeout = Duration::from_secs(config.agent.capsa.dial_timeout.into());
        let deadline = Instant::now() + dial_timeout;
        let console = |dir: &StateDir| state::tail(&dir.console_log(), CONSOLE_TAIL_LINES);
        // Dialing before the guest has set its vsock device up can wedge
        // the vsock backend: wait for the device first.
        let ready = self
            .vm
            .wait_guest_ready(dial_timeout)
            .instrument(crate::step!("guest kernel (vsock ready)"))
            .await;
        match ready {
            Ok(true) => {}
            Ok(false) if self.vm.wait_exit(Duration::ZERO).await.unwrap_or(true) => {
                return Err(Error::VmExited {
                    console: console(&self.dir),
                })
            }
            Ok(false) => {
                return Err(Error::VsockNotReady {
                    seconds: dial_timeout.as_secs(),
                    console: console(&self.dir),
                })
            }
            // The hypervisor exiting while its vsock device is polled fails
            // the driver's poll (`make soak` met it: a guest that panicked
            // at boot under load): say that the VM exited, with its
            // console, not that the driver failed. Bounded: the hypervisor
            // is reaped once its control socket closed.
            Err(e) if self.vm.wait_exit(VM_EXIT_WAIT).await.unwrap_or(false) => {
                tracing::debug!(sandbox = %self.id, error = %e, "driver failed: the VM exited");
                return Err(Error::VmExited {
                    console: console(&self.dir),
                });
            }
            Err(e) => return Err(Error::Vm(e)),
        }
        // A CONNECT that reaches the guest before its agent listens can, now
        // and then, leave vhost-device-vsock answering no CONNECT of this VM
        // again. capsa's agent says on the console when it listens; other
        // agents do not, so the wait is bounded.
        let console_log = self.dir.console_log();
        let listening = state::wait_for_line(&console_log, AGENT_READY_LINE, READY_LINE_WAIT)
            .instrument(crate::step!("agent listening"))
            .await;
        if !listening {
            tracing::debug!(sandbox = %self.id, "no readiness line from the agent; dialing anyway");
        }
        let vm = &mut self.vm;
        let exited =
            async { while let Ok(false) = vm.wait_exit(Duration::from_millis(250)).await {} };
        let dial = crate::step!("agent dial");
        let agent = tokio::select! {
            r = AgentClient::connect(&endpoint, deadline).instrument(dial) => r.map_err(|source| Error::AgentDial {
                console: console(&self.dir),
                source,
            })?,
            () = exited => return Err(Error::VmExited { console: console(&self.dir) }),
        };
        tracing::info!(sandbox = %self.id, "agent connected");
        // The pod's agent policy is the first request.
        if let Some(policy) = &config.agent.capsa.policy {
            crate::policy::set(&agent, self.dir.path(), policy)
                .instrument(crate::step!("SetPolicy"))
                .await?;
        }
        let req = agent::CreateSandboxRequest {
            hostname: self.hostname(),
            sandbox_id: self.id.clone(),
            // `shared_fs = "none"`: nothing to mount.
            storages: [agent::Storage {
                driver: "virtio-fs".into(),
                source: SHARED_FS_TAG.into(),
                fstype: "virtiofs".into(),
                mount_point: GUEST_SHARED_DIR.into(),
                ..Default::default()
            }]
            .into_iter()
            .filter(|_| crate::vm::has_shared_fs(config))
            .collect(),
            kernel_modules: config
                .agent
                .capsa
                .kernel_modules
                .iter()
                .map(|m| {
                    let mut words = m.split_whitespace();
                    agent::KernelModule {
                        name: words.next().unwrap_or_default().to_string(),
                        parameters: words.map(String::from).collect(),
                        ..Default::default()
                    }
                })
                .collect(),
            dns: self.resources.network.pod.dns.clone(),
            ..Default::default()
        };
        self.agent = Some(agent);
        self.agent()
            .create_sandbox(req)
            .instrument(crate::step!("CreateSandbox"))
            .await?;
        let (agent, endpoints) = (self.agent().clone(), self.record.network.clone());
        self.resources
            .network
            .configure_guest(self.vm.network().ok(), &agent, &endpoints, &self.id)
            .instrument(crate::step!("guest network"))
            .await?;
        self.start_sizing(config);
        let (pid, accel) = (self.vm.pid(), self.vm.accelerator());
        let debug_port = config
            .agent
            .capsa
            .debug_console_enabled
            .then_some(vm::DEBUG_CONSOLE_VPORT);
        self.update_record(|r| {
            r.hypervisor_pid = pid;
            r.accelerator = accel.map(|a| a.to_string());
            r.agent = Some(AgentAddress::from(&endpoint));
            r.debug_console_port = debug_port;
        });
        self.metrics = crate::metrics::PodServer::start(self.dir.path(), self.agent().clone());
        Ok(())
    }

    /// Elastic sizing unless the configuration asks for static sizing or
    /// the driver cannot resize this VM.
    fn start_sizing(&mut self, config: &Config) {
        match self.vm.resources() {
            Ok(hotplug) => {
                let booted = hotplug.current();
                let static_sizing = config.runtime.static_sandbox_resource_mgmt;
                if static_sizing {
                    tracing::info!(sandbox = %self.id, "static sizing: the VM keeps its boot size");
                }
                self.resources.cpu_mem.start(booted, static_sizing);
                self.update_record(|r| r.resources = Some(booted));
            }
            Err(e) => {
                tracing::info!(sandbox = %self.id, "the VM keeps its boot size: {e}");
            }
        }
    }
}

/// Checks that the pod cgroup fits a VM of boot size `size`, then creates
/// it where missing and moves this process in.
fn join_cgroup(config: &Config, cgroup: &CgroupRequest, size: VmSize) -> Result<PodCgroup, Error> {
    let (vcpus, memory_mib) = cpu_mem::boot_size(config, size);
    check_fits(&cgroup.path, u64::from(memory_mib), vcpus)?;
    Ok(PodCgroup::join(cgroup.path.clone(), cgroup.record.clone())?)
}

/// The state directory, pod cgroup and pod network of a sandbox being
/// started, before the [`Sandbox`] (whose teardown and `Drop` take over)
/// exists.
struct EarlyStart {
    dir: Option<StateDir>,
    netns: Option<PathBuf>,
    cgroup: Option<PodCgroup>,
}

impl EarlyStart {
    fn disarm(&mut self) -> (StateDir, Option<PodCgroup>) {
        self.netns = None;
        let dir = self.dir.take().expect("disarmed once");
        (dir, self.cgroup.take())
    }
}

impl Drop for EarlyStart {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let id = dir.id();
        if let Some(netns) = &self.netns {
            network::log_teardown(&id, netns, network::teardown_blocking(netns));
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.release();
        }
        if let Err(e) = dir.remove() {
            tracing::error!(sandbox = %id, error = %e, "state directory not removed");
        }
    }
}

//! A sandbox: one VM, its helpers, its agent, and its containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_config::Config;
use capsa_hypervisor::{BlockDevice, GuestAddress, Vm};
use capsa_protocols::{agent, AGENT_READY_LINE, AGENT_VSOCK_PORT, GUEST_SHARED_DIR, SHARED_FS_TAG};
use tokio::time::Instant;
use tracing::Instrument;

use crate::health::{self, Death};
use crate::record::{AgentAddress, ContainerRecord, SandboxRecord, SandboxStatus};
use crate::resource::network::{self, Endpoint, PodNetwork};
use crate::resource::sizing::{Bounds, PodSizer};
use crate::resource::{share, BlockPolicy, Rootfs};
use crate::spec::{self, ProcessSpec};
use crate::state::{self, StateDir};
use crate::vm::{self, VmSize};
use crate::{console, Error};

/// Lines of the guest console shown when the guest fails.
const CONSOLE_TAIL_LINES: usize = 30;
/// Longest wait for the agent's readiness line on the console.
const READY_LINE_WAIT: Duration = Duration::from_secs(5);
/// How long the hypervisor gets to stop after a power-off request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long a VM whose QMP session failed during the boot wait may take
/// to be seen exited (its QEMU reaped).
const VM_EXIT_WAIT: Duration = Duration::from_secs(1);

/// A running sandbox. Take it down with [`Sandbox::destroy`]; every error
/// path of [`Sandbox::start`] has already taken it down.
pub struct Sandbox {
    id: String,
    dir: StateDir,
    vm: Box<dyn Vm>,
    agent: Option<AgentClient>,
    record: SandboxRecord,
    /// Host directories shared as container root filesystems.
    shared_roots: HashMap<String, PathBuf>,
    /// Taken down by `destroy` or `stop`: nothing left for `Drop`.
    finished: bool,
    /// Keeps the guest console log bounded while the VM runs.
    console: Option<console::Keeper>,
    /// Declared dead (hung or stopped): teardown kills it without asking.
    dead: Option<Death>,
    /// How containers' block devices are used.
    policy: BlockPolicy,
    /// Drives attached so far (names the next one).
    drives: u32,
    /// The pod network joined (its netns has capsa's taps and filters).
    network: PodNetwork,
    /// How that netns reaches the VM.
    model: network::Model,
    /// Whether NICs use vhost-net (where the host has it).
    vhost: bool,
    /// Sizes the VM after its containers' limits; `None` with static
    /// sizing or a driver that cannot resize.
    pub(crate) sizer: Option<PodSizer>,
}

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
        for stale in StateDir::collect_stale(&config.runtime.state_dir) {
            tracing::info!(sandbox = %stale, "removed the state of a sandbox whose capsa died");
        }
        let dir = StateDir::create(&config.runtime.state_dir, id)?;
        Self::start_in(config, dir, size, net).await
    }

    /// Like [`Sandbox::start_named`] in a state directory created already
    /// (by a parent process); this process becomes its owner.
    pub async fn start_in(
        config: &Config,
        dir: StateDir,
        size: VmSize,
        net: &PodNetwork,
    ) -> Result<Self, Error> {
        Self::start_steps(config, dir, size, net)
            .instrument(crate::step!("sandbox start"))
            .await
    }

    async fn start_steps(
        config: &Config,
        dir: StateDir,
        size: VmSize,
        net: &PodNetwork,
    ) -> Result<Self, Error> {
        let id = dir.id();
        // Until the sandbox exists, a failure or a cancelled start (the
        // future dropped at this await) removes the state directory and
        // the taps of the pod network.
        let mut early = EarlyStart {
            dir: Some(dir),
            netns: net.netns.clone(),
        };
        let (endpoints, nics) = host_network(config, &id, net)
            .instrument(crate::step!("pod network"))
            .await?;
        let dir = early.disarm();
        let vm = vm::create(config, &id, &dir, size, nics);
        let mut record = SandboxRecord::new(&id, dir.path());
        record.netns = net.netns.clone();
        record.network = endpoints;
        let mut sandbox = Self {
            id,
            dir,
            vm,
            agent: None,
            record,
            shared_roots: HashMap::new(),
            finished: false,
            console: None,
            dead: None,
            policy: vm::block_policy(config),
            drives: 0,
            network: net.clone(),
            model: vm::network_model(config),
            vhost: !config.hypervisor.qemu.disable_vhost_net,
            sizer: None,
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

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// What `state.json` says.
    pub fn record(&self) -> &SandboxRecord {
        &self.record
    }

    /// Changes the record and writes it out (failures are logged: the
    /// record informs other commands, the sandbox works without it).
    pub fn update_record(&mut self, change: impl FnOnce(&mut SandboxRecord)) {
        change(&mut self.record);
        self.save_record();
    }

    fn save_record(&self) {
        if let Err(e) = self.record.save(self.dir.path()) {
            tracing::warn!(sandbox = %self.id, error = %e, "state record not written");
        }
    }

    /// The VM's driver.
    pub(crate) fn vm_mut(&mut self) -> &mut dyn Vm {
        self.vm.as_mut()
    }

    /// The connected agent.
    pub fn agent(&self) -> &AgentClient {
        self.agent.as_ref().expect("agent connected by start")
    }

    async fn boot(&mut self, config: &Config) -> Result<(), Error> {
        self.vm
            .start()
            .instrument(crate::step!("vm start"))
            .await
            .map_err(Error::Vm)?;
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
            // QEMU exiting while its vsock device is polled closes the QMP
            // session under the poll (`make soak` met it: a guest that
            // panicked at boot under load): say that the VM exited, with its
            // console, not that QMP failed. Bounded: QEMU is reaped once its
            // QMP socket closed.
            Err(e) if self.vm.wait_exit(VM_EXIT_WAIT).await.unwrap_or(false) => {
                tracing::debug!(sandbox = %self.id, error = %e, "QMP failed: the VM exited");
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
        // policy (issue 25): the pod's agent policy is the first request.
        if let Some(policy) = &config.agent.capsa.policy {
            crate::policy::set(&agent, self.dir.path(), policy)
                .instrument(crate::step!("SetPolicy"))
                .await?;
        }
        let req = agent::CreateSandboxRequest {
            hostname: self.hostname(),
            sandbox_id: self.id.clone(),
            storages: vec![agent::Storage {
                driver: "virtio-fs".into(),
                source: SHARED_FS_TAG.into(),
                fstype: "virtiofs".into(),
                mount_point: GUEST_SHARED_DIR.into(),
                ..Default::default()
            }],
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
            dns: self.network.dns.clone(),
            ..Default::default()
        };
        self.agent = Some(agent);
        self.agent()
            .create_sandbox(req)
            .instrument(crate::step!("CreateSandbox"))
            .await?;
        self.configure_guest_network()
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
        Ok(())
    }

    /// Elastic sizing unless the configuration asks for static sizing or
    /// the driver cannot resize this VM.
    fn start_sizing(&mut self, config: &Config) {
        match self.vm.resources() {
            Ok(hotplug) => {
                let booted = hotplug.current();
                if config.runtime.static_sandbox_resource_mgmt {
                    tracing::info!(sandbox = %self.id, "static sizing: the VM keeps its boot size");
                } else {
                    self.sizer = Some(PodSizer::new(Bounds::of(booted)));
                }
                self.update_record(|r| r.resources = Some(booted));
            }
            Err(e) => {
                tracing::info!(sandbox = %self.id, "the VM keeps its boot size: {e}");
            }
        }
    }

    /// Creates a container running `process` on the directory `rootfs`
    /// (shared at `<shared>/<container-id>/rootfs`). The container's first
    /// process has the container's id as exec id.
    pub async fn create_container(
        &mut self,
        container_id: &str,
        rootfs: &Path,
        process: &ProcessSpec,
    ) -> Result<(), Error> {
        let oci = spec::build(process, "", &self.hostname())?;
        let rootfs = Rootfs::Dir(rootfs.to_path_buf());
        self.create_container_from(container_id, &rootfs, oci).await
    }

    /// The hostname given to the guest and its containers.
    pub fn hostname(&self) -> String {
        // Sandbox ids are checked: ASCII, so any byte count is a boundary.
        let short = &self.id[..self.id.len().min(8)];
        format!("capsa-{short}")
    }

    /// Bind-mounts `rootfs` at `<shared>/<container-id>/rootfs`; returns the
    /// path the guest sees it at.
    pub fn share_rootfs(&mut self, container_id: &str, rootfs: &Path) -> Result<String, Error> {
        let (share, guest_root) = self.container_share(container_id);
        share::attach_rootfs_dir(&share, rootfs)?;
        self.note_rootfs(container_id, rootfs);
        Ok(guest_root)
    }

    /// Remembers what the record shows as a container's rootfs.
    pub(crate) fn note_rootfs(&mut self, container_id: &str, rootfs: &Path) {
        self.shared_roots
            .insert(container_id.to_string(), rootfs.to_path_buf());
    }

    pub(crate) fn block_policy(&self) -> BlockPolicy {
        self.policy
    }

    /// A new drive id, unique in this VM.
    pub(crate) fn next_drive_id(&mut self) -> String {
        self.drives += 1;
        format!("drive{}", self.drives)
    }

    /// The host directory shared with the guest for container
    /// `container_id` (`<shared>/<container-id>`), and the guest's path of
    /// its `rootfs` subdirectory. The caller mounts what it needs below it.
    pub fn container_share(&self, container_id: &str) -> (PathBuf, String) {
        (
            self.dir.mounts_dir().join(container_id),
            capsa_protocols::guest_rootfs_path(container_id),
        )
    }

    /// Removes container `container_id` from the guest (which unmounts
    /// its storages), then detaches what was attached for it: its drives
    /// are unplugged, its share unmounted and removed.
    pub async fn remove_container(&mut self, container_id: &str) -> Result<(), Error> {
        let removed = self.agent().remove_container(container_id).await;
        let detached = self.detach_container(container_id).await;
        self.unsize(container_id).await;
        self.shared_roots.remove(container_id);
        self.update_record(|r| r.containers.retain(|c| c.id != container_id));
        removed?;
        detached.map_or(Ok(()), Err)
    }

    /// Hot-plugs a drive into the running VM; returns where the guest
    /// finds it (the `source` of a `blk`/`scsi` storage).
    pub async fn attach_block(&mut self, device: &BlockDevice) -> Result<GuestAddress, Error> {
        let address = self
            .vm
            .block()
            .map_err(Error::Vm)?
            .attach_block(device)
            .await;
        address.map_err(Error::Vm)
    }

    /// Unplugs the drive `id` (once the guest has released it).
    pub async fn detach_block(&mut self, id: &str) -> Result<(), Error> {
        let detached = self.vm.block().map_err(Error::Vm)?.detach_block(id).await;
        detached.map_err(Error::Vm)
    }

    /// Has the agent configure the NICs of the endpoints found at start
    /// (cold-plugged) and their routes.
    async fn configure_guest_network(&mut self) -> Result<(), Error> {
        let endpoints = self.record.network.clone();
        if endpoints.is_empty() {
            return Ok(());
        }
        let pci = self.nic_addresses(0, endpoints.len());
        let done = network::guest::configure(self.agent(), &endpoints, &pci, &endpoints).await?;
        for i in &done {
            tracing::info!(sandbox = %self.id, name = %i.name, mac = %i.hwAddr, "guest interface configured");
        }
        Ok(())
    }

    /// Looks again at the pod's netns and gives the VM a NIC (hot-plugged)
    /// for each link that appeared since: the agent configures it and the
    /// routes. Returns the new interfaces' names.
    pub async fn rescan_network(&mut self) -> Result<Vec<String>, Error> {
        let Some(netns) = self.network.netns.clone() else {
            return Ok(Vec::new());
        };
        let new = network::setup(&netns, self.model).await?;
        let first = self.record.network.len();
        for (n, endpoint) in new.iter().enumerate() {
            let attached = match vm::nic_device(n + first, endpoint, self.vhost) {
                Ok(nic) => self.attach_nic(&nic, endpoint).await,
                Err(e) => Err(e),
            };
            if let Err(e) = attached {
                // The taps without a NIC go: a later rescan makes them anew.
                let orphans = new[n..].iter().map(|e| e.tap.clone()).collect();
                log_teardown(
                    &self.id,
                    &netns,
                    network::teardown_taps(&netns, orphans).await,
                );
                return Err(e);
            }
            self.update_record(|r| r.network.push(endpoint.clone()));
        }
        let all = self.record.network.clone();
        let pci = self.nic_addresses(first, new.len());
        network::guest::configure(self.agent(), &new, &pci, &all).await?;
        Ok(new.into_iter().map(|e| e.name).collect())
    }

    async fn attach_nic(
        &mut self,
        nic: &capsa_hypervisor::NetDevice,
        endpoint: &Endpoint,
    ) -> Result<(), Error> {
        let hotplug = self.vm.network().map_err(Error::Vm)?;
        let attached = hotplug.attach_nic(nic).await;
        attached.map(drop).map_err(|source| Error::Hotplug {
            what: format!("{} of {}", endpoint.name, endpoint.netns.display()),
            source,
        })
    }

    /// The PCI paths of the NICs `net<first>`..`net<first+count>`, where
    /// the driver knows them.
    fn nic_addresses(&mut self, first: usize, count: usize) -> Vec<Option<GuestAddress>> {
        let attached = self
            .vm
            .network()
            .map(|n| n.attached_nics())
            .unwrap_or_default();
        (first..first + count)
            .map(|n| {
                let id = format!("net{n}");
                attached
                    .iter()
                    .find(|a| a.device.id == id)
                    .map(|a| a.address.clone())
            })
            .collect()
    }

    /// The hypervisor's pid while it runs.
    pub fn hypervisor_pid(&self) -> Option<u32> {
        self.vm.pid()
    }

    /// A watch of this sandbox's VM (see [`health::Watch`]).
    pub fn watch(&self, config: &Config) -> Option<health::Watch> {
        let pid = self.vm.pid()?;
        Some(health::Watch::new(pid, self.agent().clone(), config))
    }

    /// Marks the VM dead (hung, stopped or gone): teardown then kills it
    /// at once, asking its agent nothing.
    pub fn declare_dead(&mut self, why: Death) {
        tracing::error!(sandbox = %self.id, pid = ?self.vm.pid(), "the VM is dead: {why}");
        self.dead = Some(why);
    }

    /// Creates container `container_id` from a complete OCI spec (its root
    /// shared with [`Sandbox::share_rootfs`]). The spec's hooks are not sent:
    /// they name host binaries, which the guest does not have (as Kata's
    /// runtimes, which clear them too; the agent runs the hooks it is sent
    /// as guest hooks).
    pub async fn create_container_spec(
        &mut self,
        container_id: &str,
        oci: &oci_spec::runtime::Spec,
    ) -> Result<(), Error> {
        self.create_container_request(container_id, oci, vec![], vec![])
            .await
    }

    /// Creates the container with the storages and devices attached for
    /// it, and records it.
    pub(crate) async fn create_container_request(
        &mut self,
        container_id: &str,
        oci: &oci_spec::runtime::Spec,
        storages: Vec<agent::Storage>,
        devices: Vec<agent::Device>,
    ) -> Result<(), Error> {
        let mut grpc = capsa_protocols::convert::spec_to_grpc(oci);
        if grpc.Hooks.take().is_some() {
            tracing::info!(
                container = container_id,
                "the spec's hooks are host hooks: not sent to the guest"
            );
        }
        let req = agent::CreateContainerRequest {
            container_id: container_id.into(),
            exec_id: container_id.into(),
            OCI: Some(grpc).into(),
            storages,
            devices,
            ..Default::default()
        };
        self.agent()
            .create_container(req)
            .instrument(crate::step!("CreateContainer"))
            .await?;
        let rootfs = self
            .shared_roots
            .get(container_id)
            .cloned()
            .unwrap_or_default();
        let command = oci
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        self.update_record(|r| {
            r.containers.push(ContainerRecord {
                id: container_id.into(),
                rootfs,
                command,
                log: None,
                exit_code: None,
            })
        });
        Ok(())
    }

    /// Tears the sandbox down: asks the agent to destroy it (the guest powers
    /// off), stops the VM and its helpers, unmounts and removes the state.
    pub async fn destroy(mut self) -> Result<(), Error> {
        async {
            self.finished = true;
            self.teardown().await;
            let _step = crate::step!("state removal").entered();
            self.dir.remove()
        }
        .instrument(crate::step!("teardown"))
        .await
    }

    /// Tears the sandbox down like [`Sandbox::destroy`] but keeps the
    /// record and the logs in the state directory, with status `Stopped`,
    /// for `capsa ps`/`inspect` until `capsa rm`.
    pub async fn stop(mut self) -> Result<(), Error> {
        self.finished = true;
        self.teardown().instrument(crate::step!("teardown")).await;
        self.update_record(|r| {
            r.status = SandboxStatus::Stopped;
            r.hypervisor_pid = None;
        });
        self.dir.release()
    }

    /// Best-effort teardown used by every path; only logs failures.
    /// (A sandbox dropped without `destroy`, e.g. by a panic or a
    /// cancelled start, is cleaned up by `Drop`.)
    async fn teardown(&mut self) {
        // The agent answers DestroySandbox once every container is gone and
        // the guest's page cache is synced (what containers wrote through
        // virtio-fs is on the host): then QEMU is told to quit at once,
        // rather than waiting for the guest kernel to power itself off.
        // A VM that is gone, stopped or whose agent does not answer a
        // health check is killed without waiting for anything.
        if self.dead.is_none() {
            if let Some(agent) = &self.agent {
                self.dead = match self.vm.pid() {
                    Some(pid) => {
                        health::probe(pid, agent)
                            .instrument(crate::step!("health probe"))
                            .await
                    }
                    None => Some(Death::Exited),
                };
            }
        }
        match (self.agent.take(), self.dead) {
            (Some(_), Some(why)) => {
                tracing::info!(sandbox = %self.id, "{why}: no DestroySandbox");
            }
            (Some(agent), None) => match agent
                .destroy_sandbox()
                .instrument(crate::step!("DestroySandbox"))
                .await
            {
                Ok(()) => tracing::debug!(sandbox = %self.id, "guest destroyed its sandbox"),
                Err(e) => {
                    tracing::warn!(sandbox = %self.id, error = %e, "DestroySandbox failed");
                }
            },
            (None, _) => {}
        }
        let grace = if self.dead.is_some() {
            Duration::ZERO
        } else {
            SHUTDOWN_GRACE
        };
        let shutdown = self
            .vm
            .shutdown(grace)
            .instrument(crate::step!("vm shutdown"))
            .await;
        if let Err(e) = shutdown {
            tracing::warn!(sandbox = %self.id, error = %e, "VM shutdown");
        }
        if let Some(netns) = self.network.netns.take() {
            let down = network::teardown(&netns)
                .instrument(crate::step!("pod network teardown"))
                .await;
            log_teardown(&self.id, &netns, down);
        }
    }
}

/// A sandbox dropped without [`Sandbox::destroy`] (a panic, a cancelled
/// future): its VM's processes are killed as the VM is dropped (after
/// this), and its mounts and state directory are removed here.
impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        tracing::warn!(sandbox = %self.id, "sandbox dropped without teardown: cleaning up");
        if let Some(netns) = self.network.netns.take() {
            log_teardown(&self.id, &netns, network::teardown_blocking(&netns));
        }
        if let Err(e) = self.dir.remove() {
            tracing::error!(sandbox = %self.id, error = %e, "state directory not removed");
        }
    }
}

/// The pod network's host side: the endpoints in `net.netns` (made for the
/// configured model) and the VM's NICs on them. On an error nothing of it
/// is left.
async fn host_network(
    config: &Config,
    id: &str,
    net: &PodNetwork,
) -> Result<(Vec<Endpoint>, Vec<capsa_hypervisor::NetDevice>), Error> {
    let Some(netns) = &net.netns else {
        return Ok((Vec::new(), Vec::new()));
    };
    let endpoints = network::setup(netns, vm::network_model(config)).await?;
    let vhost = !config.hypervisor.qemu.disable_vhost_net;
    let nics = endpoints
        .iter()
        .enumerate()
        .map(|(n, e)| vm::nic_device(n, e, vhost))
        .collect::<Result<Vec<_>, _>>();
    match nics {
        Ok(nics) => {
            for e in &endpoints {
                tracing::info!(sandbox = %id, link = %e.name, mac = %e.mac, tap = %e.tap, "pod network endpoint");
            }
            Ok((endpoints, nics))
        }
        Err(e) => {
            log_teardown(id, netns, network::teardown(netns).await);
            Err(e)
        }
    }
}

fn log_teardown(id: &str, netns: &Path, result: Result<Vec<String>, network::NetworkError>) {
    match result {
        Ok(taps) => {
            tracing::debug!(sandbox = %id, netns = %netns.display(), ?taps, "pod network taken down")
        }
        Err(e) => tracing::warn!(
            sandbox = %id,
            netns = %netns.display(),
            error = %crate::error_chain(&e),
            "pod network not taken down"
        ),
    }
}

/// The state directory and pod network of a sandbox being started, before
/// the [`Sandbox`] (whose teardown and `Drop` take over) exists.
struct EarlyStart {
    dir: Option<StateDir>,
    netns: Option<PathBuf>,
}

impl EarlyStart {
    fn disarm(&mut self) -> StateDir {
        self.netns = None;
        self.dir.take().expect("disarmed once")
    }
}

impl Drop for EarlyStart {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let id = dir.id();
        if let Some(netns) = &self.netns {
            log_teardown(&id, netns, network::teardown_blocking(netns));
        }
        if let Err(e) = dir.remove() {
            tracing::error!(sandbox = %id, error = %e, "state directory not removed");
        }
    }
}

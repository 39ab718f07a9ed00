//! The User-Mode Linux driver: the guest kernel is a host process
//! (`linux-uml`, built from `kernel/um/`), its devices are vhost-user
//! daemons reached through `virtio_uml`, and every one of these programs
//! runs in a [`crate::jail`] as the pod's unprivileged uid.
//!
//! * [`cmdline`]: the kernel's command line;
//! * [`jail`]: what each program's jail holds;
//! * [`devices`]: virtio-fs and vsock helpers, and what cannot be attached;
//! * [`mconsole`]: the management console, through which the VM is halted;
//! * [`net`]: the pod's NICs, UML's vector driver on taps the kernel inherits.
//!
//! The guest's RAM is UML's memory file, in a tmpfs of the kernel's jail;
//! the vhost-user daemons map it through the descriptors `virtio_uml`
//! sends them, the only way they can reach it. UML 6.12 has one CPU and
//! no memory hot-plug: a VM asked for more vCPUs boots with one (said
//! once, in the log), and vCPU and memory hot-plug answer
//! [`Error::NotSupported`], as does NIC hot-plug (NICs are cold-plugged:
//! [`net`]). Disks are UML's `ubd`, hot-plugged through the management
//! console ([`block`]).

pub mod block;
pub mod cmdline;
pub mod devices;
pub mod jail;
pub mod mconsole;
pub mod net;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use capsa_config::{HypervisorConfig, Invalid, SharedFs, UmlSettings, VmSettings};
use tokio::time::{sleep, timeout, Instant};

use self::jail::Jailed;
use self::mconsole::Mconsole;
use crate::accel::Accelerator;
use crate::jail::Identity;
use crate::{
    AgentEndpoint, AttachedBlock, BlockDevice, BlockHotplug, Driver, DriverSettings, Error,
    GuestAddress, HostCheck, NetworkHotplug, ResourceHotplug, Vm, VmConfig, VmProcess,
    VmProcessRole,
};

/// Longest wait for a helper's socket or the management console.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a killed program to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Bound of one management console command.
const MCONSOLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pod's socket directory, in the run directory.
const SOCKETS_DIR: &str = "uml";
/// Our end of the management console, in the socket directory.
const MCONSOLE_CLIENT: &str = "mconsole-client.sock";
/// Logs in the run directory.
const VIRTIOFSD_LOG: &str = "virtiofsd.log";
const VSOCK_LOG: &str = "vhost-device-vsock.log";
/// `sun_path` holds 108 bytes, the last one NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The User-Mode Linux driver.
pub struct Uml;

/// The jail's identity of `own`.
fn identity(own: &UmlSettings) -> Identity {
    Identity {
        uid: own.jail_uid,
        gid: own.jail_gid,
    }
}

impl Driver for Uml {
    const NAME: &'static str = "User-Mode Linux";
    type Settings = UmlSettings;

    /// UML's constraints. One vCPU and no hot-plug are not among them:
    /// a VM asked for more boots with what UML has, and says so.
    fn validate(config: &HypervisorConfig, own: &UmlSettings) -> Result<(), Invalid> {
        let bad = |key: &str, reason: &str| Err(Invalid::new(config.key(key), reason));
        for (key, id) in [("jail_uid", own.jail_uid), ("jail_gid", own.jail_gid)] {
            if id == 0 {
                return bad(key, "must not be 0 (root on the host)");
            }
        }
        if config.vm.root_image().is_some() {
            return bad(
                "image",
                "User-Mode Linux boots the agent's initrd; a root image is not supported yet",
            );
        }
        Ok(())
    }

    fn check_host(vm: &VmSettings, own: &UmlSettings) -> Vec<HostCheck> {
        let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|n| n.trim().parse::<u64>().ok());
        let mut lines = vec![
            HostCheck::info(
                "accelerator",
                "none needed: the UML kernel is a host process, the guest's code runs natively",
            ),
            HostCheck {
                what: "user namespaces".into(),
                detail: match userns {
                    Some(n) if n > 0 => format!("available (max_user_namespaces {n})"),
                    _ => "not available (/proc/sys/user/max_user_namespaces): the jails need them"
                        .into(),
                },
                missing: !matches!(userns, Some(n) if n > 0),
            },
            HostCheck::info(
                "jail identity",
                format!("uid {}, gid {}", own.jail_uid, own.jail_gid),
            ),
            HostCheck::info(
                "vCPUs, hot-plug",
                "1 vCPU; disks hot-plugged as ubd; no CPU, memory or NIC hot-plug (NICs at boot)",
            ),
            HostCheck::file("UML kernel", &vm.kernel),
            HostCheck::file("initrd", &vm.initrd),
        ];
        if vm.shared_fs == SharedFs::VirtioFs {
            lines.push(HostCheck::file("virtiofsd", &vm.virtio_fs_daemon));
        }
        lines.push(HostCheck::file(
            "vsock daemon",
            &own.vhost_user_vsock_daemon,
        ));
        lines
    }

    fn create(cfg: VmConfig) -> Box<dyn Vm> {
        Box::new(UmlVm::new(cfg))
    }
}

/// A User-Mode Linux VM with its helpers.
pub struct UmlVm {
    cfg: VmConfig,
    kernel: Option<Jailed>,
    virtiofsd: Option<Jailed>,
    vsock: Option<Jailed>,
    mconsole: Option<Mconsole>,
    /// The write end of the console's input pipe: held, never written.
    console_input: Option<std::os::fd::OwnedFd>,
    /// How the kernel process ended, once reaped.
    exit: Option<ExitStatus>,
    /// Files and directories this driver created in `run_dir`.
    created: Vec<PathBuf>,
    disks: block::Disks,
}

impl UmlVm {
    pub fn new(cfg: VmConfig) -> Self {
        Self {
            cfg,
            kernel: None,
            virtiofsd: None,
            vsock: None,
            mconsole: None,
            console_input: None,
            exit: None,
            created: Vec::new(),
            disks: block::Disks::default(),
        }
    }

    fn settings(&self) -> &UmlSettings {
        match &self.cfg.driver {
            DriverSettings::Uml(u) => u,
            DriverSettings::Qemu(_) => unreachable!("UmlVm is only made by create() for Uml"),
        }
    }

    fn identity(&self) -> Identity {
        identity(self.settings())
    }

    /// `<run_dir>/uml`: the sockets every jail shares.
    pub fn sockets_dir(&self) -> PathBuf {
        self.cfg.run_dir.join(SOCKETS_DIR)
    }

    /// How the kernel process ended (known once [`Vm::wait_exit`] saw it).
    #[cfg(feature = "internals")]
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    fn check(&self) -> Result<(), Error> {
        let cfg = &self.cfg;
        if cfg.image.is_some() {
            return Err(devices::not_supported("a root filesystem image"));
        }
        net::check(&cfg.nics)?;
        let mut files = vec![
            ("UML kernel", &cfg.kernel),
            ("vsock daemon", &self.settings().vhost_user_vsock_daemon),
        ];
        if let Some(initrd) = &cfg.initrd {
            files.push(("initrd", initrd));
        }
        if let Some(fs) = &cfg.shared_fs {
            files.push(("virtio-fs daemon", &fs.daemon));
        }
        if let Some((what, path)) = files.into_iter().find(|(_, p)| !p.is_file()) {
            return Err(Error::MissingFile {
                what,
                path: path.clone(),
            });
        }
        // The UML kernel is a program (a bzImage is not): say so before
        // the jail's exec fails with a bare ENOEXEC or EACCES.
        let mode = std::fs::metadata(&cfg.kernel)?.permissions().mode();
        if mode & 0o111 == 0 {
            return Err(Error::Config(format!(
                "kernel {} is not executable: the User-Mode Linux driver runs a UML kernel \
                 (linux-uml), not a bootable image",
                cfg.kernel.display()
            )));
        }
        check_run_dir(&cfg.run_dir)
    }

    /// Says once what UML cannot give this VM; never fails for it. A VM
    /// asked for more vCPUs than one boots with one (a warning); that it
    /// is never resized is said by its owner, which is answered
    /// `NotSupported` by [`Vm::resources`].
    fn log_sizing(&self) {
        let cfg = &self.cfg;
        if cfg.vcpus > 1 {
            tracing::warn!(
                vm = %cfg.id,
                vcpus = cfg.vcpus,
                memory_mib = cfg.memory_mib,
                "User-Mode Linux has one CPU and no CPU or memory hot-plug: \
                 the VM runs with 1 vCPU and its boot memory"
            );
        }
    }

    /// The socket directory, new, owned by the jail's uid; the run
    /// directory searchable by it (its owner gives it to the jail's
    /// group, [`Vm::host_identity`]; else others get search permission).
    fn make_sockets_dir(&mut self) -> Result<PathBuf, Error> {
        let id = self.identity();
        let run_dir = self.cfg.run_dir.clone();
        if jail::check_searchable(&run_dir, id, "run directory").is_err() {
            let perms = std::fs::metadata(&run_dir)?.permissions();
            // Search only: the names in it stay unlisted.
            std::fs::set_permissions(
                &run_dir,
                std::fs::Permissions::from_mode(perms.mode() | 0o001),
            )?;
        }
        jail::check_searchable(&run_dir, id, "run directory")?;
        let dir = self.sockets_dir();
        remove_all(&dir);
        std::fs::create_dir(&dir)?;
        self.created.push(dir.clone());
        std::os::unix::fs::chown(&dir, Some(id.uid), Some(id.gid))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    /// A log file in the run directory, removed on shutdown.
    fn log(&mut self, name: &str) -> PathBuf {
        let p = self.cfg.run_dir.join(name);
        self.created.push(p.clone());
        p
    }

    async fn start_inner(&mut self) -> Result<(), Error> {
        self.check()?;
        self.log_sizing();
        let id = self.identity();
        let sockets = self.make_sockets_dir()?;

        let log = self.log(VSOCK_LOG);
        let daemon = self.settings().vhost_user_vsock_daemon.clone();
        let memory = self.cfg.memory_mib;
        let spawned =
            devices::vhost_device_vsock(&daemon, self.cfg.guest_cid, id, memory, &sockets, &log)?;
        self.vsock = Some(spawned);
        let vsock_sock = sockets.join(devices::VHOST_VSOCK_SOCKET);
        // Both helpers start at once; the kernel once both listen.
        let virtiofs = match self.cfg.shared_fs.clone() {
            None => None,
            Some(fs) => {
                jail::check_searchable(&fs.shared_dir, id, "shared directory")?;
                let log = self.log(VIRTIOFSD_LOG);
                self.virtiofsd = Some(devices::virtiofsd(&fs, id, memory, &sockets, &log)?);
                Some(sockets.join(devices::VIRTIOFSD_SOCKET))
            }
        };
        if let Some(vsock) = self.vsock.as_mut() {
            vsock.wait_for_socket(&vsock_sock, SOCKET_TIMEOUT).await?;
        }
        if let (Some(helper), Some(sock)) = (self.virtiofsd.as_mut(), &virtiofs) {
            helper.wait_for_socket(sock, SOCKET_TIMEOUT).await?;
        }

        // The configuration's parameters come last: an `lpj=` of its own wins.
        let extra: Vec<String> = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| cmdline::preset_lpj(&c))
            .into_iter()
            .chain(self.cfg.kernel_params.iter().cloned())
            .collect();
        // The taps are opened last, just before the kernel inherits them.
        let nics = net::cold_plug(&self.cfg.nics)?;
        let args = cmdline::build(&cmdline::Boot {
            memory_mib: self.cfg.memory_mib,
            initrd: self.cfg.initrd.as_ref().map(|_| Path::new(jail::INITRD)),
            uml_dir: &sockets,
            virtiofs: virtiofs.as_deref(),
            vsock: &vsock_sock,
            nics: &nics.args,
            extra: &extra,
        });
        let disks = self.disks.make_dir(&self.cfg.run_dir)?;
        let mut jail_cfg = jail::kernel(
            &self.cfg.kernel,
            self.cfg.initrd.as_deref(),
            self.cfg.memory_mib,
            id,
            &sockets,
            &disks,
            args,
        )?;
        jail_cfg.fds.extend(nics.fds);
        let console = self.cfg.console_log.clone();
        let (input, held) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Io(e.into()))?;
        self.console_input = Some(held);
        let kernel = self
            .kernel
            .insert(jail::spawn(jail_cfg, &console, true, Some(input))?);
        let console_sock = sockets.join(cmdline::UMID).join("mconsole");
        kernel
            .wait_for_socket(&console_sock, SOCKET_TIMEOUT)
            .await
            .map_err(|e| match e {
                Error::HelperExited { status, log, .. } => Error::HelperExited {
                    program: "UML kernel".into(),
                    status,
                    log,
                },
                other => other,
            })?;
        self.mconsole = Some(Mconsole::open(
            &console_sock,
            &sockets.join(MCONSOLE_CLIENT),
            id.uid,
            id.gid,
        )?);
        tracing::info!(vm = %self.cfg.id, pid = ?self.pid(), "UML started");
        Ok(())
    }

    /// Asks the kernel to halt through its management console (the
    /// guest's processes are killed, its disks synced, the process
    /// exits 0), within `limit`.
    async fn halt(&mut self, limit: Duration) -> Result<(), Error> {
        let Some(console) = &self.mconsole else {
            return Err(Error::Config("no management console".into()));
        };
        let reply = console.command("halt", limit).await?;
        if reply.error {
            return Err(Error::Config(format!("mconsole halt: {}", reply.text)));
        }
        Ok(())
    }

    /// Kills and reaps a jailed program (bounded).
    async fn kill(j: &mut Jailed) -> Option<ExitStatus> {
        if let Err(e) = j.process.kill() {
            tracing::warn!(name = j.process.name(), error = %e, "SIGKILL");
        }
        match timeout(KILL_WAIT, j.process.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                tracing::warn!(name = j.process.name(), "not reaped after SIGKILL");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl Vm for UmlVm {
    fn name(&self) -> &'static str {
        Uml::NAME
    }

    async fn start(&mut self) -> Result<(), Error> {
        let result = self.start_inner().await;
        if let Err(e) = &result {
            tracing::debug!(vm = %self.cfg.id, error = %e, "start failed: cleaning up");
            if let Err(e) = self.shutdown(Duration::ZERO).await {
                tracing::warn!(vm = %self.cfg.id, error = %e, "cleanup after failed start");
            }
        }
        result
    }

    /// None: UML needs no accelerator; the guest's code runs natively.
    fn accelerator(&self) -> Option<Accelerator> {
        None
    }

    fn pid(&self) -> Option<u32> {
        self.kernel.as_ref().map(|k| k.process.pid())
    }

    fn processes(&self) -> Vec<VmProcess> {
        [
            (&self.kernel, VmProcessRole::Hypervisor),
            (&self.virtiofsd, VmProcessRole::SharedFs),
            (&self.vsock, VmProcessRole::Vsock),
        ]
        .into_iter()
        .filter_map(|(j, role)| VmProcess::of(j.as_ref()?.process.pid(), role))
        .collect()
    }

    fn host_identity(&self) -> Option<Identity> {
        Some(self.identity())
    }

    /// The guest may be dialled once its management console answers
    /// (`version`): the console starts with the kernel's device
    /// initcalls, `virtio_uml`'s among them. Reading PID 1's name through
    /// the console's `proc` command (a firmer sign that init runs) fails
    /// with "Read of file failed" on this kernel.
    async fn wait_guest_ready(&mut self, limit: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.wait_exit(Duration::ZERO).await? {
                return Ok(false);
            }
            let Some(console) = &self.mconsole else {
                return Ok(false);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match console.command("version", left.min(MCONSOLE_TIMEOUT)).await {
                Ok(reply) if !reply.error => return Ok(true),
                Ok(_) | Err(_) => sleep(Duration::from_millis(20)).await,
            }
        }
        Ok(false)
    }

    fn agent_endpoint(&self, port: u32) -> AgentEndpoint {
        AgentEndpoint::HybridVsock {
            path: self.sockets_dir().join(devices::HYBRID_VSOCK_SOCKET),
            port,
        }
    }

    async fn wait_exit(&mut self, limit: Duration) -> Result<bool, Error> {
        if self.exit.is_some() {
            return Ok(true);
        }
        let Some(kernel) = self.kernel.as_mut() else {
            return Ok(true);
        };
        let status = if limit.is_zero() {
            kernel.process.try_wait()?
        } else {
            match timeout(limit, kernel.process.wait()).await {
                Ok(status) => Some(status?),
                Err(_) => None,
            }
        };
        if let Some(status) = status {
            tracing::debug!(vm = %self.cfg.id, %status, "UML exited");
            self.exit = Some(status);
        }
        Ok(status.is_some())
    }

    async fn shutdown(&mut self, grace: Duration) -> Result<(), Error> {
        if self.kernel.is_some() && self.exit.is_none() && !grace.is_zero() {
            // The guest powers itself off when its agent is told to; one
            // still running is halted through the management console,
            // within `grace`, then killed.
            let deadline = Instant::now() + grace;
            match self.halt(grace).await {
                Ok(()) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !self.wait_exit(left).await? {
                        tracing::debug!(vm = %self.cfg.id, ?grace, "UML did not halt");
                    }
                }
                Err(e) => tracing::debug!(vm = %self.cfg.id, error = %e, "mconsole halt failed"),
            }
        }
        self.mconsole = None;
        self.console_input = None;
        if let Some(mut kernel) = self.kernel.take() {
            if self.exit.is_none() {
                self.exit = Self::kill(&mut kernel).await;
            }
        }
        // virtiofsd ends with its VM, vhost-device-vsock does not: as PID 1
        // of their namespaces they would ignore SIGTERM, and they keep
        // nothing to flush.
        for helper in [self.virtiofsd.take(), self.vsock.take()]
            .into_iter()
            .flatten()
        {
            let mut helper = helper;
            Self::kill(&mut helper).await;
        }
        self.disks.clear();
        for path in self.created.drain(..) {
            remove_all(&path);
        }
        Ok(())
    }

    fn block(&mut self) -> Result<&mut dyn BlockHotplug, Error> {
        Ok(self)
    }

    /// NICs are cold-plugged only ([`net`]: no descriptor can reach the
    /// running kernel).
    fn network(&mut self) -> Result<&mut dyn NetworkHotplug, Error> {
        Err(devices::not_supported("NIC hot-plug"))
    }

    fn resources(&mut self) -> Result<&mut dyn ResourceHotplug, Error> {
        Err(devices::not_supported(
            "vCPU and memory hot-plug (UML has one CPU and fixed memory)",
        ))
    }
}

#[async_trait::async_trait]
impl BlockHotplug for UmlVm {
    async fn attach_block(&mut self, device: &BlockDevice) -> Result<GuestAddress, Error> {
        let id = self.identity();
        let limit = self.cfg.hotplug_timeout;
        let console = self
            .mconsole
            .as_ref()
            .ok_or_else(|| Error::Config("no management console: the VM is not running".into()))?;
        let address = self.disks.attach(console, id, device, limit).await?;
        tracing::info!(vm = %self.cfg.id, drive = %device.id, %address, "ubd disk plugged");
        Ok(address)
    }

    async fn detach_block(&mut self, id: &str) -> Result<(), Error> {
        let limit = self.cfg.hotplug_timeout;
        let console = self
            .mconsole
            .as_ref()
            .ok_or_else(|| Error::Config("no management console: the VM is not running".into()))?;
        self.disks.detach(console, id, limit).await
    }

    fn attached_blocks(&self) -> Vec<AttachedBlock> {
        self.disks.attached()
    }
}

/// The run directory must give socket paths that fit in `sun_path`, and
/// no comma: vhost-device-vsock's `--vm` and UML's `virtio_uml.device=`
/// take comma- and colon-separated values without an escape.
fn check_run_dir(dir: &Path) -> Result<(), Error> {
    let longest = dir
        .join(SOCKETS_DIR)
        .join(devices::VHOST_VSOCK_SOCKET)
        .as_os_str()
        .len()
        .max(
            dir.join(SOCKETS_DIR)
                .join(MCONSOLE_CLIENT)
                .as_os_str()
                .len(),
        );
    if longest > MAX_SOCKET_PATH {
        return Err(Error::RunDir {
            path: dir.into(),
            reason: format!(
                "its socket paths are up to {longest} bytes, more than the {MAX_SOCKET_PATH} a Unix socket path can hold: choose a shorter state_dir"
            ),
        });
    }
    let text = dir.to_string_lossy();
    if text.contains(',') || text.contains(':') {
        return Err(Error::RunDir {
            path: dir.into(),
            reason: "it contains ',' or ':', which helper and kernel command lines cannot carry"
                .into(),
        });
    }
    Ok(())
}

fn remove_all(path: &Path) {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "not removed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uml_keys_are_checked_and_sizing_never_fails() {
        let parse = |text: &str| crate::parse_config(text, Path::new("/u.toml"));
        // More vCPUs or memory maxima than UML has: accepted (logged at start).
        // Block device use: disks are ubd.
        let ok = "[hypervisor.uml]\ndefault_vcpus = 4\ndefault_maxvcpus = 8\n\
                  default_maxmemory = 4096\ndisable_block_device_use = false\n";
        parse(ok).unwrap();
        for (text, key) in [
            ("jail_uid = 0\n", "hypervisor.uml.jail_uid"),
            ("jail_gid = 0\n", "hypervisor.uml.jail_gid"),
            (
                "initrd = \"\"\nimage = \"/i.img\"\n",
                "hypervisor.uml.image",
            ),
            ("machine_type = \"q35\"\n", "machine_type"),
        ] {
            let err = parse(&format!("[hypervisor.uml]\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let config = parse("[hypervisor.uml]\nkernel = \"/nonexistent/linux-uml\"\n").unwrap();
        let lines = crate::check_host(&config.hypervisor);
        assert_eq!(lines[0].what, "driver");
        assert_eq!(lines[0].detail, "User-Mode Linux ([hypervisor.uml])");
        let kernel = lines.iter().find(|l| l.what == "UML kernel").unwrap();
        assert!(kernel.missing, "{kernel:?}");
    }

    #[test]
    fn run_dirs_must_fit_socket_paths_and_command_lines() {
        assert!(check_run_dir(Path::new("/run/capsa/0123456789abcdef")).is_ok());
        let long = format!("/tmp/{}", "d".repeat(85));
        let err = check_run_dir(Path::new(&long)).unwrap_err().to_string();
        assert!(err.contains("shorter state_dir"), "{err}");
        for bad in ["/run/a,b", "/run/a:b"] {
            let err = check_run_dir(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains("','"), "{err}");
        }
    }
}

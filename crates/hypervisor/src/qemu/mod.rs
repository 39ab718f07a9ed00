//! The QEMU driver.

pub mod block;
mod cmdline;
pub mod debug;
pub use cmdline::FAST_BOOT_PARAMS;
pub mod net;
pub mod qmp;
pub mod resize;
pub mod session;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{timeout, Instant};
use tracing::Instrument;

use capsa_config::{HypervisorConfig, Invalid, MachineType, QemuSettings, SharedFs, VmSettings};

use self::session::QmpSession;
use crate::accel::{self, Accelerator};
use crate::process::Helper;
use crate::{
    AgentEndpoint, BlockHotplug, Driver, DriverSettings, Error, HostCheck, NetworkHotplug,
    ResourceHotplug, Vm, VmConfig, VmProcess, VmProcessRole,
};

/// A step of the start-up timeline (capsa-runtime's `timeline` module
/// records the spans of this target).
macro_rules! step {
    ($name:literal) => {
        ::tracing::info_span!(target: "capsa::timeline", $name)
    };
}

/// Longest wait for a helper's or QEMU's socket to appear.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// QOM path of the vsock device's virtio backend (`-device ...,id=vsock0`).
const VSOCK_QOM_PATH: &str = "/machine/peripheral/vsock0/virtio-backend";
/// Longest wait for a helper to exit after SIGTERM.
const HELPER_GRACE: Duration = Duration::from_secs(2);
/// Bound of the driver's own QMP commands (hot-plug has its own timeout).
const QMP_TIMEOUT: Duration = qmp::QMP_TIMEOUT;
/// How long QEMU gets to be reaped once its QMP session closed under a
/// query: the socket closes as the process exits.
const EXIT_AFTER_QMP_LOSS: Duration = Duration::from_secs(2);
/// The second QMP monitor, for tools and tests in other processes (QEMU
/// serves one client per monitor, and the driver keeps the first).
pub const QMP_DEBUG_SOCKET: &str = "qmp-debug.sock";

/// The QEMU driver.
pub struct Qemu;

impl Driver for Qemu {
    const NAME: &'static str = "QEMU";
    type Settings = QemuSettings;

    fn validate(config: &HypervisorConfig, q: &QemuSettings) -> Result<(), Invalid> {
        let bad = |key: &str, reason: String| Err(Invalid::new(config.key(key), reason));
        let image = config.vm.root_image().is_some();
        // The root-bus slots left for root ports by the fixed q35 layout.
        let tail = cmdline::TailDevices {
            virtio_mem: q.enable_virtio_mem,
            balloon: q.reclaim_guest_freed_memory,
            image_disk: image && q.disable_image_nvdimm,
        };
        let most = tail.max_root_ports();
        if q.pcie_root_port > most {
            let takers = tail.keys();
            let with = if takers.is_empty() {
                String::new()
            } else {
                format!(
                    " (with {}, whose devices take root-port slots)",
                    takers.join(" and ")
                )
            };
            return bad(
                "pcie_root_port",
                format!("{} is more than {most}{with}", q.pcie_root_port),
            );
        }
        // QEMU refuses a translation cache bigger than 2 GiB on x86_64 hosts.
        if q.tcg_tb_size > 2048 {
            return bad(
                "tcg_tb_size",
                format!(
                    "{} MiB is more than 2048 MiB (0 keeps QEMU's default)",
                    q.tcg_tb_size
                ),
            );
        }
        // QEMU's ACPI memory hot-plug has 256 slots.
        if q.memory_slots > 256 {
            return bad(
                "memory_slots",
                format!("{} is more than 256", q.memory_slots),
            );
        }
        let q35 = cmdline::has_root_ports(q.machine_type);
        if q.enable_virtio_mem && !q35 {
            return bad(
                "enable_virtio_mem",
                format!("needs machine_type = \"q35\" (not \"{}\")", q.machine_type),
            );
        }
        if image && !q.disable_image_nvdimm && !q35 {
            return bad(
                "image",
                format!(
                    "an NVDIMM image needs machine_type = \"q35\" (not \"{}\"); \
                     or set disable_image_nvdimm = true",
                    q.machine_type
                ),
            );
        }
        Ok(())
    }

    fn check_host(vm: &VmSettings, q: &QemuSettings) -> Vec<HostCheck> {
        let host = accel::detect();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut lines = vec![match accel::resolve(q.accelerator, &host) {
            Ok((a, why)) => HostCheck::info("accelerator", format!("{a} ({why})")),
            Err(e) => HostCheck {
                what: "accelerator".into(),
                detail: e.to_string(),
                missing: true,
            },
        }];
        lines.push(HostCheck::info(
            "/dev/kvm",
            format!(
                "present: {}, usable: {}",
                yes_no(host.kvm_device),
                yes_no(host.kvm_usable)
            ),
        ));
        lines.push(HostCheck::info(
            "vmx/svm",
            yes_no(host.hardware_virtualization),
        ));
        lines.push(HostCheck::info(
            "vsock",
            if host.vhost_vsock {
                "kernel vhost-vsock (/dev/vhost-vsock)".to_string()
            } else {
                format!(
                    "vhost-user-vsock via {}",
                    q.vhost_user_vsock_daemon.display()
                )
            },
        ));
        lines.push(HostCheck::file("qemu", &q.path));
        lines.push(HostCheck::file("kernel", &vm.kernel));
        // One of them (the configuration's validation says so).
        match vm.root_image() {
            None => lines.push(HostCheck::file("initrd", &vm.initrd)),
            Some(image) => lines.push(HostCheck::file("image", image)),
        }
        if vm.shared_fs == SharedFs::VirtioFs {
            lines.push(HostCheck::file("virtiofsd", &vm.virtio_fs_daemon));
        }
        if !host.vhost_vsock {
            lines.push(HostCheck::file("vsock daemon", &q.vhost_user_vsock_daemon));
        }
        lines
    }

    fn create(cfg: VmConfig) -> Box<dyn Vm> {
        Box::new(QemuVm::new(cfg))
    }
}

/// QEMU's settings of `cfg` (the factory gives this driver only VMs
/// whose settings are QEMU's).
pub(crate) fn settings(cfg: &VmConfig) -> &QemuSettings {
    match &cfg.driver {
        DriverSettings::Qemu(q) => q,
        DriverSettings::Uml(_) => unreachable!("QemuVm is only made by create() for Qemu"),
    }
}

#[cfg(test)]
pub(crate) fn qemu_mut(cfg: &mut VmConfig) -> &mut QemuSettings {
    match &mut cfg.driver {
        DriverSettings::Qemu(q) => q,
        DriverSettings::Uml(_) => unreachable!("a QEMU test configuration"),
    }
}

/// The root image of `cfg`, when it is an NVDIMM (the default).
pub(crate) fn nvdimm_image(cfg: &VmConfig) -> Option<&Path> {
    cfg.image
        .as_deref()
        .filter(|_| !settings(cfg).disable_image_nvdimm)
}

/// The root image of `cfg`, when it is a virtio-blk disk.
pub(crate) fn disk_image(cfg: &VmConfig) -> Option<&Path> {
    cfg.image
        .as_deref()
        .filter(|_| settings(cfg).disable_image_nvdimm)
}

/// A QEMU VM with its helpers.
pub struct QemuVm {
    cfg: VmConfig,
    accel: Option<Accelerator>,
    qemu: Option<Helper>,
    virtiofsd: Option<Helper>,
    vsock: Option<Helper>,
    /// The QMP session, from QEMU's first answer to shutdown.
    qmp: Option<QmpSession>,
    /// Drives attached ([`block`]) and the counter naming their nodes.
    drives: Vec<block::Drive>,
    next_node: u64,
    /// NICs attached, cold-plugged ones first ([`net`]).
    nics: Vec<net::Nic>,
    /// The room for vCPU and memory hot-plug and what was added ([`resize`]).
    plugged: resize::Plugged,
    /// Files this driver created in `run_dir`, removed on shutdown.
    created: Vec<PathBuf>,
    kernel_vsock: bool,
}

impl QemuVm {
    pub fn new(cfg: VmConfig) -> Self {
        Self {
            cfg,
            accel: None,
            qemu: None,
            virtiofsd: None,
            vsock: None,
            qmp: None,
            drives: Vec::new(),
            next_node: 0,
            nics: Vec::new(),
            plugged: resize::Plugged::default(),
            created: Vec::new(),
            kernel_vsock: false,
        }
    }

    /// Claims the file `name` in `run_dir`: removes a stale one (a socket
    /// left by a killed run would look ready before its helper listens) and
    /// remembers it for removal on shutdown.
    fn path(&mut self, name: &str) -> PathBuf {
        let p = self.cfg.run_dir.join(name);
        remove_file(&p);
        self.created.push(p.clone());
        p
    }

    fn settings(&self) -> &QemuSettings {
        settings(&self.cfg)
    }

    fn machine(&self) -> MachineType {
        self.settings().machine_type
    }

    fn check_files(&self) -> Result<(), Error> {
        let mut files = vec![
            ("hypervisor", &self.settings().path),
            ("kernel", &self.cfg.kernel),
        ];
        if let Some(initrd) = &self.cfg.initrd {
            files.push(("initrd", initrd));
        }
        if let Some(image) = &self.cfg.image {
            files.push(("root image", image));
        }
        if let Some(fs) = &self.cfg.shared_fs {
            files.push(("virtio-fs daemon", &fs.daemon));
        }
        if !self.kernel_vsock {
            files.push(("vsock daemon", &self.settings().vhost_user_vsock_daemon));
        }
        match files.into_iter().find(|(_, p)| !p.is_file()) {
            Some((what, path)) => Err(Error::MissingFile {
                what,
                path: path.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn start_inner(&mut self) -> Result<(), Error> {
        let host = accel::detect();
        self.kernel_vsock = host.vhost_vsock;
        check_run_dir(&self.cfg.run_dir)?;
        self.check_files()?;
        let ports = self.settings().pcie_root_port;
        let virtio_mem = self.settings().enable_virtio_mem;
        let tail = cmdline::TailDevices::of(&self.cfg, virtio_mem);
        let most = tail.max_root_ports();
        if ports > most {
            let with = tail.describe();
            return Err(Error::Config(format!(
                "pcie_root_port = {ports}: at most {most} fit the q35 root bus{with}"
            )));
        }
        if virtio_mem && !cmdline::has_root_ports(self.machine()) {
            return Err(Error::NotSupported {
                hypervisor: format!("QEMU ({})", self.machine()),
                capability: "virtio-mem",
            });
        }
        let mut sizing = resize::Sizing::for_host(&self.cfg);
        if let Some(image) = nvdimm_image(&self.cfg) {
            if !cmdline::has_root_ports(self.machine()) {
                return Err(Error::NotSupported {
                    hypervisor: format!("QEMU ({})", self.machine()),
                    capability: "a root image on an NVDIMM",
                });
            }
            sizing.image_mib = image_mib(image)?;
        }
        tracing::debug!(vm = %self.cfg.id, ?sizing, "room for hot-plug");
        self.plugged = resize::Plugged::new(sizing);
        if !self.cfg.nics.is_empty() && !cmdline::has_root_ports(self.machine()) {
            return Err(Error::NotSupported {
                hypervisor: format!("QEMU ({})", self.machine()),
                capability: "NICs",
            });
        }
        let (accel, why) = accel::resolve(self.settings().accelerator, &host)?;
        tracing::info!(vm = %self.cfg.id, accelerator = %accel, reason = %why, "accelerator chosen");
        self.accel = Some(accel);

        let vhost_user_vsock = if self.kernel_vsock {
            None
        } else {
            let sock = self.path("vhost-vsock.sock");
            let uds = self.path("vsock.sock");
            let log = self.path("vhost-device-vsock.log");
            let arg = format!(
                "guest-cid={},socket={},uds-path={}",
                self.cfg.guest_cid,
                sock.display(),
                uds.display()
            );
            let daemon = self.settings().vhost_user_vsock_daemon.clone();
            let step = step!("vhost-device-vsock");
            let mut helper = step.in_scope(|| {
                Helper::spawn("vhost-device-vsock", &daemon, &["--vm".into(), arg], log)
            })?;
            let ready = helper
                .wait_for_socket(&sock, SOCKET_TIMEOUT)
                .instrument(step)
                .await;
            self.vsock = Some(helper);
            ready?;
            Some(sock)
        };

        let virtiofs = match self.cfg.shared_fs.clone() {
            None => None,
            Some(fs) => {
                let sock = self.path("virtiofsd.sock");
                // virtiofsd's lock file next to its socket.
                self.path("virtiofsd.sock.pid");
                let log = self.path("virtiofsd.log");
                let mut args = vec![
                    format!("--socket-path={}", sock.display()),
                    format!("--shared-dir={}", fs.shared_dir.display()),
                    format!("--cache={}", fs.cache.as_str()),
                    crate::virtiofsd::MODCAPS.to_string(),
                ];
                args.extend(fs.extra_args.iter().cloned());
                let step = step!("virtiofsd");
                let filters = crate::virtiofsd::filters()?;
                let mut helper = step.in_scope(|| {
                    Helper::spawn_filtered("virtiofsd", &fs.daemon, &args, log, filters)
                })?;
                let ready = helper
                    .wait_for_socket(&sock, SOCKET_TIMEOUT)
                    .instrument(step)
                    .await;
                self.virtiofsd = Some(helper);
                ready?;
                Some(sock)
            }
        };

        let qmp = self.path("qmp.sock");
        let qmp_debug =
            cmdline::has_debug_monitor(self.machine()).then(|| self.path(QMP_DEBUG_SOCKET));
        let log = self.path("qemu.log");
        // Open until QEMU has inherited them, then closed here.
        let (nic_args, nic_fds) = self.cold_nics()?;
        let mut args = cmdline::build(
            &self.cfg,
            accel,
            &sizing,
            &cmdline::Sockets {
                qmp: &qmp,
                qmp_debug: qmp_debug.as_deref(),
                virtiofs: virtiofs.as_deref(),
                vhost_user_vsock: vhost_user_vsock.as_deref(),
            },
        );
        args.extend(nic_args);
        let program = self.settings().path.clone();
        let step = step!("qemu (until QMP answers)");
        let spawned =
            step.in_scope(|| Helper::spawn_with_fds("qemu", &program, &args, log, &nic_fds))?;
        let qemu = self.qemu.insert(spawned);
        drop(nic_fds);
        let session = wait_qemu_ready(qemu, &qmp, SOCKET_TIMEOUT)
            .instrument(step)
            .await?;
        self.qmp = Some(session);
        // Root only, as the run directory: QEMU makes sockets with its umask.
        for sock in [Some(&qmp), qmp_debug.as_ref()].into_iter().flatten() {
            std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))?;
        }
        tracing::info!(vm = %self.cfg.id, pid = ?self.pid(), "QEMU started");
        Ok(())
    }
}

/// Opens the QMP session once QEMU answers `query-status`. The QMP socket
/// alone proves little: QEMU creates it before it loads the kernel, and
/// commands are only answered once the machine is built and the main loop
/// runs.
async fn wait_qemu_ready(
    qemu: &mut Helper,
    qmp: &Path,
    limit: Duration,
) -> Result<QmpSession, Error> {
    let exited = |qemu: &Helper, status: String| Error::VmExited {
        hypervisor: "QEMU",
        status,
        stderr: qemu.log_tail(),
    };
    let deadline = Instant::now() + limit;
    qemu.wait_for_socket(qmp, limit)
        .await
        .map_err(|e| match e {
            Error::HelperExited { status, .. } => exited(qemu, status),
            other => other,
        })?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = async {
            let session = QmpSession::open(qmp, left).await?;
            let status = session.execute("query-status", None, left).await?;
            Ok::<_, Error>((session, status))
        }
        .await;
        if let Some(status) = qemu.child.try_wait()? {
            return Err(exited(qemu, status.to_string()));
        }
        match answer {
            Ok((session, status)) => {
                tracing::debug!(%status, "QEMU answers QMP");
                return Ok(session);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[async_trait::async_trait]
impl Vm for QemuVm {
    fn name(&self) -> &'static str {
        "QEMU"
    }

    fn block(&mut self) -> Result<&mut dyn BlockHotplug, Error> {
        let machine = self.machine();
        if !cmdline::has_root_ports(machine) {
            return Err(Error::NotSupported {
                hypervisor: format!("QEMU ({machine})"),
                capability: "block device hot-plug",
            });
        }
        Ok(self)
    }

    fn network(&mut self) -> Result<&mut dyn NetworkHotplug, Error> {
        let machine = self.machine();
        if !cmdline::has_root_ports(machine) {
            return Err(Error::NotSupported {
                hypervisor: format!("QEMU ({machine})"),
                capability: "NIC hot-plug",
            });
        }
        Ok(self)
    }

    fn resources(&mut self) -> Result<&mut dyn ResourceHotplug, Error> {
        let machine = self.machine();
        if !cmdline::has_root_ports(machine) {
            return Err(Error::NotSupported {
                hypervisor: format!("QEMU ({machine})"),
                capability: "vCPU and memory hot-plug",
            });
        }
        Ok(self)
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

    fn accelerator(&self) -> Option<Accelerator> {
        self.accel
    }

    fn pid(&self) -> Option<u32> {
        self.qemu.as_ref().and_then(Helper::pid)
    }

    fn processes(&self) -> Vec<VmProcess> {
        [
            (&self.qemu, VmProcessRole::Hypervisor),
            (&self.virtiofsd, VmProcessRole::SharedFs),
            (&self.vsock, VmProcessRole::Vsock),
        ]
        .into_iter()
        .filter_map(|(helper, role)| VmProcess::of(helper.as_ref()?.pid()?, role))
        .collect()
    }

    async fn wait_guest_ready(&mut self, limit: Duration) -> Result<bool, Error> {
        let args = serde_json::json!({ "path": VSOCK_QOM_PATH });
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.wait_exit(Duration::ZERO).await? {
                return Ok(false);
            }
            let Some(qmp) = &self.qmp else {
                return Ok(false);
            };
            let status = match qmp
                .execute("x-query-virtio-status", Some(args.clone()), QMP_TIMEOUT)
                .await
            {
                Ok(status) => status,
                // QEMU exited between the check above and the query (a
                // guest that panicked while booting): the caller tells an
                // exited VM from one that is slow, with its console.
                // A failed wait is no exit: the QMP error is returned.
                Err(_) if self.wait_exit(EXIT_AFTER_QMP_LOSS).await.unwrap_or(false) => {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            };
            if qmp::virtio_driver_ok(&status) {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(false)
    }

    fn agent_endpoint(&self, port: u32) -> AgentEndpoint {
        if self.kernel_vsock {
            AgentEndpoint::Vsock {
                cid: self.cfg.guest_cid,
                port,
            }
        } else {
            AgentEndpoint::HybridVsock {
                path: self.cfg.run_dir.join("vsock.sock"),
                port,
            }
        }
    }

    async fn wait_exit(&mut self, limit: Duration) -> Result<bool, Error> {
        let Some(qemu) = self.qemu.as_mut() else {
            return Ok(true);
        };
        match timeout(limit, qemu.child.wait()).await {
            Ok(status) => {
                let status = status?;
                tracing::debug!(vm = %self.cfg.id, %status, "QEMU exited");
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    async fn shutdown(&mut self, grace: Duration) -> Result<(), Error> {
        if let Some(mut qemu) = self.qemu.take() {
            // The guest powers itself off when its agent is told to
            // (DestroySandbox); a guest still running here is not listening,
            // and the agent as PID 1 handles no ACPI power button, so
            // `system_powerdown` would only burn the grace period. QEMU is
            // asked to quit over QMP (SIGTERM if QMP fails), all bounded by
            // `grace` (a frozen QEMU may accept a connection and never
            // answer), then killed.
            let session = self.qmp.take();
            let step = step!("qemu stop");
            if matches!(qemu.child.try_wait(), Ok(None)) && !grace.is_zero() {
                let id = &self.cfg.id;
                let quit = async {
                    let asked = match &session {
                        Some(qmp) => qmp.execute("quit", None, grace).await,
                        None => Err(qmp::qmp_error("no session")),
                    };
                    if let Err(e) = asked {
                        tracing::debug!(vm = %id, error = %e, "QMP quit failed: SIGTERM");
                        qemu.terminate();
                    }
                    qemu.child.wait().await
                };
                match timeout(grace, quit).instrument(step.clone()).await {
                    Ok(status) => tracing::debug!(vm = %id, ?status, "QEMU quit"),
                    Err(_) => tracing::debug!(vm = %id, ?grace, "QEMU did not quit"),
                }
            }
            qemu.kill().instrument(step).await;
        }
        self.qmp = None;
        self.drives.clear();
        self.nics.clear();
        self.plugged = resize::Plugged::default();
        for helper in [self.virtiofsd.take(), self.vsock.take()]
            .into_iter()
            .flatten()
        {
            let mut helper = helper;
            helper
                .stop(HELPER_GRACE)
                .instrument(step!("helper stop"))
                .await;
        }
        for file in self.created.drain(..) {
            remove_file(&file);
        }
        Ok(())
    }
}

/// Longest socket file name created in the run directory.
const LONGEST_SOCKET: &str = "vhost-vsock.sock";
/// `sun_path` holds 108 bytes, the last one NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The run directory must give socket paths that fit in `sun_path`, and
/// no comma: vhost-device-vsock's `--vm` takes comma-separated values
/// without an escape.
fn check_run_dir(dir: &Path) -> Result<(), Error> {
    let longest = dir.join(LONGEST_SOCKET);
    let len = longest.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::RunDir {
            path: dir.into(),
            reason: format!(
                "its socket paths are up to {len} bytes, more than the {MAX_SOCKET_PATH} a Unix socket path can hold: choose a shorter state_dir"
            ),
        });
    }
    if dir.to_string_lossy().contains(',') {
        return Err(Error::RunDir {
            path: dir.into(),
            reason: "it contains ',', which helper command lines cannot carry".into(),
        });
    }
    Ok(())
}

fn remove_file(file: &Path) {
    match std::fs::remove_file(file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %file.display(), error = %e, "not removed"),
    }
}

/// The size of root image `path` in MiB, for its NVDIMM. The NVDIMM is the
/// first device of the hot-plug memory area, so DIMMs and virtio-mem's
/// region come after it: a whole number of the guest's 128 MiB memory
/// blocks keeps them aligned to blocks the guest can online (as Kata's
/// image builder, which rounds images to 128 MiB; `capsa assets build
/// --image` makes 128 MiB multiples).
fn image_mib(path: &Path) -> Result<u64, Error> {
    const BLOCK: u64 = 128 << 20;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::Config(format!("root image {}: {e}", path.display())))?
        .len();
    if len == 0 || len % BLOCK != 0 {
        return Err(Error::Config(format!(
            "root image {}: {len} bytes is not a whole number of 128 MiB (build it with `capsa assets build --image`)",
            path.display()
        )));
    }
    Ok(len >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration errors of QEMU's own keys name the key, the file
    /// and the reason.
    #[test]
    fn qemu_keys_are_checked() {
        let bad = |text: &str, key: &str, reason: &str| {
            let err = crate::parse_config(text, Path::new("/m.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{key}`"))
                    && err.contains(reason)
                    && err.contains("/m.toml"),
                "{text}: {err}"
            );
            // The neutral checks alone accept it: this is the driver's.
            capsa_config::parse(text, Path::new("/m.toml")).unwrap();
        };
        bad(
            "[hypervisor.qemu]\nmemory_slots = 300\n",
            "hypervisor.qemu.memory_slots",
            "more than 256",
        );
        bad(
            "[hypervisor.qemu]\nenable_virtio_mem = true\nmachine_type = \"microvm\"\n",
            "hypervisor.qemu.enable_virtio_mem",
            "needs machine_type = \"q35\" (not \"microvm\")",
        );
        bad(
            "[hypervisor.qemu]\nreclaim_guest_freed_memory = false\nenable_virtio_mem = true\npcie_root_port = 27\n",
            "hypervisor.qemu.pcie_root_port",
            "27 is more than 26 (with enable_virtio_mem, whose devices take root-port slots)",
        );
        bad(
            "[hypervisor.qemu]\nreclaim_guest_freed_memory = false\npcie_root_port = 28\n",
            "hypervisor.qemu.pcie_root_port",
            "28 is more than 27",
        );
        bad(
            "[hypervisor.qemu]\ninitrd = \"\"\nimage = \"/r.img\"\nmachine_type = \"microvm\"\n",
            "hypervisor.qemu.image",
            "disable_image_nvdimm",
        );
        bad(
            "[hypervisor.qemu]\nreclaim_guest_freed_memory = false\ninitrd = \"\"\nimage = \"/r.img\"\ndisable_image_nvdimm = true\npcie_root_port = 27\n",
            "hypervisor.qemu.pcie_root_port",
            "27 is more than 26 (with an image on virtio-blk,",
        );
        bad(
            "[hypervisor.qemu]\nenable_virtio_mem = true\nreclaim_guest_freed_memory = true\npcie_root_port = 26\n",
            "hypervisor.qemu.pcie_root_port",
            "26 is more than 25 (with enable_virtio_mem and reclaim_guest_freed_memory",
        );
        bad(
            "[hypervisor.qemu]\ntcg_tb_size = 4096\n",
            "hypervisor.qemu.tcg_tb_size",
            "4096 MiB is more than 2048 MiB",
        );
        for ok in [
            "[hypervisor.qemu]\ninitrd = \"\"\nimage = \"/r.img\"\n",
            "[hypervisor.qemu]\nreclaim_guest_freed_memory = false\ndefault_maxvcpus = 0\ndefault_maxmemory = 512\nenable_virtio_mem = true\npcie_root_port = 26\n",
            "[hypervisor.qemu]\nreclaim_guest_freed_memory = true\npcie_root_port = 26\ntcg_tb_size = 0\n",
            "[hypervisor.qemu]\nmachine_type = \"microvm\"\ninitrd = \"\"\nimage = \"/r.img\"\ndisable_image_nvdimm = true\n",
            "",
        ] {
            crate::parse_config(ok, Path::new("/m.toml")).unwrap();
        }
    }

    #[test]
    fn the_host_report_names_what_qemu_needs() {
        let config = capsa_config::parse(
            "[hypervisor.qemu]\npath = \"/nonexistent/qemu\"\nshared_fs = \"none\"\n",
            Path::new("/h.toml"),
        )
        .unwrap();
        let lines = crate::check_host(&config.hypervisor);
        let line = |what: &str| lines.iter().find(|l| l.what == what).cloned();
        let qemu = line("qemu").expect("a qemu line");
        assert!(
            qemu.missing && qemu.detail == "/nonexistent/qemu",
            "{qemu:?}"
        );
        assert!(line("accelerator").is_some() && line("kernel").is_some());
        assert!(line("virtiofsd").is_none(), "no shared fs: {lines:?}");
    }

    #[test]
    fn root_images_are_whole_memory_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("r.img");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(256 << 20).unwrap();
        assert_eq!(image_mib(&image).unwrap(), 256);
        file.set_len(130 << 20).unwrap();
        let err = image_mib(&image).unwrap_err().to_string();
        assert!(err.contains("r.img") && err.contains("128 MiB"), "{err}");
        file.set_len(0).unwrap();
        assert!(image_mib(&image).is_err());
        assert!(image_mib(&dir.path().join("none")).is_err());
    }

    #[test]
    fn run_dirs_must_fit_socket_paths() {
        assert!(check_run_dir(Path::new("/run/capsa/0123456789abcdef")).is_ok());
        let long = format!("/tmp/{}", "d".repeat(90));
        let err = check_run_dir(Path::new(&long)).unwrap_err().to_string();
        assert!(
            err.contains("shorter state_dir") && err.contains(&long),
            "{err}"
        );
        let err = check_run_dir(Path::new("/run/a,b"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("','"), "{err}");
    }
}

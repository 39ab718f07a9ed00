//! How the UML kernel and its helpers are jailed ([`crate::jail`]): the
//! same unprivileged identity for all three, each in its own namespaces
//! under its own seccomp profile, each seeing only its binary and
//! libraries, `/dev/null` and the pod's socket directory (plus the share
//! for virtiofsd, the initrd and a RAM tmpfs for the kernel).
//!
//! The socket directory is `<run_dir>/uml` on the host, owned by the
//! jail's uid, and bound at the same path in every jail: a socket's name
//! is then the same for the host and the programs (the management
//! console answers to the name its client bound). The helpers' logs and
//! the console log stay outside it, in the run directory, and reach the
//! programs only as open descriptors.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::jail::{self, BindMount, Identity, JailConfig, JailedProcess, Limits, Tmpfs};
use crate::Error;

/// Where the kernel and the initrd are inside the kernel's jail.
pub const KERNEL: &str = "/uml/linux";
pub const INITRD: &str = "/uml/initrd";
/// UML's RAM file's tmpfs (`TMPDIR`), out of the way of the socket
/// directory, which keeps its host path (possibly under `/tmp`).
pub const MEMORY: &str = "/uml/mem";
/// The share inside virtiofsd's jail.
pub const SHARE: &str = "/share";
/// Room in the RAM tmpfs beyond the guest's memory (UML's other files).
const TMPFS_SLACK: u64 = 16 << 20;
/// The guest's processes are host processes of the jail's uid.
const GUEST_PROCESSES: u64 = 4096;
/// `RLIMIT_AS` beyond the guest's RAM. The kernel maps its RAM file and
/// its binary (guest RAM + ~24 MiB); each guest process maps the guest
/// pages it uses, which can be mapped more than once (shared memory),
/// hence twice the RAM for the kernel's jail. The helpers map the guest's
/// RAM once, besides their own threads' stacks (vhost-device-vsock:
/// ~280 MiB of address space beyond it).
const KERNEL_AS_SLACK: u64 = 256 << 20;
const HELPER_AS_SLACK: u64 = 1 << 30;

/// The address-space bound of a helper that maps `memory_mib` of guest RAM.
pub fn helper_limits(memory_mib: u32) -> Limits {
    Limits {
        address_space: Some((u64::from(memory_mib) << 20) + HELPER_AS_SLACK),
        ..Limits::default()
    }
}

/// A jailed program and the file its output goes to.
pub struct Jailed {
    pub process: JailedProcess,
    pub log: PathBuf,
}

impl Jailed {
    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Waits until `socket` exists; fails if the program exits first or
    /// the socket does not appear within `limit`.
    pub async fn wait_for_socket(&mut self, socket: &Path, limit: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + limit;
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.process.try_wait()? {
                return Err(Error::HelperExited {
                    program: self.process.name().into(),
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::HelperTimeout {
                    program: self.process.name().into(),
                    socket: socket.into(),
                    seconds: limit.as_secs(),
                    log: self.log_tail(),
                });
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts `cfg` with its stdout and stderr to `log` (created, or appended
/// to when `append`), and `stdin` as its standard input (else `/dev/null`). Called from the VM's owner task: the program's
/// parent-death signal follows the calling thread, a tokio worker.
pub fn spawn(
    mut cfg: JailConfig,
    log: &Path,
    append: bool,
    stdin: Option<OwnedFd>,
) -> Result<Jailed, Error> {
    let mut open = OpenOptions::new();
    open.create(true).mode(0o600);
    if append {
        open.append(true);
    } else {
        open.write(true).truncate(true);
    }
    let out = open.open(log).map_err(|source| Error::LogFile {
        path: log.into(),
        source,
    })?;
    let fd = |f: &File| -> Result<OwnedFd, Error> { Ok(OwnedFd::from(f.try_clone()?)) };
    cfg.fds.push((fd(&out)?, 1));
    cfg.fds.push((fd(&out)?, 2));
    if let Some(stdin) = stdin {
        cfg.fds.push((stdin, 0));
    }
    let process = jail::spawn(cfg)?;
    Ok(Jailed {
        process,
        log: log.into(),
    })
}

/// The shared libraries `binary` loads, its interpreter included (from
/// `ldd`; none for a static binary).
///
/// Its output is read to the end before it is waited for, and a wait that
/// finds no child (`ECHILD`: another waiter of the process took its
/// status first, which once failed a pod's start in a shim) keeps what
/// it printed.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    use std::io::Read;
    let spawn_error = |source| Error::Spawn {
        program: "ldd".into(),
        source,
    };
    let mut child = std::process::Command::new("ldd")
        .arg(binary)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(spawn_error)?;
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_end(&mut out).map_err(spawn_error)?;
    }
    match child.wait() {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            tracing::debug!(binary = %binary.display(), "ldd reaped elsewhere; its output is whole");
        }
        Err(e) => return Err(spawn_error(e)),
    }
    Ok(String::from_utf8_lossy(&out)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Every directory from `/` down to `path` (included) must let `id`
/// search it: the jail binds as that uid. Names the first that does not.
pub fn check_searchable(path: &Path, id: Identity, what: &str) -> Result<(), Error> {
    for dir in path.ancestors() {
        let meta = std::fs::metadata(dir).map_err(|e| Error::RunDir {
            path: dir.into(),
            reason: format!("{what}: {e}"),
        })?;
        let mode = meta.permissions().mode();
        let ok = if meta.uid() == id.uid {
            mode & 0o100 != 0
        } else if meta.gid() == id.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(Error::RunDir {
                path: dir.into(),
                reason: format!(
                    "{what} {}: uid {} (the UML jail's) cannot search this directory (mode {:o})",
                    path.display(),
                    id.uid,
                    mode & 0o7777
                ),
            });
        }
    }
    Ok(())
}

/// A config of `name` running `program` (bound read-only at `at`, with
/// its libraries and `/dev/null`), the pod's socket directory writable
/// at its own path, no network.
fn base(
    name: &str,
    program: &Path,
    at: &str,
    id: Identity,
    profile: jail::SeccompProfile,
    sockets: &Path,
) -> Result<JailConfig, Error> {
    let mut cfg = JailConfig::new(name, at, id, profile);
    cfg.binds = vec![
        BindMount::read_only(program).at(at),
        BindMount::read_only("/dev/null"),
        BindMount::read_write(sockets),
    ];
    cfg.binds
        .extend(libraries(program)?.into_iter().map(BindMount::read_only));
    cfg.new_network = true;
    cfg.hostname = "capsa".into();
    Ok(cfg)
}

/// The UML kernel's jail: its RAM file in a tmpfs at [`MEMORY`] it may
/// map executable (`TMPDIR`), the disks' directory `disks` at its own
/// path (`super::block`), no `/proc`.
pub fn kernel(
    kernel: &Path,
    initrd: Option<&Path>,
    memory_mib: u32,
    id: Identity,
    sockets: &Path,
    disks: &Path,
    args: Vec<String>,
) -> Result<JailConfig, Error> {
    let mut cfg = base(
        "uml",
        kernel,
        KERNEL,
        id,
        jail::profiles::uml_kernel(),
        sockets,
    )?;
    if let Some(initrd) = initrd {
        cfg.binds.push(BindMount::read_only(initrd).at(INITRD));
    }
    // The disks, bound there (idmapped) when hot-plugged: the bind of
    // the directory follows the host's mounts below it.
    cfg.binds.push(BindMount::read_only(disks).recursive());
    // UML's entropy source (`CONFIG_UML_RANDOM`).
    cfg.binds
        .push(BindMount::read_only("/dev/urandom").at("/dev/random"));
    cfg.tmpfs = vec![Tmpfs {
        target: MEMORY.into(),
        size_bytes: (u64::from(memory_mib) << 20) + TMPFS_SLACK,
        noexec: false,
    }];
    cfg.env = vec![
        ("TMPDIR".into(), MEMORY.into()),
        ("HOME".into(), MEMORY.into()),
    ];
    // The kernel holds its disks' files open (owned by the jail's uid
    // through their idmapped binds, host root's on disk): like virtiofsd
    // on the share, it must never give them a set-id mode (fchmod).
    cfg.extra_filters = crate::jail::ExtraFilters(crate::virtiofsd::filters()?);
    cfg.args = args;
    cfg.limits = Limits {
        processes: GUEST_PROCESSES,
        address_space: Some(2 * (u64::from(memory_mib) << 20) + KERNEL_AS_SLACK),
        ..Limits::default()
    };
    Ok(cfg)
}

/// virtiofsd's jail: the share writable at [`SHARE`] with what is
/// mounted below it, now and later (containers' root filesystems and
/// volumes are mounted there once the VM runs), its own `/proc` (it
/// reopens files through `/proc/self/fd`).
pub fn virtiofsd(
    daemon: &Path,
    share: &Path,
    id: Identity,
    sockets: &Path,
    args: Vec<String>,
) -> Result<JailConfig, Error> {
    let mut cfg = base(
        "virtiofsd",
        daemon,
        "/bin/virtiofsd",
        id,
        jail::profiles::virtiofsd(),
        sockets,
    )?;
    cfg.binds
        .push(BindMount::read_write(share).at(SHARE).recursive());
    // The share's host root files are virtiofsd's through their idmapped
    // copy (the runtime's): like QEMU's root virtiofsd, it must never make
    // a set-id file or a device node there (`crate::virtiofsd`).
    cfg.extra_filters = crate::jail::ExtraFilters(crate::virtiofsd::filters()?);
    cfg.proc = true;
    cfg.args = args;
    Ok(cfg)
}

/// vhost-device-vsock's jail: nothing but its sockets.
pub fn vhost_device_vsock(
    daemon: &Path,
    id: Identity,
    sockets: &Path,
    args: Vec<String>,
) -> Result<JailConfig, Error> {
    let mut cfg = base(
        "vhost-device-vsock",
        daemon,
        "/bin/vhost-device-vsock",
        id,
        jail::profiles::vhost_device_vsock(),
        sockets,
    )?;
    cfg.args = args;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's jail binds the disks' directory (following the host's
    /// mounts below it) and refuses set-id modes, as virtiofsd's does.
    #[test]
    fn the_kernel_jail_binds_the_disks_and_refuses_set_id_modes() {
        let id = Identity {
            uid: 1_999_999,
            gid: 1_999_999,
        };
        let (sockets, disks) = (Path::new("/run/s"), Path::new("/run/d"));
        let cfg = kernel(Path::new("/bin/true"), None, 64, id, sockets, disks, vec![]).unwrap();
        let bind = cfg.binds.iter().find(|b| b.source == disks).unwrap();
        assert!(bind.recursive && !bind.writable && bind.target == disks);
        assert_eq!(
            cfg.extra_filters.0.len(),
            crate::virtiofsd::filters().unwrap().len()
        );
    }

    #[test]
    fn unsearchable_directories_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let id = Identity {
            uid: 1_999_999,
            gid: 1_999_999,
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let err = check_searchable(&inner, id, "run directory")
            .unwrap_err()
            .to_string();
        assert!(err.contains("1999999") && err.contains("/a"), "{err}");
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o711))
            .unwrap();
        check_searchable(&inner, id, "run directory").unwrap();
    }
}

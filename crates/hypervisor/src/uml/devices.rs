//! The UML VM's devices: the vhost-user helpers that serve virtio-fs and
//! vsock over `virtio_uml` (the same `virtiofsd` and
//! `vhost-device-vsock` as QEMU's, each in its own jail), and what UML
//! cannot attach yet. Disks are UML's own `ubd` ([`super::block`]);
//! NICs: [`super::net`].

use std::path::Path;

use crate::jail::Identity;
use crate::{Error, SharedFs};

use super::jail::{self, Jailed, SHARE};

/// Socket names in the pod's socket directory.
pub const VIRTIOFSD_SOCKET: &str = "virtiofsd.sock";
pub const VHOST_VSOCK_SOCKET: &str = "vhost-vsock.sock";
/// vhost-device-vsock's hybrid-vsock socket: the host dials the agent here.
pub const HYBRID_VSOCK_SOCKET: &str = "vsock.sock";

/// virtiofsd for `fs`, in its jail. Unprivileged, so `--sandbox=none`
/// (the jail is its sandbox) and `--rlimit-nofile=0` (the jail sets it);
/// `--tag`: `virtio_uml` reads the tag from the device's configuration.
/// The guest's root is the jail's uid and gid on the host, both ways
/// (`--translate-uid/gid map:0:ID:1`): what the jail's uid owns is the
/// guest root's, what the guest's root creates is the jail's uid's.
/// Files of other host users keep their ids (host root's, unmapped in
/// the jail, show as the overflow id 65534): the guest's root may read
/// them as their modes let anyone, and write none it does not own.
pub fn virtiofsd(
    fs: &SharedFs,
    id: Identity,
    memory_mib: u32,
    sockets: &Path,
    log: &Path,
) -> Result<Jailed, Error> {
    let mut args = vec![
        format!("--socket-path={}", sockets.join(VIRTIOFSD_SOCKET).display()),
        format!("--shared-dir={SHARE}"),
        format!("--tag={}", fs.tag),
        format!("--cache={}", fs.cache),
        "--sandbox=none".into(),
        "--rlimit-nofile=0".into(),
        format!("--translate-uid=map:0:{}:1", id.uid),
        format!("--translate-gid=map:0:{}:1", id.gid),
    ];
    args.extend(fs.extra_args.iter().cloned());
    let mut cfg = jail::virtiofsd(&fs.daemon, &fs.shared_dir, id, sockets, args)?;
    cfg.limits = jail::helper_limits(memory_mib);
    jail::spawn(cfg, log, false, None)
}

/// vhost-device-vsock for guest `cid`, in its jail.
pub fn vhost_device_vsock(
    daemon: &Path,
    cid: u32,
    id: Identity,
    memory_mib: u32,
    sockets: &Path,
    log: &Path,
) -> Result<Jailed, Error> {
    let args = vec![
        "--vm".into(),
        format!(
            "guest-cid={cid},socket={},uds-path={}",
            sockets.join(VHOST_VSOCK_SOCKET).display(),
            sockets.join(HYBRID_VSOCK_SOCKET).display()
        ),
    ];
    let mut cfg = jail::vhost_device_vsock(daemon, id, sockets, args)?;
    cfg.limits = jail::helper_limits(memory_mib);
    jail::spawn(cfg, log, false, None)
}

/// What this driver cannot do, as the capability traits answer it.
pub fn not_supported(capability: &'static str) -> Error {
    Error::NotSupported {
        hypervisor: <super::Uml as crate::Driver>::NAME.into(),
        capability,
    }
}

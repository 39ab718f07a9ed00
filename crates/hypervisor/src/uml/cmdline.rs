//! The UML kernel's command line: its memory, its initrd, its consoles,
//! its management console, a `virtio_uml.device=` per vhost-user
//! device and a `vecN:` per NIC.
//!
//! Every path on it is a path inside the kernel's jail ([`super::jail`]).

use std::path::Path;

/// virtio device ids (the virtio spec's numbering), which `virtio_uml`
/// needs next to each vhost-user socket.
pub const VIRTIO_ID_VSOCK: u32 = 19;
pub const VIRTIO_ID_FS: u32 = 26;

/// The kernel's own parameters: a quiet boot. No `panic=`: UML's panic
/// notifier ends the process (reported as an exit, like QEMU's
/// `-no-reboot`), where a reboot would re-exec the kernel.
const KERNEL_PARAMS: &[&str] = &["quiet"];

/// The umid (UML's instance name): the management console's socket is
/// `<uml_dir>/<umid>/mconsole`. One UML per jail, so a fixed one.
pub const UMID: &str = "capsa";

/// UML's timer frequency (`CONFIG_HZ`, 100 for `ARCH=um`).
const HZ: u64 = 100;

/// `lpj=`: the delay loop's speed, from the host's BogoMIPS
/// (`/proc/cpuinfo`), so that the kernel skips calibrating it: a loop of
/// five timer ticks, about 50 ms of every start. The host's figure is
/// higher than the loop UML measures (the TSC's, not the loop's), so
/// delays come out no shorter than asked; UML's drivers hardly delay.
/// None when the host gives no figure (the kernel then calibrates).
pub fn preset_lpj(cpuinfo: &str) -> Option<String> {
    let bogomips: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("bogomips"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    // BogoMIPS = lpj / (500000 / HZ).
    let lpj = (bogomips * (500_000 / HZ) as f64) as u64;
    (lpj > 0).then(|| format!("lpj={lpj}"))
}

/// What the command line points at, inside the jail.
pub struct Boot<'a> {
    /// MiB of guest RAM.
    pub memory_mib: u32,
    pub initrd: Option<&'a Path>,
    /// The directory UML keeps its umid directory in (writable).
    pub uml_dir: &'a Path,
    /// vhost-user sockets of the virtio-fs and vsock devices.
    pub virtiofs: Option<&'a Path>,
    pub vsock: &'a Path,
    /// The NICs' `vecN:...` arguments ([`super::net`]).
    pub nics: &'a [String],
    /// Appended after the driver's own parameters.
    pub extra: &'a [String],
}

/// The arguments after `argv[0]`.
pub fn build(b: &Boot) -> Vec<String> {
    let mut args = vec![format!("mem={}M", b.memory_mib)];
    if let Some(initrd) = b.initrd {
        args.push(format!("initrd={}", initrd.display()));
    }
    // The first console reads the process's stdin (a pipe nobody writes:
    // end of file would hang the console up) and writes to its stdout
    // (the console log). The other consoles keep the kernel's default
    // (`CONFIG_CON_CHAN`, the same stdout); nothing opens them.
    args.push("con0=fd:0,fd:1".into());
    args.push(format!("uml_dir={}", b.uml_dir.display()));
    args.push(format!("umid={UMID}"));
    if let Some(fs) = b.virtiofs {
        args.push(format!("virtio_uml.device={}:{VIRTIO_ID_FS}", fs.display()));
    }
    args.push(format!(
        "virtio_uml.device={}:{VIRTIO_ID_VSOCK}",
        b.vsock.display()
    ));
    args.extend(b.nics.iter().cloned());
    args.extend(KERNEL_PARAMS.iter().map(|s| s.to_string()));
    args.extend(b.extra.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_loop_comes_from_the_hosts_bogomips() {
        let cpuinfo = "processor\t: 0\nbogomips\t: 5195.74\nclflush size\t: 64\n";
        assert_eq!(preset_lpj(cpuinfo).as_deref(), Some("lpj=25978700"));
        assert_eq!(preset_lpj("processor\t: 0\n"), None);
        assert_eq!(preset_lpj("bogomips\t: junk\n"), None);
        assert_eq!(preset_lpj("bogomips\t: 0.00\n"), None);
    }

    #[test]
    fn devices_memory_and_consoles() {
        let extra = vec!["agent.log=debug".to_string()];
        let args = build(&Boot {
            memory_mib: 256,
            initrd: Some(Path::new("/uml/initrd")),
            uml_dir: Path::new("/run/uml"),
            virtiofs: Some(Path::new("/run/uml/virtiofsd.sock")),
            vsock: Path::new("/run/uml/vhost-vsock.sock"),
            nics: &["vec0:transport=fd,fd=200".to_string()],
            extra: &extra,
        });
        assert_eq!(
            args,
            [
                "mem=256M",
                "initrd=/uml/initrd",
                "con0=fd:0,fd:1",
                "uml_dir=/run/uml",
                "umid=capsa",
                "virtio_uml.device=/run/uml/virtiofsd.sock:26",
                "virtio_uml.device=/run/uml/vhost-vsock.sock:19",
                "vec0:transport=fd,fd=200",
                "quiet",
                "agent.log=debug",
            ]
        );
        let args = build(&Boot {
            memory_mib: 64,
            initrd: None,
            uml_dir: Path::new("/d"),
            virtiofs: None,
            vsock: Path::new("/d/v.sock"),
            nics: &[],
            extra: &[],
        });
        assert!(!args.iter().any(|a| a.starts_with("initrd=")));
        assert_eq!(
            args.iter().filter(|a| a.starts_with("virtio_uml")).count(),
            1
        );
    }
}

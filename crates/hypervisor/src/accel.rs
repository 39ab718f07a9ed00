//! Which accelerator a VM gets: KVM only where the host really offers
//! hardware virtualization, TCG (software emulation) otherwise.
//!
//! A nested host can expose a `/dev/kvm` that creates VMs but whose CPUs
//! advertise neither `vmx` nor `svm`: guests crawl and crash there, so
//! `/dev/kvm` alone is not enough.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AcceleratorChoice, Error};

/// What a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// What the host offers for running VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostVirt {
    /// `/dev/kvm` exists.
    pub kvm_device: bool,
    /// `/dev/kvm` opens and `KVM_CREATE_VM` succeeds.
    pub kvm_usable: bool,
    /// The CPU flags show `vmx` (Intel) or `svm` (AMD).
    pub hardware_virtualization: bool,
    /// `/dev/vhost-vsock` exists (kernel vsock backend).
    pub vhost_vsock: bool,
}

/// Probes the host.
pub fn detect() -> HostVirt {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    HostVirt {
        kvm_device: Path::new("/dev/kvm").exists(),
        kvm_usable: kvm_creates_vm(),
        hardware_virtualization: cpu_has_virt_flags(&cpuinfo),
        vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
    }
}

fn cpu_has_virt_flags(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

fn kvm_creates_vm() -> bool {
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let Ok(kvm) = OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
        return false;
    };
    // SAFETY: KVM_CREATE_VM takes an integer machine type (0) and returns a
    // new file descriptor or -1; it reads and writes no memory of ours.
    let fd = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    unsafe { libc::close(fd) };
    true
}

/// Decides the accelerator and why.
pub fn resolve(choice: AcceleratorChoice, host: &HostVirt) -> Result<(Accelerator, String), Error> {
    let kvm_ok = host.kvm_usable && host.hardware_virtualization;
    match choice {
        AcceleratorChoice::Tcg => Ok((Accelerator::Tcg, "forced by configuration".into())),
        AcceleratorChoice::Kvm if host.kvm_usable => {
            Ok((Accelerator::Kvm, "forced by configuration".into()))
        }
        AcceleratorChoice::Kvm => Err(Error::KvmUnavailable),
        AcceleratorChoice::Auto if kvm_ok => Ok((
            Accelerator::Kvm,
            "/dev/kvm is usable and the CPU offers vmx/svm".into(),
        )),
        AcceleratorChoice::Auto => {
            let why = if !host.kvm_usable {
                "/dev/kvm is missing or unusable"
            } else {
                "no vmx/svm CPU flag (nested or paravirtual KVM)"
            };
            Ok((Accelerator::Tcg, why.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(kvm: bool, hw: bool) -> HostVirt {
        HostVirt {
            kvm_device: kvm,
            kvm_usable: kvm,
            hardware_virtualization: hw,
            vhost_vsock: false,
        }
    }

    #[test]
    fn auto_needs_both_kvm_and_cpu_flags() {
        let pick = |h| resolve(AcceleratorChoice::Auto, &h).unwrap().0;
        assert_eq!(pick(host(true, true)), Accelerator::Kvm);
        assert_eq!(pick(host(true, false)), Accelerator::Tcg);
        assert_eq!(pick(host(false, true)), Accelerator::Tcg);
    }

    #[test]
    fn forced_choices() {
        assert_eq!(
            resolve(AcceleratorChoice::Tcg, &host(true, true))
                .unwrap()
                .0,
            Accelerator::Tcg
        );
        assert!(resolve(AcceleratorChoice::Kvm, &host(false, false)).is_err());
        assert_eq!(
            resolve(AcceleratorChoice::Kvm, &host(true, false))
                .unwrap()
                .0,
            Accelerator::Kvm
        );
    }

    #[test]
    fn cpu_flags_are_parsed() {
        assert!(cpu_has_virt_flags("flags\t: fpu vme vmx sse\n"));
        assert!(cpu_has_virt_flags("flags\t: fpu svm\n"));
        assert!(!cpu_has_virt_flags(
            "flags\t: fpu hypervisor\nmodel name: vmx\n"
        ));
        assert_eq!(
            "tcg".parse::<AcceleratorChoice>(),
            Ok(AcceleratorChoice::Tcg)
        );
        assert!("xen".parse::<AcceleratorChoice>().is_err());
    }
}

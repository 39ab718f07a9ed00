//! `capsa check`: what the host offers, what capsa would use, what is missing.

use std::path::Path;

use crate::output;

use capsa_hypervisor::accel;

pub fn check(explicit: Option<&Path>) -> anyhow::Result<u8> {
    let (config, source) = capsa_config::load(explicit)?;
    let q = &config.hypervisor.qemu;
    let host = accel::detect();
    let mut missing = 0;
    let yes_no = |b: bool| if b { "yes" } else { "no" };

    output::line(format_args!("configuration   {source}"))?;
    match accel::resolve(q.accelerator.parse().unwrap_or_default(), &host) {
        Ok((a, why)) => output::line(format_args!("accelerator     {a} ({why})"))?,
        Err(e) => {
            missing += 1;
            output::line(format_args!("accelerator     MISSING: {e}"))?;
        }
    }
    output::line(format_args!(
        "/dev/kvm        present: {}, usable: {}",
        yes_no(host.kvm_device),
        yes_no(host.kvm_usable)
    ))?;
    output::line(format_args!(
        "vmx/svm         {}",
        yes_no(host.hardware_virtualization)
    ))?;
    let vsock = if host.vhost_vsock {
        "kernel vhost-vsock (/dev/vhost-vsock)".to_string()
    } else {
        format!(
            "vhost-user-vsock via {}",
            q.vhost_user_vsock_daemon.display()
        )
    };
    output::line(format_args!("vsock           {vsock}"))?;
    let mut files = vec![("qemu", q.path.as_path()), ("kernel", q.kernel.as_path())];
    // One of them (the configuration's validation says so).
    if q.image.as_os_str().is_empty() {
        files.push(("initrd", q.initrd.as_path()));
    } else {
        files.push(("image", q.image.as_path()));
    }
    if q.shared_fs == "virtio-fs" {
        files.push(("virtiofsd", q.virtio_fs_daemon.as_path()));
    }
    if !host.vhost_vsock {
        files.push(("vsock daemon", q.vhost_user_vsock_daemon.as_path()));
    }
    for (what, path) in files {
        if path.is_file() {
            output::line(format_args!("{what:<15} ok: {}", path.display()))?;
        } else {
            missing += 1;
            output::line(format_args!("{what:<15} MISSING: {}", path.display()))?;
        }
    }
    if q.kernel.is_file() {
        output::line(format_args!(
            "kernel in use   {}",
            kernel_identity(&q.kernel)
        ))?;
    }
    if missing > 0 {
        output::line(format_args!(
            "{missing} missing: run `make install` (or fix the configuration)"
        ))?;
        return Ok(1);
    }
    Ok(0)
}

/// capsa's own kernel build (and its id) or a foreign kernel.
fn kernel_identity(kernel: &Path) -> String {
    use capsa_assets::KernelIdentity;
    match capsa_assets::identify_kernel(kernel) {
        Ok(KernelIdentity::Capsa { release, id }) => {
            format!("capsa's build {id} (release {release})")
        }
        Ok(KernelIdentity::Foreign {
            release: Some(release),
        }) => format!("foreign kernel (release {release})"),
        Ok(KernelIdentity::Foreign { release: None }) => {
            "foreign kernel (release unknown)".to_string()
        }
        Err(e) => format!("unreadable: {e}"),
    }
}

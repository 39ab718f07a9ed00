//! `capsa check`: what the host offers, what capsa would use, what is missing.

use std::path::Path;

use crate::output;

pub fn check(explicit: Option<&Path>) -> anyhow::Result<u8> {
    let (config, source) = capsa_runtime::load_config(explicit)?;
    let mut missing = 0;

    output::line(format_args!("configuration   {source}"))?;
    // The driver says what the host offers it and what it would use.
    for line in capsa_hypervisor::check_host(&config.hypervisor) {
        let what = &line.what;
        if line.missing {
            missing += 1;
            output::line(format_args!("{what:<15} MISSING: {}", line.detail))?;
        } else {
            output::line(format_args!("{what:<15} {}", line.detail))?;
        }
    }
    let kernel = &config.hypervisor.vm.kernel;
    if kernel.is_file() {
        output::line(format_args!("kernel in use   {}", kernel_identity(kernel)))?;
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

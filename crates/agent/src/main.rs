//! capsa-agent: PID 1 of the guest. See the library for the parts.

use std::process::ExitCode;

use anyhow::Context;
use capsa_agent::{init, logging, modules, power, server};

fn main() -> ExitCode {
    let is_init = init::is_init();
    if is_init {
        power::install_panic_hook();
        if let Err(e) = boot() {
            power::console_line(&format!("capsa-agent: boot failed: {e:#}"));
            power::power_off();
        }
    }
    logging::init(is_init);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid1 = is_init,
        "capsa-agent starting"
    );
    if is_init {
        system_setup();
    }

    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(server::run(is_init)));
    let code = match result {
        Ok(()) => {
            tracing::info!("capsa-agent stopping");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("capsa-agent failed: {e:#}");
            ExitCode::FAILURE
        }
    };
    if is_init {
        power::power_off();
    }
    code
}

/// What must exist before anything can be logged.
fn boot() -> anyhow::Result<()> {
    init::leave_rootfs().context("root")?;
    init::mount_base().context("base filesystems")?;
    init::null_stdio().context("stdio")?;
    Ok(())
}

/// The rest of the PID 1 setup; failures are logged, the agent goes on (a
/// missing piece shows up as a precise error later).
fn system_setup() {
    if let Err(e) = modules::load_boot_modules() {
        tracing::error!("kernel modules: {}", capsa_agent::error::chain(&e));
    }
    init::enable_cgroup_controllers();
    if let Err(e) = init::set_subreaper() {
        tracing::warn!("{}", capsa_agent::error::chain(&e));
    }
}

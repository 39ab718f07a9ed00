//! Ending the VM: power off, and the panic hook that does it.
//!
//! When the agent is PID 1, nothing can fix a failed agent, and a VM left
//! running would hang its host: every fatal error powers the VM off.

use std::io::Write;

use nix::sys::reboot::{reboot, RebootMode};

const CONSOLE: &str = "/dev/console";

/// Syncs and powers the VM off. Only for PID 1.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = reboot(RebootMode::RB_POWER_OFF).unwrap_err();
    console_line(&format!("capsa-agent: power off failed: {err}"));
    // Exiting PID 1 panics the kernel, which at least ends the guest.
    std::process::exit(1)
}

/// Writes one line straight to the console (works before logging is set up).
pub fn console_line(line: &str) {
    if let Ok(mut console) = std::fs::OpenOptions::new().write(true).open(CONSOLE) {
        let _ = writeln!(console, "{line}");
    }
}

/// Installs a panic hook that logs the panic to the console and, in the
/// agent process itself (not in a process forked by libcontainer), powers
/// the VM off.
pub fn install_panic_hook() {
    let pid = std::process::id();
    std::panic::set_hook(Box::new(move |info| {
        let line = format!("capsa-agent: fatal: {info}");
        // Logs go to the console once logging is set up.
        if tracing::dispatcher::has_been_set() {
            tracing::error!("{line}");
        } else {
            console_line(&line);
        }
        if std::process::id() == pid {
            console_line("capsa-agent: powering off");
            power_off();
        }
    }));
}

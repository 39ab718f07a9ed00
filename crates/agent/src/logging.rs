//! Logs: `tracing` to the serial console (the host keeps it as a file).
//!
//! The level comes from the kernel command line, `agent.log=LEVEL` (error,
//! warn, info, debug, trace); info by default.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::time::uptime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

const CMDLINE_KEY: &str = "agent.log=";

/// The level asked for on the kernel command line (the last one wins);
/// `None` when absent or unknown.
pub fn level_from_cmdline(cmdline: &str) -> Option<Level> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(CMDLINE_KEY))
        .next_back()
        .and_then(|l| l.parse().ok())
}

/// Sets up logging: to `/dev/console` when the agent is PID 1, to (a copy
/// of) stderr otherwise.
///
/// The writer is a file descriptor above 2 and close-on-exec: libcontainer
/// logs from the processes it forks, after it has put the container's
/// stdio on 0-2, and those lines must not reach the workload's streams. It
/// takes no lock: a lock held by another thread when libcontainer forks
/// would stay held forever in the child.
pub fn init(init: bool) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let level = level_from_cmdline(&cmdline).unwrap_or(Level::INFO);
    let writer = if init {
        std::fs::OpenOptions::new().write(true).open("/dev/console")
    } else {
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_timer(uptime())
        .with_ansi(false);
    let filter = filter(level);
    let result = match writer {
        Ok(file) => tracing_subscriber::registry()
            .with(layer.with_writer(Arc::new(file)).with_filter(filter))
            .try_init(),
        Err(_) => tracing_subscriber::registry()
            .with(layer.with_writer(std::io::sink).with_filter(filter))
            .try_init(),
    };
    // Already set (tests): keep the first.
    drop(result);
}

/// `level` for the agent; libcontainer and libcgroups only log errors below
/// debug (their warnings are expected noise here: "intermediate process
/// already reaped" is the central reaper winning, seccomp and rdma/misc
/// controllers are not built in).
fn filter(level: Level) -> Targets {
    let libraries = if level >= Level::DEBUG {
        level
    } else {
        Level::ERROR
    };
    Targets::new()
        .with_default(level)
        .with_target("libcontainer", libraries)
        .with_target("libcgroups", libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_from_the_kernel_command_line() {
        let cmdline = "console=ttyS0 agent.log=debug quiet\n";
        assert_eq!(level_from_cmdline(cmdline), Some(Level::DEBUG));
        assert_eq!(
            level_from_cmdline("agent.log=warn agent.log=trace"),
            Some(Level::TRACE)
        );
        assert_eq!(level_from_cmdline("console=ttyS0"), None);
        assert_eq!(level_from_cmdline("agent.log=loud"), None);
        assert_eq!(level_from_cmdline("xagent.log=debug"), None);
    }

    #[test]
    fn libraries_are_quiet_below_debug() {
        use tracing::level_filters::LevelFilter;
        let info = filter(Level::INFO);
        assert!(info.would_enable("capsa_agent::server", &Level::INFO));
        assert!(!info.would_enable("libcontainer::process", &Level::WARN));
        assert!(info.would_enable("libcgroups::v2", &Level::ERROR));
        let debug = filter(Level::DEBUG);
        assert!(debug.would_enable("libcontainer::process", &Level::DEBUG));
        assert_eq!(LevelFilter::from(Level::DEBUG), LevelFilter::DEBUG);
    }
}

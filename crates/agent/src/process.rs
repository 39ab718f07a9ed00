//! A process the agent runs: a container's init (exec processes later).

use std::io::BufRead;

use nix::sys::signal::Signal;

use crate::reaper::ExitWatch;
use crate::stdio::Stdio;

/// A process of a container, its exit status and its stdio.
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    pub exit: ExitWatch,
    pub stdio: Stdio,
}

impl Process {
    /// The exit status, once the process has exited.
    pub fn status(&self) -> Option<i32> {
        self.exit.status()
    }

    /// Whether the process installed a handler for `signal` (`SigCgt` in
    /// `/proc/<pid>/status`). `false` if it cannot be read.
    pub fn catches(&self, signal: Signal) -> bool {
        let Ok(file) = std::fs::File::open(format!("/proc/{}/status", self.pid)) else {
            return false;
        };
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("SigCgt:").map(|m| m.trim().to_string()))
            .is_some_and(|mask| mask_has(&mask, signal))
    }
}

/// Whether the hexadecimal signal `mask` (as in `/proc/<pid>/status`) has
/// `signal`.
pub fn mask_has(mask: &str, signal: Signal) -> bool {
    let Ok(bits) = u64::from_str_radix(mask, 16) else {
        return false;
    };
    let n = signal as i32;
    (1..=64).contains(&n) && bits & (1u64 << (n - 1)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_masks() {
        // SIGHUP (1) and SIGTERM (15).
        let mask = format!("{:016x}", 1u64 | (1 << 14));
        assert!(mask_has(&mask, Signal::SIGHUP));
        assert!(mask_has(&mask, Signal::SIGTERM));
        assert!(!mask_has(&mask, Signal::SIGINT));
        assert!(!mask_has("zz", Signal::SIGTERM));
        assert!(!mask_has("0000000000000000", Signal::SIGTERM));
    }
}

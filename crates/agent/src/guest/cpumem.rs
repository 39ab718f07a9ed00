//! OnlineCPUMem: brings hot-plugged CPUs and memory blocks online.
//!
//! Kata's semantics: `nb_cpus` offline CPUs are onlined (here 0 means all
//! of them), then, unless `cpu_only`, every offline memory block. A CPU
//! just plugged may need a moment before the kernel accepts it, so the CPU
//! pass is retried. With everything online the call is a successful no-op;
//! asking for more CPUs than are offline onlines those there are.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::GuestError;

const CPU_DIR: &str = "devices/system/cpu";
const MEMORY_DIR: &str = "devices/system/memory";
const RETRIES: u32 = 50;
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What was onlined.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Onlined {
    pub cpus: u32,
    pub memory_blocks: u32,
}

/// The control files (`online` for CPUs, `state` for memory) of the
/// entries of `dir` named `<prefix><number>`, sorted by number.
fn controls(dir: &Path, prefix: &str, file: &str) -> Result<Vec<PathBuf>, GuestError> {
    let entries = match fs_err::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(prefix)?.parse::<u64>().ok()?;
            let control = e.path().join(file);
            control.exists().then_some((n, control))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Writes `on` to the controls that currently read `off`, at most `limit`
/// of them; returns how many took it.
fn online(controls: &[PathBuf], off: &str, on: &str, limit: u32) -> Result<u32, GuestError> {
    let mut done = 0;
    for control in controls {
        if done >= limit {
            break;
        }
        let state = fs_err::read_to_string(control)?;
        if state.trim() != off {
            continue;
        }
        match std::fs::write(control, on) {
            Ok(()) => {
                tracing::info!(control = %control.display(), "onlined");
                done += 1;
            }
            // Not ready yet (EBUSY, EAGAIN...): a later pass retries.
            Err(e) => tracing::debug!(control = %control.display(), error = %e, "cannot online"),
        }
    }
    Ok(done)
}

fn offline_count(controls: &[PathBuf], off: &str) -> u32 {
    controls
        .iter()
        .filter(|c| std::fs::read_to_string(c).is_ok_and(|s| s.trim() == off))
        .count() as u32
}

/// Onlines CPUs (then memory blocks unless `cpu_only`) below `sys`
/// (`/sys`). Blocking: CPUs are retried for a few seconds.
pub fn online_cpu_mem(sys: &Path, nb_cpus: u32, cpu_only: bool) -> Result<Onlined, GuestError> {
    let cpus = controls(&sys.join(CPU_DIR), "cpu", "online")?;
    let wanted = match nb_cpus {
        0 => offline_count(&cpus, "0"),
        n => n.min(offline_count(&cpus, "0")),
    };
    let mut out = Onlined::default();
    for attempt in 0..=RETRIES {
        out.cpus += online(&cpus, "0", "1", wanted - out.cpus)?;
        if out.cpus >= wanted {
            break;
        }
        if attempt == RETRIES {
            return Err(GuestError::CpusOffline {
                requested: wanted,
                onlined: out.cpus,
            });
        }
        std::thread::sleep(RETRY_PAUSE);
    }
    if !cpu_only {
        let blocks = controls(&sys.join(MEMORY_DIR), "memory", "state")?;
        out.memory_blocks = online(&blocks, "offline", "online", u32::MAX)?;
    }
    tracing::info!(nb_cpus, cpu_only, ?out, "OnlineCPUMem");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys() -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let cpu = sys.path().join(CPU_DIR);
        std::fs::create_dir_all(cpu.join("cpu0")).unwrap(); // no `online`: the boot CPU
        for (n, state) in [(1, "1"), (2, "0"), (3, "0"), (10, "0")] {
            let d = cpu.join(format!("cpu{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("online"), format!("{state}\n")).unwrap();
        }
        std::fs::create_dir_all(cpu.join("cpufreq")).unwrap();
        let mem = sys.path().join(MEMORY_DIR);
        for (n, state) in [(0, "online"), (7, "offline")] {
            let d = mem.join(format!("memory{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("state"), format!("{state}\n")).unwrap();
        }
        sys
    }

    fn read(sys: &Path, rel: &str) -> String {
        std::fs::read_to_string(sys.join(rel)).unwrap()
    }

    #[test]
    fn onlines_the_cpus_asked_for_in_order_then_memory() {
        let sys = fake_sys();
        let done = online_cpu_mem(sys.path(), 2, false).unwrap();
        assert_eq!(
            done,
            Onlined {
                cpus: 2,
                memory_blocks: 1
            }
        );
        assert_eq!(read(sys.path(), "devices/system/cpu/cpu2/online"), "1");
        assert_eq!(read(sys.path(), "devices/system/cpu/cpu3/online"), "1");
        assert_eq!(read(sys.path(), "devices/system/cpu/cpu10/online"), "0\n");
        assert_eq!(
            read(sys.path(), "devices/system/memory/memory7/state"),
            "online"
        );
    }

    #[test]
    fn zero_means_all_and_everything_online_is_a_no_op() {
        let sys = fake_sys();
        let done = online_cpu_mem(sys.path(), 0, true).unwrap();
        assert_eq!(done.cpus, 3);
        assert_eq!(done.memory_blocks, 0, "cpu_only");
        let again = online_cpu_mem(sys.path(), 4, false).unwrap();
        assert_eq!(
            again,
            Onlined {
                cpus: 0,
                memory_blocks: 1
            }
        );
        assert_eq!(
            online_cpu_mem(sys.path(), 4, false).unwrap(),
            Onlined::default()
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            online_cpu_mem(empty.path(), 1, false).unwrap(),
            Onlined::default()
        );
    }
}

//! Capabilities and resource limits of the jailed process.
//!
//! The child keeps the capabilities the kernel gives a namespace's creator
//! (all, in its own user namespace only) while it builds its root, then,
//! just before `execve`: locks the securebits (no capabilities from uid 0
//! or from set-id changes, ever), empties the bounding set, and clears the
//! ambient, inheritable, permitted and effective sets (the `caps` crate;
//! the securebits, which it does not cover, with `prctl`). The program
//! then runs as a non-root uid with `no_new_privs`: exec cannot give any
//! back.
//!
//! Limits are set by the parent with `prlimit(2)` before the child goes on:
//! the parent is host root, so it can raise a hard limit too (the child,
//! with no capability in the host's namespace, could only lower it).

use caps::{CapSet, Capability};
use nix::unistd::Pid;

use super::{JailError, Limits};

/// `SECBIT_NOROOT | SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS_LOCKED |
/// SECBIT_NO_CAP_AMBIENT_RAISE`, each with its lock (`securebits.h`).
const SECUREBITS_LOCKED: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;

/// The bounding-set capabilities the child must drop: all the kernel has
/// (a new user namespace starts with a full bounding set, whatever the
/// caller's). Fails closed if the kernel knows a capability the `caps`
/// crate does not, since that one could not be dropped.
pub fn bounding_to_drop() -> Result<Vec<Capability>, JailError> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .map_err(|e| JailError::Capabilities(format!("read cap_last_cap: {e}")))?;
    let last: u8 = last
        .trim()
        .parse()
        .map_err(|e| JailError::Capabilities(format!("cap_last_cap {last:?}: {e}")))?;
    let known = caps::all().iter().map(|c| c.index()).max().unwrap_or(0);
    if last > known {
        return Err(JailError::Capabilities(format!(
            "the kernel has capabilities up to {last}, the caps crate knows up to {known}"
        )));
    }
    let mut list: Vec<Capability> = caps::all()
        .into_iter()
        .filter(|c| c.index() <= last)
        .collect();
    list.sort_by_key(|c| c.index());
    Ok(list)
}

/// In the child, just before `execve`: drops every capability for good.
/// Allocation-free on success; the errno is the step's error.
pub fn drop_all(bounding: &[Capability]) -> nix::Result<()> {
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS_LOCKED, 0, 0, 0) } != 0 {
        return Err(nix::Error::last());
    }
    for &cap in bounding {
        caps::drop(None, CapSet::Bounding, cap).map_err(|_| nix::Error::last())?;
    }
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Permitted] {
        caps::clear(None, set).map_err(|_| nix::Error::last())?;
    }
    Ok(())
}

/// The limits, as `(resource, value, name)`; core dumps always off.
pub fn limit_list(l: &Limits) -> Vec<(u32, u64, &'static str)> {
    let unlimited = libc::RLIM_INFINITY;
    vec![
        (libc::RLIMIT_NOFILE, l.open_files, "RLIMIT_NOFILE"),
        (libc::RLIMIT_NPROC, l.processes, "RLIMIT_NPROC"),
        (libc::RLIMIT_CORE, 0, "RLIMIT_CORE"),
        (
            libc::RLIMIT_AS,
            l.address_space.unwrap_or(unlimited),
            "RLIMIT_AS",
        ),
        (
            libc::RLIMIT_FSIZE,
            l.file_size.unwrap_or(unlimited),
            "RLIMIT_FSIZE",
        ),
    ]
}

/// Sets the limits of the (waiting) child `pid`, soft and hard.
pub fn set_limits(name: &str, pid: Pid, l: &Limits) -> Result<(), JailError> {
    for (resource, value, limit) in limit_list(l) {
        let new = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // nix has no prlimit(2) (only setrlimit, on the caller itself).
        // SAFETY: `new` is a valid rlimit for the call's duration; the old
        // value is not asked for (null).
        let rc = unsafe { libc::prlimit(pid.as_raw(), resource, &new, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(JailError::Limit {
                name: name.into(),
                limit,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_dumps_are_always_off_and_unset_limits_are_unlimited() {
        let l = Limits {
            open_files: 64,
            processes: 32,
            address_space: Some(1 << 30),
            file_size: None,
        };
        let list = limit_list(&l);
        assert!(list.contains(&(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")));
        assert!(list.contains(&(libc::RLIMIT_NOFILE, 64, "RLIMIT_NOFILE")));
        assert!(list.contains(&(libc::RLIMIT_AS, 1 << 30, "RLIMIT_AS")));
        assert!(list.contains(&(libc::RLIMIT_FSIZE, libc::RLIM_INFINITY, "RLIMIT_FSIZE")));
    }

    #[test]
    fn the_kernel_capabilities_are_all_known() {
        // Fails closed on a kernel newer than the caps crate: say so here
        // first rather than at the first pod.
        bounding_to_drop().unwrap();
    }
}

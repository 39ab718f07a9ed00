//! SetGuestDateTime: the guest's wall clock.

use nix::errno::Errno;

use super::{require_init, GuestError};

/// Microseconds in a second: `usec` must stay below.
const USEC_PER_SEC: i64 = 1_000_000;

/// Checks the requested time: seconds since the epoch (not negative) and
/// microseconds in `0..1_000_000`. Returns the `timespec` to set.
pub fn timespec(sec: i64, usec: i64) -> Result<libc::timespec, GuestError> {
    if sec < 0 {
        return Err(GuestError::OutOfRange {
            what: "seconds",
            value: sec,
            range: "0 or more, since 1970-01-01",
        });
    }
    if !(0..USEC_PER_SEC).contains(&usec) {
        return Err(GuestError::OutOfRange {
            what: "microseconds",
            value: usec,
            range: "0 to 999999",
        });
    }
    let tv_sec = libc::time_t::try_from(sec).map_err(|_| GuestError::OutOfRange {
        what: "seconds",
        value: sec,
        range: "a time_t",
    })?;
    Ok(libc::timespec {
        tv_sec,
        tv_nsec: usec * 1000,
    })
}

/// Sets `CLOCK_REALTIME` to `sec` seconds and `usec` microseconds since the
/// epoch. Only as PID 1.
pub fn set(sec: i64, usec: i64) -> Result<(), GuestError> {
    let ts = timespec(sec, usec)?;
    require_init("set the clock")?;
    // SAFETY: `ts` is a valid timespec that outlives the call; the kernel
    // only reads it.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    Errno::result(rc).map_err(|e| GuestError::sys("set", "CLOCK_REALTIME", e))?;
    tracing::info!(sec, usec, "guest clock set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let ts = timespec(1_700_000_000, 999_999).unwrap();
        assert_eq!(ts.tv_sec, 1_700_000_000);
        assert_eq!(ts.tv_nsec, 999_999_000);
        let e = timespec(-1, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "seconds -1 is out of range (0 or more, since 1970-01-01)"
        );
        let e = timespec(0, 1_000_000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "microseconds 1000000 is out of range (0 to 999999)"
        );
        assert!(timespec(0, -1).is_err());
    }

    #[test]
    fn a_host_clock_is_left_alone() {
        assert!(matches!(set(0, 0), Err(GuestError::NotInit(_))));
    }
}

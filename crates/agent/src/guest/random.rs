//! ReseedRandomDev: entropy from the host into the guest's pool.
//!
//! The data goes to `/dev/random` with the `RNDADDENTROPY` ioctl, which
//! mixes it into the input pool *and* credits it as entropy (a plain write
//! mixes without crediting); the kernel then reseeds its CRNG from the pool.

use std::os::fd::AsRawFd;

use nix::errno::Errno;

use super::GuestError;

/// Largest seed accepted, in bytes.
pub const MAX_SEED: usize = 64 << 10;
const RANDOM_DEV: &str = "/dev/random";

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = nix::request_code_write!(b'R', 0x03, 8) as libc::c_ulong;

/// Checks the seed's size.
pub fn check(data: &[u8]) -> Result<(), GuestError> {
    if data.is_empty() {
        return Err(GuestError::Empty("seed"));
    }
    if data.len() > MAX_SEED {
        return Err(GuestError::TooLarge {
            what: "seed",
            len: data.len() as u64,
            max: MAX_SEED as u64,
        });
    }
    Ok(())
}

/// The `struct rand_pool_info` for `data`: entropy count in bits, buffer
/// size in bytes (native endian ints), then the bytes.
pub fn pool_info(data: &[u8]) -> Vec<u8> {
    let len = data.len() as i32;
    let mut info = Vec::with_capacity(8 + data.len());
    info.extend_from_slice(&len.saturating_mul(8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(data);
    info
}

/// Adds `data` to the entropy pool and credits it. Blocking.
pub fn reseed(data: &[u8]) -> Result<(), GuestError> {
    check(data)?;
    let dev = fs_err::OpenOptions::new().write(true).open(RANDOM_DEV)?;
    let info = pool_info(data);
    // SAFETY: `info` is a complete `struct rand_pool_info` (two ints, then
    // `buf_size` bytes) that lives across the call; the kernel only reads it.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    Errno::result(rc).map_err(|e| GuestError::sys("add entropy to", RANDOM_DEV, e))?;
    tracing::info!(bytes = data.len(), "entropy pool reseeded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded() {
        assert!(matches!(check(&[]), Err(GuestError::Empty("seed"))));
        assert!(check(&[1; MAX_SEED]).is_ok());
        let e = check(&vec![0; MAX_SEED + 1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("seed is {} bytes long, more than {MAX_SEED}", MAX_SEED + 1)
        );
    }

    #[test]
    fn pool_info_layout() {
        let info = pool_info(&[7, 8, 9]);
        assert_eq!(&info[..4], &24i32.to_ne_bytes());
        assert_eq!(&info[4..8], &3i32.to_ne_bytes());
        assert_eq!(&info[8..], &[7, 8, 9]);
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
    }
}

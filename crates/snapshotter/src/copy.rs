//! A snapshot image made from another: a reflink (`FICLONE`) where the
//! filesystem shares extents, else a sparse copy that writes only the data
//! ranges `SEEK_DATA`/`SEEK_HOLE` report, so a 1 GiB image holding a few
//! MiB costs a few MiB.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

/// Copies `src` to the new file `dst` (which must not exist).
pub fn copy_image(src: &Path, dst: &Path) -> io::Result<CopyKind> {
    let from = File::open(src)?;
    let to = File::options().write(true).create_new(true).open(dst)?;
    let result = (|| {
        if reflink(&from, &to)? {
            return Ok(CopyKind::Reflink);
        }
        sparse_copy(&from, &to)?;
        Ok(CopyKind::Sparse)
    })();
    match result {
        Ok(kind) => {
            to.sync_all()?;
            Ok(kind)
        }
        Err(e) => {
            let _ = std::fs::remove_file(dst);
            Err(e)
        }
    }
}

/// `FICLONE`: true if done, false if this filesystem cannot share extents.
fn reflink(from: &File, to: &File) -> io::Result<bool> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument;
    // both descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS) => {
            Ok(false)
        }
        _ => Err(err),
    }
}

/// Copies the data ranges of `from` into `to`, leaving holes as holes.
pub fn sparse_copy(from: &File, to: &File) -> io::Result<()> {
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let mut pos: u64 = 0;
    while pos < len {
        let data = match lseek(from.as_raw_fd(), pos as i64, Whence::SeekData) {
            Ok(off) => off as u64,
            // No data after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = match lseek(from.as_raw_fd(), data as i64, Whence::SeekHole) {
            Ok(off) => off as u64,
            Err(e) => return Err(e.into()),
        };
        copy_range(from, to, data, hole - data)?;
        pos = hole;
    }
    Ok(())
}

fn copy_range(from: &File, to: &File, start: u64, mut len: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start as i64, start as i64);
    while len > 0 {
        let chunk = len.min(1 << 30) as usize;
        let n =
            nix::fcntl::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source image shrank while being copied",
            ));
        }
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0xab; 8192]).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"tail data").unwrap();
        f.sync_all().unwrap();
        drop(f);

        let kind = copy_image(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), 64 << 20);
        if kind == CopyKind::Sparse {
            // Two small data ranges, not 64 MiB.
            assert!(
                allocated(&dst) < 1 << 20,
                "{} bytes allocated",
                allocated(&dst)
            );
        }
    }

    #[test]
    fn sparse_copy_of_empty_and_full_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [("empty", vec![]), ("full", vec![7u8; 100_000])] {
            let src = dir.path().join(name);
            std::fs::write(&src, &content).unwrap();
            let dst = dir.path().join(format!("{name}.copy"));
            let to = File::create(&dst).unwrap();
            sparse_copy(&File::open(&src).unwrap(), &to).unwrap();
            assert_eq!(std::fs::read(&dst).unwrap(), content, "{name}");
        }
    }

    #[test]
    fn copy_refuses_existing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&src, b"a").unwrap();
        std::fs::write(&dst, b"keep").unwrap();
        let err = copy_image(&src, &dst).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dst).unwrap(), b"keep");
    }
}

//! File helpers: hashes, atomic writes, a lock per directory, external tools.

use fs_err as fs;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::Error;

/// Lower-case hex sha256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// sha256 of a file's content, `None` if it cannot be read.
pub fn sha256_file(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).ok()?;
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Writes `data` to a temporary file beside `path`, then renames it over
/// `path`: readers see the old or the new content, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(fs::rename(&tmp, path)?)
}

/// Holds an exclusive lock on `dir/.lock` until dropped, so that concurrent
/// builds into one directory run one after the other.
pub fn lock_dir(dir: &Path) -> Result<Flock<File>, Error> {
    let path = dir.join(".lock");
    // Not `fs_err::File::lock`: std's `File::lock` needs Rust 1.89, above
    // the workspace's rust-version; nix's flock(2) has no path to name,
    // hence `Error::Lock`.
    let file = fs::File::create(&path)?.into_file();
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| Error::Lock { path, source })
}

/// Runs `cmd` and returns its stdout; on failure the error holds the last
/// lines of its stderr.
pub fn run(tool: &str, cmd: &mut Command) -> Result<Vec<u8>, Error> {
    tracing::debug!(?cmd, "running");
    let out = cmd.output().map_err(|source| Error::Spawn {
        tool: tool.into(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: tool.into(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr), 5, &out.status),
        });
    }
    Ok(out.stdout)
}

fn tail(stderr: &str, n: usize, status: &std::process::ExitStatus) -> String {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    if tail.is_empty() {
        status.to_string()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_tool_reports_its_stderr_tail() {
        let err = run(
            "sh",
            Command::new("sh").args([
                "-c",
                "for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 3",
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("sh failed: line3\n"), "{err}");
        assert!(err.ends_with("line7"), "{err}");
        let err = run("sh", Command::new("sh").args(["-c", "exit 4"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status: 4"), "{err}");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(sha256_file(&path).unwrap(), sha256(b"two"));
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! The guest's serial console log.
//!
//! The hypervisor driver appends the guest console (kernel and agent lines)
//! to `console.log` in the sandbox's state directory, which lives on
//! `/run`: memory. A pod that runs for weeks must not fill it, so a
//! [`Keeper`] rotates the log once it passes [`MAX_BYTES`]: the log is
//! copied to `console.log.1` (replacing the previous copy) and emptied.
//! Every driver keeps the log open for appending (the contract of
//! `capsa_hypervisor::VmConfig::console_log`), so its next line lands at
//! the new end. A line written
//! between the copy and the truncation is lost; the window is a few
//! microseconds every few megabytes of console output.
//!
//! [`follow`] reads the log line by line as it grows, across rotations
//! (what it had not read yet before a rotation it reads from the copy).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::task::JoinHandle;

/// Size past which the console log is rotated.
pub const MAX_BYTES: u64 = 4 << 20;
/// How often the keeper looks at the log's size.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often [`follow`] looks for new lines at the end of the log.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Where the previous part of the log at `path` is kept.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    path.with_file_name(name)
}

/// Rotates the log at `path` if it is larger than `max` bytes; whether it
/// did. A missing log is not an error (the VM has not opened it yet).
pub fn rotate_if_over(path: &Path, max: u64) -> io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    // Copied aside, then renamed: a reader of the copy never sees it half
    // written.
    let copy = rotated(path);
    let mut partial = copy.clone().into_os_string();
    partial.push(".new");
    std::fs::copy(path, &partial)?;
    std::fs::rename(&partial, &copy)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// Keeps the console log at `path` at most about `max` bytes (plus the
/// rotated copy) while it lives.
pub struct Keeper {
    task: JoinHandle<()>,
}

impl Keeper {
    pub fn start(path: PathBuf, max: u64) -> Self {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let p = path.clone();
                match tokio::task::spawn_blocking(move || rotate_if_over(&p, max)).await {
                    Ok(Ok(true)) => {
                        tracing::info!(log = %path.display(), max, "guest console log rotated");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(log = %path.display(), error = %e, "guest console log not rotated");
                    }
                    Err(_) => return,
                }
            }
        });
        Self { task }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Calls `line` with each complete line of the log at `path` (trailing
/// whitespace removed) as the log grows, until `running()` says the writer
/// is gone at the end of the log. Rotations by a [`Keeper`] lose nothing.
pub async fn follow<R, F>(path: &Path, mut line: impl FnMut(&str), mut running: R) -> io::Result<()>
where
    R: FnMut() -> F,
    F: Future<Output = bool>,
{
    let file = tokio::fs::File::open(path).await?;
    let mut reader = BufReader::new(file);
    // Bytes of the log consumed so far.
    let mut pos: u64 = 0;
    // Bytes, not a String: a console may carry anything, and one invalid
    // UTF-8 sequence must not end the forwarding.
    let mut buf = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut buf).await?;
        pos += n as u64;
        if buf.ends_with(b"\n") {
            emit(&mut line, &mut buf);
            continue;
        }
        // At the end of what was written so far (maybe mid-line).
        let len = match tokio::fs::metadata(path).await {
            Ok(m) => m.len(),
            // Removed with the sandbox's state.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                emit(&mut line, &mut buf);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if len < pos {
            // Rotated: the rest of the old part is in the copy.
            if let Ok(mut old) = tokio::fs::File::open(rotated(path)).await {
                old.seek(io::SeekFrom::Start(pos)).await?;
                old.read_to_end(&mut buf).await?;
            }
            for mut l in buf.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec) {
                emit(&mut line, &mut l);
            }
            buf.clear();
            reader.seek(io::SeekFrom::Start(0)).await?;
            pos = 0;
            continue;
        }
        if n == 0 && len == pos {
            if !running().await {
                emit(&mut line, &mut buf);
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}

fn emit(line: &mut impl FnMut(&str), buf: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(buf);
    let text = text.trim_end();
    if !text.is_empty() {
        line(text);
    }
    buf.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    fn appender(path: &Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn rotation_keeps_the_old_part_and_appends_from_the_start() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        assert!(!rotate_if_over(&log, 10).unwrap(), "no log yet");
        let mut w = appender(&log);
        w.write_all(b"0123456789\n").unwrap();
        assert!(!rotate_if_over(&log, 11).unwrap());
        assert!(rotate_if_over(&log, 10).unwrap());
        w.write_all(b"next\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "next\n");
        assert_eq!(
            std::fs::read_to_string(d.path().join("console.log.1")).unwrap(),
            "0123456789\n"
        );
    }

    #[tokio::test]
    async fn follow_reads_across_rotations_and_ends_with_the_writer() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        let mut w = appender(&log);
        w.write_all(b"one\ntw\xffo\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let running = Arc::new(Mutex::new(true));
        let follower = tokio::spawn({
            let (log, seen, running) = (log.clone(), seen.clone(), running.clone());
            async move {
                follow(
                    &log,
                    |l| seen.lock().unwrap().push(l.to_string()),
                    || {
                        let r = *running.lock().unwrap();
                        async move { r }
                    },
                )
                .await
            }
        });
        let wait_for = |n: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..100 {
                    if seen.lock().unwrap().len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("only {:?}", seen.lock().unwrap());
            }
        };
        wait_for(2).await;
        // Lines the follower has not read yet when the log is rotated come
        // from the copy.
        w.write_all(b"three\nfou").unwrap();
        assert!(rotate_if_over(&log, 4).unwrap());
        w.write_all(b"five\n").unwrap();
        wait_for(4).await;
        w.write_all(b"six").unwrap();
        *running.lock().unwrap() = false;
        follower.await.unwrap().unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            ["one", "tw\u{fffd}o", "three", "fou", "five", "six"]
        );
    }
}

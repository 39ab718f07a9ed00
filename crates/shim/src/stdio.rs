//! The host side of a process's stdio as containerd hands it over: FIFO
//! paths (`ctr`, CRI), `file://` and `binary://` log URIs, or nothing.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use capsa_runtime::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::error::Error;
use crate::process::Proc;

/// What containerd asked for.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// How long a logging binary may take to say it is ready (ms).
const LOGGER_READY_MS: u16 = 10_000;

type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// Opens the streams of `proc` of task `id` in `namespace`. Returns them
/// and whether there is a stdin to forward.
pub async fn open(id: &str, namespace: &str, proc: &Arc<Proc>) -> Result<(Stdio, bool), Error> {
    let paths = &proc.stdio;
    let (stdout, stderr) = if let Some(rest) = paths.stdout.strip_prefix("binary://") {
        // One logger for both streams.
        log_binary(id, namespace, rest)?
    } else {
        let stdout = output(id, "stdout", &paths.stdout).await?;
        let stderr = if paths.stderr.is_empty() || paths.terminal {
            Box::new(tokio::io::sink()) as Writer
        } else {
            output(id, "stderr", &paths.stderr).await?
        };
        (stdout, stderr)
    };
    let interactive = !paths.stdin.is_empty();
    let stdin = if interactive {
        input(id, &paths.stdin, proc.clone())?
    } else {
        Box::new(tokio::io::empty()) as Reader
    };
    Ok((
        Stdio {
            stdin,
            stdout,
            stderr,
            // containerd sends sizes with ResizePty.
            resize: None,
        },
        interactive,
    ))
}

fn io_err(id: &str, stream: &'static str, path: &str) -> impl FnOnce(std::io::Error) -> Error {
    let (id, path) = (id.to_string(), path.to_string());
    move |source| Error::Stdio {
        id,
        stream,
        path,
        source,
    }
}

async fn output(id: &str, stream: &'static str, uri: &str) -> Result<Writer, Error> {
    if uri.is_empty() {
        return Ok(Box::new(tokio::io::sink()));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(io_err(id, stream, path))?;
        return Ok(Box::new(file));
    }
    // A FIFO whose reader containerd opened already; if it did not (yet),
    // open it read-write so the open cannot fail with ENXIO.
    let sender = match pipe::OpenOptions::new().open_sender(uri) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(uri)
            .map_err(io_err(id, stream, uri))?,
        Err(e) => return Err(io_err(id, stream, uri)(e)),
    };
    Ok(Box::new(sender))
}

/// stdin from a FIFO, through a pipe that ends when CloseIO comes and
/// what the FIFO holds has been passed on. The FIFO is opened read-write:
/// it never reports end of file by itself, CloseIO is the end.
fn input(id: &str, path: &str, proc: Arc<Proc>) -> Result<Reader, Error> {
    let mut fifo = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(io_err(id, "stdin", path))?;
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                read = fifo.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => if tx.write_all(&buf[..n]).await.is_err() { break },
                },
                () = proc.close_stdin.notified() => {
                    // Pass on what is already in the FIFO, then end. With
                    // the system call itself: tokio's `try_read` answers
                    // WouldBlock until its reactor has seen the FIFO
                    // readable, and CloseIO can come first (the input was
                    // then lost: seen on UML, whose tasks start fast). The
                    // FIFO is non-blocking: EAGAIN once it is empty.
                    use std::os::fd::AsRawFd;
                    while let Ok(n) = nix::unistd::read(fifo.as_raw_fd(), &mut buf) {
                        if n == 0 || tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    break;
                }
            }
        }
        let _ = tx.shutdown().await;
    });
    Ok(Box::new(rx))
}

/// `binary:///path/to/logger?key=value`: containerd's logging binary
/// protocol. The binary gets the stdout and stderr pipes as fds 3 and 4
/// and closes fd 5 when it is ready; `CONTAINER_ID` and
/// `CONTAINER_NAMESPACE` are in its environment.
fn log_binary(id: &str, namespace: &str, rest: &str) -> Result<(Writer, Writer), Error> {
    let stream = "log binary";
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let args: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => format!("{k}={v}"),
            None => kv.to_string(),
        })
        .collect();
    // Close-on-exec: the logger gets exactly fds 3, 4 and 5 (dup2 clears
    // the flag there), no stray copy that would keep a pipe open.
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err(id, stream, path)(e.into()))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = std::process::Command::new(path);
    cmd.args(&args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null());
    // SAFETY: runs between fork and exec; dup2(2) is async-signal-safe and
    // the fds are open in the parent for the duration of spawn.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err(id, stream, path))?;
    tracing::info!(
        container = id,
        logger = path,
        pid = child.id(),
        "logging binary started"
    );
    // Reaped when it ends (the shim runs without a reaper).
    std::thread::spawn(move || child.wait());
    drop((out_r, err_r, ready_w));
    // The logger closes its end of the ready pipe once it is ready (or
    // exits); a logger that does neither is not waited for past the bound.
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&ready_r),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut fds, LOGGER_READY_MS);
    if !matches!(ready, Ok(n) if n > 0) {
        tracing::warn!(
            container = id,
            logger = path,
            "the logging binary did not signal readiness"
        );
    }
    let file = |fd: OwnedFd| Box::new(tokio::fs::File::from_std(std::fs::File::from(fd))) as Writer;
    Ok((file(out_w), file(err_w)))
}

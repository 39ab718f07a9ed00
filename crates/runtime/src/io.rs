//! Stdio of a process in the guest, pumped over the agent API: the
//! caller's stdin to WriteStdin, ReadStdout/ReadStderr to the caller.

use std::future::Future;
use std::time::Duration;

use capsa_agent_client::AgentClient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::Error;

/// Bytes asked of the agent per ReadStdout/ReadStderr call.
const READ_CHUNK: u32 = 32 * 1024;
/// How long the process gets after the stop signal before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long output may keep draining after the process exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long WaitProcess may take after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(15);

/// The caller's side of the process's stdio.
pub struct Stdio {
    pub stdin: Box<dyn AsyncRead + Send + Unpin>,
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
    /// The caller's terminal size (rows, columns), for a process with a
    /// terminal: every change is sent with TtyWinResize.
    pub resize: Option<tokio::sync::watch::Receiver<(u16, u16)>>,
}

/// One process of the guest: container and exec id.
#[derive(Clone)]
pub struct GuestProcess {
    pub agent: AgentClient,
    pub container_id: String,
    pub exec_id: String,
}

/// The pumps of a started process.
pub struct Pumps {
    stdin: Option<JoinHandle<()>>,
    stdout: JoinHandle<()>,
    stderr: Option<JoinHandle<()>>,
    resize: Option<JoinHandle<()>>,
}

impl GuestProcess {
    /// Starts pumping. Without `interactive`, the process's stdin is closed
    /// at once; with `terminal`, stderr is the same pty as stdout.
    pub async fn pump(
        &self,
        stdio: Stdio,
        interactive: bool,
        terminal: bool,
    ) -> Result<Pumps, Error> {
        let stdin = if interactive {
            Some(tokio::spawn(self.clone().pump_stdin(stdio.stdin)))
        } else {
            self.agent
                .close_stdin(&self.container_id, &self.exec_id)
                .await?;
            None
        };
        let stdout = tokio::spawn(self.clone().pump_output(false, stdio.stdout));
        let stderr =
            (!terminal).then(|| tokio::spawn(self.clone().pump_output(true, stdio.stderr)));
        let resize = match (terminal, stdio.resize) {
            (true, Some(rx)) => Some(tokio::spawn(self.clone().follow_size(rx))),
            _ => None,
        };
        Ok(Pumps {
            stdin,
            stdout,
            stderr,
            resize,
        })
    }

    /// Waits for the process to exit. When `stop` resolves to a signal
    /// number first, sends it, then SIGKILL after a grace period.
    pub async fn wait_or_stop(&self, stop: impl Future<Output = i32> + Send) -> Result<i32, Error> {
        let (agent, cid, eid) = (&self.agent, &self.container_id, &self.exec_id);
        let wait = agent.wait_process(cid, eid);
        tokio::pin!(wait);
        tokio::select! {
            status = &mut wait => return Ok(status?),
            signal = stop => {
                tracing::info!(container = %cid, exec = %eid, signal, "stopping the process");
                // It may have exited meanwhile: WaitProcess tells.
                if let Err(e) = agent.signal_process(cid, eid, signal as u32).await {
                    tracing::debug!(container = %cid, error = %e, "SignalProcess");
                }
            }
        }
        if let Ok(status) = tokio::time::timeout(STOP_GRACE, &mut wait).await {
            return Ok(status?);
        }
        tracing::info!(container = %cid, exec = %eid, "still running after {STOP_GRACE:?}: SIGKILL");
        agent.signal_process(cid, eid, libc::SIGKILL as u32).await?;
        tokio::time::timeout(KILL_WAIT, wait)
            .await
            .map_err(|_| Error::NoExit {
                container: cid.clone(),
                seconds: KILL_WAIT.as_secs(),
            })?
            .map_err(Error::from)
    }

    /// Sends each new terminal size to the process's pty.
    async fn follow_size(self, mut sizes: tokio::sync::watch::Receiver<(u16, u16)>) {
        while sizes.changed().await.is_ok() {
            let (rows, cols) = *sizes.borrow_and_update();
            let resized = self
                .agent
                .tty_win_resize(&self.container_id, &self.exec_id, rows.into(), cols.into())
                .await;
            match resized {
                Ok(()) => tracing::debug!(rows, cols, "terminal resized"),
                Err(e) => tracing::debug!(error = %e, "TtyWinResize"),
            }
        }
    }

    async fn pump_stdin(self, mut input: Box<dyn AsyncRead + Send + Unpin>) {
        let (cid, eid) = (&self.container_id, &self.exec_id);
        let mut buf = vec![0u8; READ_CHUNK as usize];
        loop {
            let n = match input.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Err(e) = self.agent.write_stdin(cid, eid, &buf[..n]).await {
                tracing::debug!(error = %e, "stdin closed by the agent");
                return;
            }
        }
        if let Err(e) = self.agent.close_stdin(cid, eid).await {
            tracing::debug!(error = %e, "CloseStdin");
        }
    }

    async fn pump_output(self, stderr: bool, mut out: Box<dyn AsyncWrite + Send + Unpin>) {
        let (cid, eid) = (&self.container_id, &self.exec_id);
        loop {
            let data = if stderr {
                self.agent.read_stderr(cid, eid, READ_CHUNK).await
            } else {
                self.agent.read_stdout(cid, eid, READ_CHUNK).await
            };
            // The agent ends a stream with an empty read or an error (Kata's EOF).
            let data = match data {
                Ok(d) if !d.is_empty() => d,
                _ => break,
            };
            if out.write_all(&data).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    }
}

impl Pumps {
    /// Stops every pump at once (the process's VM is gone: nothing more
    /// will come).
    pub fn abort(self) {
        let tasks = [Some(self.stdout), self.stderr, self.stdin, self.resize];
        for task in tasks.into_iter().flatten() {
            task.abort();
        }
    }

    /// Lets the output drain to end of file (bounded), stops the stdin pump.
    pub async fn finish(self) {
        drain(self.stdout).await;
        if let Some(stderr) = self.stderr {
            drain(stderr).await;
        }
        if let Some(stdin) = self.stdin {
            stdin.abort();
        }
        if let Some(resize) = self.resize {
            resize.abort();
        }
    }
}

async fn drain(mut task: JoinHandle<()>) {
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut task)
        .await
        .is_err()
    {
        tracing::warn!("output did not reach end of file in {DRAIN_TIMEOUT:?}");
        task.abort();
    }
}

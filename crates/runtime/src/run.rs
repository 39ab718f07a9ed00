//! `capsa run`: one container in a fresh sandbox, its stdio streamed to the
//! caller, its exit status returned, everything taken down afterwards.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use capsa_agent_client::AgentClient;
use capsa_config::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::spec::ProcessSpec;
use crate::vm::VmSize;
use crate::{Error, Sandbox};

/// Bytes asked of the agent per ReadStdout/ReadStderr call.
const READ_CHUNK: u32 = 32 * 1024;
/// How long the workload gets after the stop signal before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long output may keep draining after the workload exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub config: Config,
    pub rootfs: PathBuf,
    pub process: ProcessSpec,
    /// Forward the caller's stdin to the workload (`-i`).
    pub interactive: bool,
    pub size: VmSize,
}

/// The caller's side of the workload's stdio.
pub struct Stdio {
    pub stdin: Box<dyn AsyncRead + Send + Unpin>,
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
}

/// Runs the workload and returns its exit status (128+N when killed by
/// signal N). When `stop` resolves to a signal number, that signal is sent
/// to the workload, then SIGKILL after a grace period.
pub async fn run(
    spec: RunSpec,
    stdio: Stdio,
    stop: impl Future<Output = i32> + Send,
) -> Result<i32, Error> {
    if !spec.rootfs.is_dir() {
        return Err(Error::Rootfs(spec.rootfs.clone()));
    }
    let mut sandbox = Sandbox::start(&spec.config, spec.size).await?;
    let result = run_in(&mut sandbox, &spec, stdio, stop).await;
    let destroyed = sandbox.destroy().await;
    let status = result?;
    destroyed?;
    Ok(status)
}

async fn run_in(
    sandbox: &mut Sandbox,
    spec: &RunSpec,
    stdio: Stdio,
    stop: impl Future<Output = i32> + Send,
) -> Result<i32, Error> {
    let cid = sandbox.id().to_string();
    sandbox
        .create_container(&cid, &spec.rootfs, &spec.process)
        .await?;
    let agent = sandbox.agent().clone();
    agent.start_container(&cid).await?;
    tracing::info!(container = %cid, "workload started");

    let stdin = if spec.interactive {
        Some(tokio::spawn(pump_stdin(
            agent.clone(),
            cid.clone(),
            stdio.stdin,
        )))
    } else {
        agent.close_stdin(&cid, &cid).await?;
        None
    };
    let stdout = tokio::spawn(pump_output(agent.clone(), cid.clone(), false, stdio.stdout));
    // With a terminal, stderr is the same pty as stdout.
    let stderr = (!spec.process.terminal)
        .then(|| tokio::spawn(pump_output(agent.clone(), cid.clone(), true, stdio.stderr)));

    let status = wait_or_stop(&agent, &cid, stop).await;
    drain(stdout).await;
    if let Some(stderr) = stderr {
        drain(stderr).await;
    }
    if let Some(stdin) = stdin {
        stdin.abort();
    }
    let status = status?;
    tracing::info!(container = %cid, status, "workload exited");
    Ok(status)
}

async fn wait_or_stop(
    agent: &AgentClient,
    cid: &str,
    stop: impl Future<Output = i32> + Send,
) -> Result<i32, Error> {
    let wait = agent.wait_process(cid, cid);
    tokio::pin!(wait);
    tokio::select! {
        status = &mut wait => return Ok(status?),
        signal = stop => {
            tracing::info!(container = %cid, signal, "stopping the workload");
            // The workload may have exited meanwhile: WaitProcess tells.
            if let Err(e) = agent.signal_process(cid, cid, signal as u32).await {
                tracing::debug!(container = %cid, error = %e, "SignalProcess");
            }
        }
    }
    if let Ok(status) = tokio::time::timeout(STOP_GRACE, &mut wait).await {
        return Ok(status?);
    }
    tracing::info!(container = %cid, "workload still running after {STOP_GRACE:?}: SIGKILL");
    agent.signal_process(cid, cid, libc::SIGKILL as u32).await?;
    Ok(wait.await?)
}

async fn drain(task: JoinHandle<()>) {
    if tokio::time::timeout(DRAIN_TIMEOUT, task).await.is_err() {
        tracing::warn!("output did not reach end of file in {DRAIN_TIMEOUT:?}");
    }
}

async fn pump_stdin(agent: AgentClient, cid: String, mut input: Box<dyn AsyncRead + Send + Unpin>) {
    let mut buf = vec![0u8; READ_CHUNK as usize];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Err(e) = agent.write_stdin(&cid, &cid, &buf[..n]).await {
            tracing::debug!(error = %e, "stdin closed by the agent");
            return;
        }
    }
    if let Err(e) = agent.close_stdin(&cid, &cid).await {
        tracing::debug!(error = %e, "CloseStdin");
    }
}

async fn pump_output(
    agent: AgentClient,
    cid: String,
    stderr: bool,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
) {
    loop {
        let data = if stderr {
            agent.read_stderr(&cid, &cid, READ_CHUNK).await
        } else {
            agent.read_stdout(&cid, &cid, READ_CHUNK).await
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

//! `capsa run`.

use std::path::Path;

use anyhow::Context;
use capsa_runtime::{ProcessSpec, RunSpec, Stdio, VmSize};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::RunArgs;
use crate::terminal::RawMode;

pub async fn run(config: Option<&Path>, args: RunArgs) -> anyhow::Result<u8> {
    let (config, source) = capsa_config::load(config)?;
    tracing::info!(%source, "configuration");
    let (uid, gid) = args.user.unwrap_or((0, 0));
    let spec = RunSpec {
        config,
        rootfs: args.rootfs,
        process: ProcessSpec {
            args: args.command,
            env: args.env,
            cwd: args.cwd,
            uid,
            gid,
            terminal: args.tty,
        },
        interactive: args.interactive,
        size: VmSize {
            vcpus: args.vcpus,
            memory_mib: args.memory,
        },
    };
    let stdin: Box<dyn tokio::io::AsyncRead + Send + Unpin> = if args.interactive {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::io::empty())
    };
    let stdio = Stdio {
        stdin,
        stdout: Box::new(tokio::io::stdout()),
        stderr: Box::new(tokio::io::stderr()),
    };
    // With a terminal and -i, keystrokes (Ctrl-C included) go to the workload.
    let _raw = (args.tty && args.interactive)
        .then(RawMode::enable_on_stdin)
        .flatten();
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let stop = async move {
        tokio::select! {
            _ = sigint.recv() => libc::SIGINT,
            _ = sigterm.recv() => libc::SIGTERM,
        }
    };
    let status = capsa_runtime::run(spec, stdio, stop)
        .await
        .context("capsa run")?;
    Ok(u8::try_from(status).unwrap_or(255))
}

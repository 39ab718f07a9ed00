//! `capsa exec`: a process in a running sandbox's container, or with
//! `--vm` a shell in the VM's root environment (the debug console).

use std::path::Path;

use anyhow::Context;
use capsa_runtime::{Found, ProcessSpec, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::ExecArgs;
use crate::cmd::run::stop_signal;
use crate::terminal::{self, RawMode};

pub async fn exec(config: Option<&Path>, args: ExecArgs) -> anyhow::Result<u8> {
    let (config, _) = capsa_config::load(config)?;
    let found = Found::open(&config.runtime.state_dir, &args.id)?;
    if args.vm {
        return debug_console(&found).await;
    }
    let (uid, gid) = args.user.unwrap_or((0, 0));
    let process = ProcessSpec {
        args: args.command,
        env: args.env,
        cwd: args.cwd,
        uid,
        gid,
        terminal: args.tty,
        console_size: args.tty.then(terminal::size).flatten(),
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
    let _raw = (args.tty && args.interactive)
        .then(RawMode::enable_on_stdin)
        .flatten();
    let status = found
        .exec(None, &process, args.interactive, stdio, stop_signal()?)
        .await
        .with_context(|| format!("exec in sandbox {}", args.id))?;
    Ok(u8::try_from(status).unwrap_or(255))
}

/// Relays stdin and stdout to the guest's debug console until either side
/// closes.
async fn debug_console(found: &Found) -> anyhow::Result<u8> {
    let stream = found
        .debug_console()
        .await
        .with_context(|| format!("open the debug console of {}", found.record.id))?;
    let _raw = RawMode::enable_on_stdin();
    let (mut from_vm, mut to_vm) = stream.into_split();
    let upstream = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_vm.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Keep the connection open for the shell's last output: only
        // the write half is shut down.
        let _ = to_vm.shutdown().await;
    });
    let mut stdout = tokio::io::stdout();
    tokio::io::copy(&mut from_vm, &mut stdout)
        .await
        .context("relay the debug console")?;
    let _ = stdout.flush().await;
    upstream.abort();
    Ok(0)
}

//! `capsa exec`: a process in a running sandbox's container, or with
//! `--vm` a shell in the VM's root environment (the debug console).

use std::path::Path;

use anyhow::Context;
use capsa_runtime::Found;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::ExecArgs;
use crate::cmd::run::stop_signal;
use crate::terminal::RawMode;

pub async fn exec(config: Option<&Path>, args: ExecArgs) -> anyhow::Result<u8> {
    let (config, _) = capsa_runtime::load_config(config)?;
    let found = Found::open(&config.runtime.state_dir, &args.id)?;
    if args.vm {
        return debug_console(&found).await;
    }
    let process = args.process.spec(args.command);
    let stdio = args.process.stdio();
    let _raw = args.process.raw_terminal();
    let status = found
        .exec(
            None,
            &process,
            args.process.interactive,
            stdio,
            stop_signal()?,
        )
        .await
        .with_context(|| format!("exec in sandbox {}", args.id))?;
    Ok(u8::try_from(status).unwrap_or(255))
}

/// How long the console may stay silent after our input ended before
/// capsa closes it (piped input that did not end the shell).
const QUIET_AFTER_INPUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Relays stdin and stdout to the guest's debug console until the shell
/// exits (the guest closes the connection), or, once stdin has ended, the
/// console has been quiet for [`QUIET_AFTER_INPUT`]. (Nothing is sent for
/// the end of input: the shell asks its terminal questions, such as the
/// cursor position, and would take a ^D or an `exit` as their answer.)
async fn debug_console(found: &Found) -> anyhow::Result<u8> {
    let stream = found
        .debug_console()
        .await
        .with_context(|| format!("open the debug console of {}", found.record.id))?;
    let _raw = RawMode::enable_on_stdin();
    let (mut from_vm, mut to_vm) = stream.into_split();
    let (done_tx, mut input_done) = tokio::sync::watch::channel(false);
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
        let _ = done_tx.send(true);
        // Keep the write half (and the connection) open.
        std::future::pending::<()>().await;
    });
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 4096];
    loop {
        let read = if *input_done.borrow() {
            match tokio::time::timeout(QUIET_AFTER_INPUT, from_vm.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = from_vm.read(&mut buf) => r,
                _ = input_done.changed() => continue,
            }
        };
        match read.context("read the debug console")? {
            0 => break,
            n => {
                stdout.write_all(&buf[..n]).await.context("write stdout")?;
                stdout.flush().await.context("write stdout")?;
            }
        }
    }
    upstream.abort();
    Ok(0)
}

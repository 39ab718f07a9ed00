//! `capsa run`, attached or detached (`-d`).
//!
//! Detached, `capsa run -d` creates the sandbox's state directory, starts
//! a copy of itself in a new session with `CAPSA_DETACHED_DIR` set (the
//! sandbox's owner: it boots the VM, logs the workload's output and takes
//! the VM down when the workload exits), waits for its one-line report on
//! a pipe, prints the sandbox id and exits.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use capsa_runtime::resource::Rootfs;
use capsa_runtime::state::StateDir;
use capsa_runtime::{RunSpec, Timeline, VmSize};
use tokio::signal::unix::{signal, SignalKind};
use tracing::Instrument;

use crate::args::RunArgs;

/// Set in the environment of the detached owner: its state directory.
pub const DETACHED_DIR_ENV: &str = "CAPSA_DETACHED_DIR";
/// The owner's report of a good start.
const READY: &str = "ok";

pub async fn run(config: Option<&Path>, args: RunArgs) -> anyhow::Result<u8> {
    let (config, source) = capsa_runtime::load_config(config)?;
    tracing::info!(%source, "configuration");
    // annotations (issue 25): --annotation, gated as a pod's annotations.
    let annotations = args.annotations.iter().cloned().collect();
    let config = capsa_config::apply_annotations(&config, &annotations)?.config;
    if let Some(file) = &args.timeline {
        check_timeline_path(file)?;
    }
    if let Some(dir) = std::env::var_os(DETACHED_DIR_ENV) {
        let timeline = args.timeline.clone();
        let status = own(config, args, PathBuf::from(dir))
            .instrument(capsa_runtime::step!("capsa run"))
            .await;
        write_timeline(timeline.as_deref());
        return status;
    }
    if args.detach {
        return detach(&config, &args).await;
    }
    let name = args.name.clone();
    let stdio = args.process.stdio();
    let _raw = args.process.raw_terminal();
    let timeline = args.timeline.clone();
    let spec = run_spec(config, args)?;
    let status = capsa_runtime::run(spec, name.as_deref(), stdio, stop_signal()?)
        .instrument(capsa_runtime::step!("capsa run"))
        .await;
    write_timeline(timeline.as_deref());
    let status = status.context("capsa run")?;
    Ok(u8::try_from(status).unwrap_or(255))
}

/// The timeline of this process's sandbox (`--timeline`).
pub fn timeline() -> &'static Timeline {
    static TIMELINE: OnceLock<Timeline> = OnceLock::new();
    TIMELINE.get_or_init(Timeline::new)
}

/// Fails before a VM boots on a `--timeline` file that cannot be written
/// where it is asked for.
fn check_timeline_path(file: &Path) -> anyhow::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--timeline {}: directory {} does not exist",
            file.display(),
            dir.display()
        );
    }
    if file.is_dir() {
        bail!("--timeline {}: is a directory", file.display());
    }
    Ok(())
}

/// Writes the timeline once the sandbox is down (a failure is logged: the
/// workload's status matters more).
fn write_timeline(file: Option<&Path>) {
    let Some(file) = file else { return };
    match timeline().write_svg(file) {
        Ok(()) => tracing::info!(file = %file.display(), "timeline written"),
        Err(e) => tracing::warn!(file = %file.display(), error = %e, "timeline not written"),
    }
}

fn run_spec(config: capsa_config::Config, args: RunArgs) -> anyhow::Result<RunSpec> {
    let network = args.network().map_err(anyhow::Error::msg)?;
    Ok(RunSpec {
        config,
        rootfs: match (args.rootfs, args.rootfs_image) {
            (_, Some(image)) => Rootfs::Image(image),
            (Some(dir), None) => Rootfs::Dir(dir),
            // clap requires one of them.
            (None, None) => Rootfs::Dir(PathBuf::new()),
        },
        process: args.process.spec(args.command),
        volumes: args.volumes,
        interactive: args.process.interactive,
        size: VmSize {
            vcpus: args.vcpus,
            memory_mib: args.memory,
        },
        network,
    })
}

/// SIGINT or SIGTERM, as the signal number.
pub fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = i32>> {
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = sigint.recv() => libc::SIGINT,
            _ = sigterm.recv() => libc::SIGTERM,
        }
    })
}

/// The parent side of `run -d`.
async fn detach(config: &capsa_config::Config, args: &RunArgs) -> anyhow::Result<u8> {
    if let Some(dir) = args.rootfs.as_ref().filter(|d| !d.is_dir()) {
        bail!("rootfs {} is not a directory", dir.display());
    }
    args.network().map_err(anyhow::Error::msg)?;
    let root = &config.runtime.state_dir;
    for stale in StateDir::collect_stale(root) {
        tracing::info!(sandbox = %stale, "removed the state of a sandbox whose capsa died");
    }
    let id = args.name.clone().unwrap_or_else(capsa_runtime::vm::new_id);
    let dir = StateDir::create(root, &id).context("create the sandbox's state directory")?;
    match spawn_owner(&dir) {
        Ok((mut owner, report)) => {
            let result = tokio::task::spawn_blocking(move || read_report(report))
                .await
                .context("wait for the sandbox's owner")?;
            match result {
                Some(line) if line == READY => {
                    crate::output::line(&id)?;
                    Ok(0)
                }
                Some(line) => {
                    let text = line.strip_prefix("error: ").unwrap_or(&line);
                    let message = serde_json::from_str::<String>(text).unwrap_or(line.clone());
                    // The owner cleaned up before it reported; let it end
                    // before we do, so nothing of the sandbox outlives us.
                    let _ = tokio::task::spawn_blocking(move || owner.wait()).await;
                    bail!("{message}")
                }
                None => {
                    // The owner died without a word: nobody else cleans up.
                    let _ = tokio::task::spawn_blocking(move || owner.wait()).await;
                    let log = capsa_runtime::state::tail(&dir.path().join("capsa.log"), 20);
                    if let Err(e) = dir.remove() {
                        tracing::warn!(error = %e, "state directory not removed");
                    }
                    bail!("the sandbox's owner exited during start; its log ends with:\n{log}")
                }
            }
        }
        Err(e) => {
            let _ = dir.remove();
            Err(e)
        }
    }
}

/// Starts the owner; returns it and the read end of its report pipe.
fn spawn_owner(dir: &StateDir) -> anyhow::Result<(std::process::Child, std::fs::File)> {
    let log_path = dir.path().join("capsa.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create a pipe")?;
    let exe = std::env::current_exe().context("find capsa's own executable")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(DETACHED_DIR_ENV, dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(write)
        .stderr(log);
    // SAFETY: runs in the child between fork and exec; setsid(2) is
    // async-signal-safe. A session of its own: the owner outlives this
    // process and its terminal.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    tracing::info!(pid = child.id(), dir = %dir.path().display(), "sandbox owner started");
    // Ours until the owner claims it; the owner's from now on, even if this
    // process dies first.
    if let Err(e) = dir.hand_over(child.id()) {
        tracing::warn!(error = %e, "state directory not handed over to its owner");
    }
    // `cmd` holds the write end: drop it so that EOF comes if the owner dies.
    drop(cmd);
    Ok((child, std::fs::File::from(read)))
}

fn read_report(pipe: std::fs::File) -> Option<String> {
    let mut line = String::new();
    match std::io::BufReader::new(pipe).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim_end().to_string()),
        _ => None,
    }
}

/// The detached owner: runs the sandbox, reports on stdout once.
async fn own(config: capsa_config::Config, args: RunArgs, dir: PathBuf) -> anyhow::Result<u8> {
    let dir = StateDir::existing(&dir)?;
    tracing::info!(sandbox = %dir.id(), "owner of a detached sandbox");
    let spec = run_spec(config, args)?;
    let ready = |result: Result<&capsa_runtime::Sandbox, &capsa_runtime::Error>| {
        let line = match result {
            Ok(_) => READY.to_string(),
            // One line: the message (guest console tails have newlines)
            // travels as a JSON string.
            Err(e) => format!(
                "error: {}",
                serde_json::Value::from(capsa_runtime::error_chain(e))
            ),
        };
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        // Nothing else goes to the parent: stdout becomes /dev/null.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
        }
    };
    let status = capsa_runtime::run_detached(spec, dir, ready, stop_signal()?).await?;
    tracing::info!(status, "the workload exited; sandbox stopped");
    Ok(u8::try_from(status).unwrap_or(255))
}

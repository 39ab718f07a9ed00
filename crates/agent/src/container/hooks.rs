//! Guest hooks: the OCI hooks of a spec the agent receives, run in the
//! guest as Kata's agent runs them.
//!
//! capsa's runtime never sends the hooks of a container's spec (they name
//! host binaries); a runtime that sends some means guest binaries. They
//! run as guest root, in the VM, never on the host.
//!
//! Where each kind runs:
//! - `createContainer` and `startContainer` stay in the spec: libcontainer
//!   runs them in the container's init process (in the container's
//!   namespaces), as the OCI runtime spec says;
//! - `createRuntime` and `prestart` run here once the container is created
//!   (its init waiting for StartContainer), `poststart` once it is started
//!   and `poststop` once it is deleted, each in the agent's namespaces.
//!   So `createRuntime` runs after `createContainer`, the reverse of the
//!   OCI order: libcontainer asks for it in the middle of its create, where
//!   the agent cannot step in.
//!   libcontainer would run these in the agent process and wait for them
//!   with `waitpid(pid)`, which races with the agent's central reaper: they
//!   are taken out of the spec and run here, their status taken from the
//!   reaper.
//!
//! Each hook gets the container's OCI state on stdin, exactly its `env`,
//! and is killed when its `timeout` (seconds) passes. A failing
//! `createRuntime` or `prestart` hook fails CreateContainer (the container
//! is deleted); a failing `poststart` or `poststop` hook is logged.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{ContainerState, Hook, Spec, State, StateBuilder};

use crate::reaper::Reaper;

/// How long a hook without a timeout may run.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: cannot start it")]
    Spawn {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} hook {path}: cannot watch it")]
    Watch {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: crate::reaper::ReaperError,
    },
    #[error("{kind} hook {path} exited with status {status}")]
    Failed {
        kind: &'static str,
        path: PathBuf,
        status: i32,
    },
    #[error("{kind} hook {path} did not finish in {timeout:?}: killed")]
    Timeout {
        kind: &'static str,
        path: PathBuf,
        timeout: Duration,
    },
}

/// The hooks the agent runs itself, and what their state says.
#[derive(Debug, Clone, Default)]
pub struct AgentHooks {
    id: String,
    bundle: PathBuf,
    annotations: HashMap<String, String>,
    /// `prestart` then `createRuntime`.
    created: Vec<Hook>,
    poststart: Vec<Hook>,
    poststop: Vec<Hook>,
}

impl AgentHooks {
    /// Takes out of `spec` the hooks the agent runs (see the module's
    /// documentation); `createContainer` and `startContainer` stay.
    pub fn take(spec: &mut Spec, id: &str, bundle: PathBuf) -> Self {
        let mut hooks = AgentHooks {
            id: id.to_string(),
            bundle,
            annotations: spec.annotations().clone().unwrap_or_default(),
            ..Default::default()
        };
        let Some(h) = spec.hooks_mut().as_mut() else {
            return hooks;
        };
        #[allow(deprecated)] // prestart: deprecated by OCI, still sent by runtimes
        let prestart = h.prestart_mut().take();
        hooks.created = prestart.into_iter().flatten().collect();
        hooks
            .created
            .extend(h.create_runtime_mut().take().into_iter().flatten());
        hooks.poststart = h.poststart_mut().take().unwrap_or_default();
        hooks.poststop = h.poststop_mut().take().unwrap_or_default();
        if h.create_container().is_none() && h.start_container().is_none() {
            spec.set_hooks(None);
        }
        hooks
    }

    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.poststart.is_empty() && self.poststop.is_empty()
    }

    fn state(&self, status: ContainerState, pid: Option<i32>) -> State {
        let mut b = StateBuilder::default()
            .version(oci_spec::runtime::VERSION.to_string())
            .id(self.id.clone())
            .status(status)
            .bundle(self.bundle.clone())
            .annotations(self.annotations.clone());
        if let Some(pid) = pid {
            b = b.pid(pid);
        }
        b.build().expect("every field of the state is set")
    }

    /// `prestart` and `createRuntime`: the container exists, its init waits.
    pub async fn created(&self, pid: i32, reaper: &Reaper) -> Result<(), HookError> {
        let state = self.state(ContainerState::Created, Some(pid));
        run_all("createRuntime", &self.created, &state, reaper).await
    }

    /// `poststart`: failures are logged.
    pub async fn started(&self, pid: i32, reaper: &Reaper) {
        let state = self.state(ContainerState::Running, Some(pid));
        self.log_failure(run_all("poststart", &self.poststart, &state, reaper).await);
    }

    /// `poststop`: failures are logged.
    pub async fn stopped(&self, reaper: &Reaper) {
        let state = self.state(ContainerState::Stopped, None);
        self.log_failure(run_all("poststop", &self.poststop, &state, reaper).await);
    }

    fn log_failure(&self, result: Result<(), HookError>) {
        if let Err(e) = result {
            tracing::warn!(container = %self.id, "{}", crate::error::chain(&e));
        }
    }
}

/// Runs `hooks` in order; stops at the first failure.
async fn run_all(
    kind: &'static str,
    hooks: &[Hook],
    state: &State,
    reaper: &Reaper,
) -> Result<(), HookError> {
    let json = serde_json::to_vec(state).unwrap_or_default();
    for hook in hooks {
        run(kind, hook, &json, reaper).await?;
        tracing::info!(container = %state.id(), path = %hook.path().display(), "{kind} hook done");
    }
    Ok(())
}

async fn run(
    kind: &'static str,
    hook: &Hook,
    state: &[u8],
    reaper: &Reaper,
) -> Result<(), HookError> {
    let path = hook.path().clone();
    // Checked first: std's spawn, when exec fails in the child, may wait
    // for it itself, racing with the reaper.
    if let Err(source) = std::fs::metadata(&path).and_then(|m| {
        if m.is_file() {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ))
        }
    }) {
        return Err(HookError::Spawn { kind, path, source });
    }
    let mut cmd = Command::new(&path);
    match hook.args().as_deref() {
        Some([arg0, rest @ ..]) => cmd.arg0(arg0).args(rest),
        _ => &mut cmd,
    };
    let env = hook
        .env()
        .iter()
        .flatten()
        .filter_map(|e| e.split_once('='));
    cmd.env_clear()
        .envs(env)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The reaper keeps the hook's status even if it exits before it is
    // watched.
    let hold = reaper.hold();
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        kind,
        path: path.clone(),
        source,
    })?;
    let pid = child.id() as i32;
    let exit = reaper.watch(pid).map_err(|source| HookError::Watch {
        kind,
        path: path.clone(),
        source,
    });
    drop(hold);
    let exit = exit?;
    if let Some(mut stdin) = child.stdin.take() {
        // Not waited for: a hook that does not read its state must not
        // block the timeout (its exit ends the write with EPIPE).
        let state = state.to_vec();
        tokio::task::spawn_blocking(move || stdin.write_all(&state));
    }
    let timeout = hook
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let status = match tokio::time::timeout(timeout, exit.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            exit.wait().await;
            return Err(HookError::Timeout {
                kind,
                path,
                timeout,
            });
        }
    };
    if status != 0 {
        return Err(HookError::Failed { kind, path, status });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder};

    fn hook(path: &str) -> Hook {
        HookBuilder::default().path(path).build().unwrap()
    }

    #[test]
    #[allow(deprecated)]
    fn agent_hooks_are_taken_and_container_hooks_stay() {
        let mut spec = Spec::default();
        spec.set_hooks(Some(
            HooksBuilder::default()
                .prestart(vec![hook("/pre")])
                .create_runtime(vec![hook("/cr")])
                .create_container(vec![hook("/cc")])
                .start_container(vec![hook("/sc")])
                .poststart(vec![hook("/ps")])
                .poststop(vec![hook("/po")])
                .build()
                .unwrap(),
        ));
        let hooks = AgentHooks::take(&mut spec, "c", "/b".into());
        let paths = |v: &[Hook]| v.iter().map(|h| h.path().clone()).collect::<Vec<_>>();
        assert_eq!(paths(&hooks.created), [PathBuf::from("/pre"), "/cr".into()]);
        assert_eq!(paths(&hooks.poststart), [PathBuf::from("/ps")]);
        assert_eq!(paths(&hooks.poststop), [PathBuf::from("/po")]);
        let left = spec.hooks().as_ref().expect("container hooks stay");
        assert!(left.prestart().is_none() && left.poststop().is_none());
        assert_eq!(left.create_container().as_ref().unwrap().len(), 1);
        assert_eq!(left.start_container().as_ref().unwrap().len(), 1);

        let mut spec = Spec::default();
        spec.set_hooks(Some(
            HooksBuilder::default()
                .poststop(vec![hook("/po")])
                .build()
                .unwrap(),
        ));
        let hooks = AgentHooks::take(&mut spec, "c", "/b".into());
        assert!(!hooks.is_empty());
        assert!(spec.hooks().is_none(), "nothing left for libcontainer");
    }
}

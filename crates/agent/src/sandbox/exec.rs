//! ExecProcess, TtyWinResize, PauseContainer and ResumeContainer.

use std::sync::{Arc, PoisonError};

use oci_spec::runtime::Process as OciProcess;

use super::{Container, ContainerState, Sandbox, SandboxError};
use crate::container;
use crate::passfd;
use crate::process::Process;
use crate::validate;

impl Sandbox {
    /// Runs `process` in the running container `container_id` as
    /// `exec_id`; its stdio is reachable under that exec id, or through
    /// the passfd streams `io` names.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: OciProcess,
        io: passfd::Ports,
    ) -> Result<(), SandboxError> {
        validate::exec_id(exec_id)?;
        let c = self.container(container_id).await?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(SandboxError::NoArgs(exec_id.to_string()));
        }
        match c.state() {
            ContainerState::Running => {}
            ContainerState::Created => return Err(SandboxError::NotRunning(c.id.clone())),
            ContainerState::Paused => return Err(SandboxError::Paused(c.id.clone())),
        }
        if c.init.status().is_some() {
            return Err(SandboxError::NotRunning(c.id.clone()));
        }
        let streams = passfd::claim(io).await?;
        reserve_exec(&c, exec_id)?;
        let reaper = self.reaper.clone();
        let (target, eid) = (c.clone(), exec_id.to_string());
        let spawned = tokio::task::spawn_blocking(move || {
            container::exec(&target.id, &eid, &process, &target.namespaces, &reaper)
        })
        .await;
        let mut execs = c.execs.lock().unwrap_or_else(PoisonError::into_inner);
        let spawned = match spawned {
            Ok(Ok(spawned)) => spawned,
            Ok(Err(e)) => {
                execs.remove(exec_id);
                return Err(SandboxError::Container(c.id.clone(), Box::new(e)));
            }
            Err(e) => {
                execs.remove(exec_id);
                return Err(e.into());
            }
        };
        tracing::info!(container = %c.id, exec = exec_id, pid = spawned.pid, "exec process started");
        let process = Arc::new(Process {
            exec_id: exec_id.to_string(),
            pid: spawned.pid,
            exit: spawned.exit,
            stdio: spawned.stdio,
        });
        passfd::attach(&process, streams);
        execs.insert(exec_id.to_string(), Some(process));
        Ok(())
    }

    /// Sets the terminal size of a process that has a terminal.
    pub async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), SandboxError> {
        let process = self.process(container_id, exec_id).await?;
        let (Ok(r), Ok(c)) = (u16::try_from(rows), u16::try_from(cols)) else {
            return Err(SandboxError::WinSize { rows, cols });
        };
        let no_terminal = || SandboxError::NoTerminal {
            container_id: container_id.to_string(),
            exec_id: process.exec_id.clone(),
        };
        let master = process.stdio.console().ok_or_else(no_terminal)?;
        container::console::set_size(master, r, c)
            .map_err(|e| SandboxError::Console(container_id.to_string(), e))?;
        tracing::debug!(container = container_id, exec = %process.exec_id, rows, cols, "terminal resized");
        Ok(())
    }

    /// Freezes every process of the container.
    pub async fn pause_container(&self, id: &str) -> Result<(), SandboxError> {
        let c = self.container(id).await?;
        match c.state() {
            ContainerState::Running => {}
            ContainerState::Created => return Err(SandboxError::NotRunning(id.to_string())),
            ContainerState::Paused => return Err(SandboxError::Paused(id.to_string())),
        }
        self.freeze(&c, true).await?;
        tracing::info!(container = id, "container paused");
        Ok(())
    }

    /// Thaws a paused container.
    pub async fn resume_container(&self, id: &str) -> Result<(), SandboxError> {
        let c = self.container(id).await?;
        if c.state() != ContainerState::Paused {
            return Err(SandboxError::NotPaused(id.to_string()));
        }
        self.freeze(&c, false).await?;
        tracing::info!(container = id, "container resumed");
        Ok(())
    }

    async fn freeze(&self, c: &Arc<Container>, frozen: bool) -> Result<(), SandboxError> {
        let cc = c.clone();
        tokio::task::spawn_blocking(move || {
            let mut handle = cc.handle.lock().unwrap_or_else(PoisonError::into_inner);
            if frozen {
                container::pause(&mut handle)?;
            } else {
                container::resume(&mut handle)?;
            }
            *cc.state.lock().unwrap_or_else(PoisonError::into_inner) = if frozen {
                ContainerState::Paused
            } else {
                ContainerState::Running
            };
            Ok(())
        })
        .await?
        .map_err(|e| SandboxError::Container(c.id.clone(), Box::new(e)))
    }
}

/// Claims `exec_id` in the container, refusing ids already in use (the
/// init's ids included).
fn reserve_exec(c: &Container, exec_id: &str) -> Result<(), SandboxError> {
    let mut execs = c.execs.lock().unwrap_or_else(PoisonError::into_inner);
    if exec_id == c.id || exec_id == c.init.exec_id || execs.contains_key(exec_id) {
        return Err(SandboxError::ExecExists {
            container_id: c.id.clone(),
            exec_id: exec_id.to_string(),
        });
    }
    execs.insert(exec_id.to_string(), None);
    Ok(())
}

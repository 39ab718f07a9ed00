//! Extra processes in a running container (`runc exec`): libcontainer's
//! tenant builder joins the container's namespaces, as they were created
//! (see [`super::namespaces`]), and its cgroup, and runs the process
//! described by a `process.json`.

use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::State;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{Process, Spec};

use super::namespaces::{Holder, Namespaces};
use super::{bundle_dir, lock, receive_terminal, ContainerError, PendingIo, WorkloadExecutor};
use crate::reaper::{ExitWatch, Reaper};
use crate::stdio::Stdio;

/// A process started in a running container.
pub struct Spawned {
    pub pid: i32,
    pub exit: ExitWatch,
    pub stdio: Stdio,
}

/// Runs `process` in container `id` as exec `exec_id`. What the request
/// leaves out (capabilities, `noNewPrivileges`) comes from the container's
/// own process, as with `runc exec`. It runs in the namespaces `ns`, the
/// container's as created. Blocking.
pub fn exec(
    id: &str,
    exec_id: &str,
    process: &Process,
    ns: &Namespaces,
    reaper: &Reaper,
) -> Result<Spawned, ContainerError> {
    let _guard = lock();
    let bundle = bundle_dir(id);
    let spec = Spec::load(bundle.join("config.json")).map_err(ContainerError::LoadSpec)?;
    let process = inherit(process.clone(), &spec);
    let file = bundle.join(format!("exec-{exec_id}.json"));
    let json =
        serde_json::to_vec(&process).map_err(|e| ContainerError::SaveProcess(file.clone(), e))?;
    fs_err::write(&file, json)?;
    let result = exec_locked(id, exec_id, &process, &bundle, &file, ns, reaper);
    let _ = std::fs::remove_file(&file);
    result
}

/// The state directory the tenant builder is given: the container's state
/// with the pid of `holder` (`<bundle>/exec-state/<id>/state.json`).
fn holder_state(id: &str, bundle: &Path, holder: &Holder) -> Result<PathBuf, ContainerError> {
    let mut state = State::load(&bundle.join("state").join(id)).map_err(ContainerError::State)?;
    state.pid = Some(holder.pid());
    let root = bundle.join("exec-state");
    let dir = root.join(id);
    fs_err::create_dir_all(&dir)?;
    state.save(&dir).map_err(ContainerError::State)?;
    Ok(root)
}

/// Fills what the exec request left empty from the container's process.
fn inherit(mut process: Process, spec: &Spec) -> Process {
    let init = spec.process().as_ref();
    if process.capabilities().is_none() {
        process.set_capabilities(init.and_then(|p| p.capabilities().clone()));
    }
    if process.no_new_privileges().is_none() {
        process.set_no_new_privileges(init.and_then(|p| p.no_new_privileges()));
    }
    // The guest has neither AppArmor nor SELinux (as for the init).
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);
    process
}

fn exec_locked(
    id: &str,
    exec_id: &str,
    process: &Process,
    bundle: &Path,
    file: &Path,
    ns: &Namespaces,
    reaper: &Reaper,
) -> Result<Spawned, ContainerError> {
    let failed = |e| ContainerError::Exec(exec_id.to_string(), e);
    // Killed (dropped) once the process is built: it has joined the
    // namespaces by then.
    let holder = Holder::spawn(ns).map_err(ContainerError::Namespaces)?;
    let state = holder_state(id, bundle, &holder)?;
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state)
        .map_err(failed)?
        .with_executor(WorkloadExecutor);
    let (builder, io) = super::attach_stdio(builder, process.terminal().unwrap_or(false))?;
    // The process may be done before it is watched: the hold keeps its
    // status until then.
    let _hold = reaper.hold();
    let pid = builder
        .as_tenant()
        .with_process(Some(PathBuf::from(file)))
        .with_detach(true)
        .build()
        .map_err(failed)?
        .as_raw();
    drop(holder);
    let exit = reaper
        .watch(pid)
        .map_err(|e| ContainerError::WatchExec(exec_id.to_string(), e))?;
    let stdio = match io {
        PendingIo::Pipes(stdio) => *stdio,
        PendingIo::Console(console) => match receive_terminal(&console, Some(process)) {
            Ok(stdio) => stdio,
            Err(e) => {
                // Without its terminal nobody can talk to the process.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(e);
            }
        },
    };
    tracing::info!(container = id, exec = exec_id, pid, "exec process started");
    Ok(Spawned { pid, exit, stdio })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCapabilities, ProcessBuilder};

    #[test]
    fn exec_inherits_what_it_leaves_out() {
        let spec = Spec::default();
        let mut bare = ProcessBuilder::default()
            .args(vec!["true".to_string()])
            .build()
            .unwrap();
        bare.set_capabilities(None);
        bare.set_no_new_privileges(None);
        bare.set_apparmor_profile(Some("p".into()));
        let p = inherit(bare, &spec);
        let init = spec.process().as_ref().unwrap();
        assert_eq!(p.capabilities(), init.capabilities());
        assert_eq!(p.no_new_privileges(), init.no_new_privileges());
        assert!(p.apparmor_profile().is_none());

        let mut own = ProcessBuilder::default().build().unwrap();
        own.set_capabilities(Some(LinuxCapabilities::default()));
        own.set_no_new_privileges(Some(false));
        let p = inherit(own.clone(), &spec);
        assert_eq!(p.capabilities(), own.capabilities());
        assert_eq!(p.no_new_privileges(), Some(false));
    }
}

//! The shim process: containerd's `start` and `delete` actions and the
//! task service of a pod.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Error as ShimError, Flags, StartOpts};
use oci_spec::runtime::Spec;

use capsa_runtime::health::VmState;
use capsa_runtime::request::{self, Role};
use capsa_runtime::resource::cgroup;

use crate::events::Events;
use crate::pod::VM_DIED_STATUS;
use crate::service::Service;

/// The file in a bundle that names the pod state directory its task lives
/// in, for the `delete` action after the shim died.
pub const POD_STATE_FILE: &str = "capsa-pod-state";

pub struct CapsaShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    /// The ttRPC socket this shim serves on (`-socket`, a `unix://` URL).
    socket: String,
    /// containerd's address (`-address`): with the namespace and the id,
    /// it names the socket of the shim that served task `id`.
    containerd_address: String,
}

#[async_trait]
impl Shim for CapsaShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // The VM's processes are the shim's children, waited for by tokio:
        // no reaper may take their exit statuses.
        config.no_reaper = true;
        config.no_sub_reaper = true;
        Self {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            containerd_address: args.address.clone(),
        }
    }

    /// Starts the pod's shim, or finds the running one: a container of a
    /// pod is grouped with its sandbox, so containerd gets the address of
    /// the shim that owns the pod's VM.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, ShimError> {
        let spec = Spec::load("config.json").ok();
        let role = spec
            .as_ref()
            .map_or(Role::Standalone, |s| request::annotations(s).role);
        let grouping = role.pod_id(&opts.id).to_string();
        // `spawn` starts a shim on the group's socket; when the pod's
        // shim already serves it, the new one exits and its address is
        // the running shim's.
        spawn(opts, &grouping, Vec::new()).await
    }

    /// Cleans up after a shim that died: the pod's VM died with it (its
    /// processes get SIGKILL when their parent dies); its mounts and
    /// state directory are removed here. Harmless when run again.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, ShimError> {
        match std::fs::read_to_string(POD_STATE_FILE) {
            Ok(dir) => cleanup(Path::new(dir.trim()), &self.id),
            Err(_) => tracing::info!(task = %self.id, "no pod state recorded: nothing to clean"),
        }
        // The pod cgroup the dead shim made (`sandbox_cgroup_only`).
        cgroup::cleanup_record(Path::new(cgroup::CGROUP_RECORD_FILE));
        // A shim killed (SIGKILL) left its socket file: a pod's or lone
        // task's shim served on the socket of this id.
        let socket =
            containerd_shim::socket_address(&self.containerd_address, &self.namespace, &self.id);
        remove_stale_socket(Path::new(socket.trim_start_matches("unix://")));
        Ok(DeleteResponse {
            exit_status: VM_DIED_STATUS,
            exited_at: Some(Timestamp::now()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(
            &self.namespace,
            Events::new(publisher, &self.namespace),
            self.exit.clone(),
        )
        .with_socket(&self.socket)
    }
}

/// Removes the socket file `path` if nothing listens on it any more (a
/// connection is refused): never the socket of a live shim.
fn remove_stale_socket(path: &Path) {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => tracing::info!(socket = %path.display(), "a shim serves the socket: kept"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(socket = %path.display(), "dead shim's socket removed"),
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "dead shim's socket not removed")
                }
            }
        }
        // Gone already, or not ours to judge.
        Err(_) => {}
    }
}

/// Removes the pod state at `dir` if it belongs to task `id` (its sandbox
/// or standalone task); a joined container's share goes with its pod.
fn cleanup(dir: &Path, id: &str) {
    let pod = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    if pod.as_deref() != Some(id) {
        tracing::info!(task = id, pod = ?pod, "a container of another pod: its pod cleans up");
        return;
    }
    let root: PathBuf = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    // The record may be missing: the shim may have died right after it
    // made the directory.
    let found = match capsa_runtime::state::StateDir::find(&root, id) {
        Ok(Some(found)) => found,
        Ok(None) => return tracing::info!(task = id, "no pod state left"),
        Err(e) => return tracing::warn!(task = id, error = %e, "pod state not looked for"),
    };
    if let Some(owner) = found.live_owner() {
        // Only a shim (its pid could have been reused since).
        let comm = std::fs::read_to_string(format!("/proc/{owner}/comm")).unwrap_or_default();
        if comm.trim().starts_with("containerd-shim") {
            tracing::warn!(task = id, owner, "the pod's shim is alive: killing it");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(owner),
                nix::sys::signal::Signal::SIGKILL,
            );
            // Its VM's processes die with it (parent-death signal).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while capsa_runtime::health::vm_state(owner as u32) != VmState::Gone
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        } else {
            tracing::warn!(
                task = id,
                owner,
                comm = comm.trim(),
                "owner pid is not a shim: left alone"
            );
        }
    }
    found.release_network();
    match found.remove() {
        Ok(()) => tracing::info!(task = id, dir = %dir.display(), "pod state removed"),
        Err(e) => tracing::error!(task = id, error = %e, "pod state not removed"),
    }
}

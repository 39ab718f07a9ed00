//! containerd's own API (Containers and Tasks, gRPC through the
//! `containerd-client` crate) with explicit rootfs mounts: what a
//! snapshotter such as devmapper or blockfile hands to the runtime, without
//! such a snapshotter (containerd 1.6 here has neither). `CreateTask`'s
//! `rootfs` goes to the shim's `Create` as given.
//!
//! ```no_run
//! use capsa_test_infra::containerd::{Containerd, Mount, MountExt, Opts};
//! let c = Containerd::start(Opts::default());
//! let spec = c.default_spec(&["echo", "hello"]);
//! let rootfs = [Mount::bind("/path/to/rootfs")];
//! let done = c.run_task("io.containerd.runc.v2", "t1", &spec, &rootfs);
//! assert_eq!((done.exit_status, done.stdout.as_slice()), (0, &b"hello\n"[..]));
//! ```

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::{self, Request};
pub use containerd_client::types::Mount;

use super::{Containerd, NAMESPACE};

/// How long a task may take from create to exit (a capsa task boots a VM
/// under TCG), and each cleanup call.
const TASK_LIMIT: Duration = Duration::from_secs(240);
const CLEANUP_LIMIT: Duration = Duration::from_secs(60);
/// The type of an OCI runtime spec in a container record.
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Mount constructors for the common rootfs kinds.
pub trait MountExt {
    /// `{type: bind, source, options: [rbind, rw]}`: a directory.
    fn bind(source: impl AsRef<Path>) -> Mount;
    /// `{type: fstype, source, options}`: a filesystem on a device, or on
    /// an image file with the `loop` option.
    fn filesystem(fstype: &str, source: impl AsRef<Path>, options: &[&str]) -> Mount;
}

impl MountExt for Mount {
    fn bind(source: impl AsRef<Path>) -> Mount {
        Mount::filesystem("bind", source, &["rbind", "rw"])
    }

    fn filesystem(fstype: &str, source: impl AsRef<Path>, options: &[&str]) -> Mount {
        Mount {
            r#type: fstype.into(),
            source: source.as_ref().display().to_string(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// How a task ended, and what it wrote.
#[derive(Debug, Clone)]
pub struct TaskExit {
    pub exit_status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Containerd {
    /// containerd's default OCI spec (`ctr oci spec`) running `args`, its
    /// root the bundle's `rootfs` (where the shim mounts the task's rootfs
    /// mounts).
    pub fn default_spec(&self, args: &[&str]) -> serde_json::Value {
        let text = self.ctr_ok(&["oci", "spec"]);
        let mut spec: serde_json::Value =
            serde_json::from_str(&text).expect("`ctr oci spec` is JSON");
        spec["process"]["args"] = serde_json::json!(args);
        spec["root"] = serde_json::json!({ "path": "rootfs", "readonly": false });
        spec
    }

    /// Creates container `id` with `spec` and `runtime` (e.g.
    /// `io.containerd.capsa.v2`), creates its task with the `rootfs`
    /// mounts and stdout and stderr to files, starts it, waits for it to
    /// exit, and deletes task and container (also when a step fails, before
    /// the panic that names the step).
    pub fn run_task(
        &self,
        runtime: &str,
        id: &str,
        spec: &serde_json::Value,
        rootfs: &[Mount],
    ) -> TaskExit {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let io_dir = self.dir().join("task-io").join(id);
        std::fs::create_dir_all(&io_dir).expect("task io dir");
        let (stdout, stderr) = (io_dir.join("stdout"), io_dir.join("stderr"));
        for f in [&stdout, &stderr] {
            std::fs::write(f, b"").expect("task output file");
        }
        let result = rt.block_on(async {
            let channel = containerd_client::connect(self.socket())
                .await
                .map_err(|e| format!("connect to {}: {e}", self.socket().display()))?;
            let mut containers = ContainersClient::new(channel.clone());
            let mut tasks = TasksClient::new(channel);
            let run = async {
                create_container(&mut containers, runtime, id, spec).await?;
                let req = CreateTaskRequest {
                    container_id: id.into(),
                    rootfs: rootfs.to_vec(),
                    stdout: format!("file://{}", stdout.display()),
                    stderr: format!("file://{}", stderr.display()),
                    ..Default::default()
                };
                call("CreateTask", tasks.create(namespaced(req))).await?;
                let start = StartRequest {
                    container_id: id.into(),
                    ..Default::default()
                };
                call("Start", tasks.start(namespaced(start))).await?;
                let wait = WaitRequest {
                    container_id: id.into(),
                    ..Default::default()
                };
                Ok::<_, String>(
                    call("Wait", tasks.wait(namespaced(wait)))
                        .await?
                        .exit_status,
                )
            };
            let status = tokio::time::timeout(TASK_LIMIT, run)
                .await
                .unwrap_or_else(|_| Err(format!("the task did not exit within {TASK_LIMIT:?}")));
            let cleaned = remove(&mut containers, &mut tasks, id, status.is_err()).await;
            let status = status?;
            cleaned.map(|()| status)
        });
        let exit_status = result
            .unwrap_or_else(|e| panic!("task {id} (runtime {runtime}): {e}\n{}", self.log_tail()));
        TaskExit {
            exit_status,
            stdout: std::fs::read(&stdout).expect("task stdout"),
            stderr: std::fs::read(&stderr).expect("task stderr"),
        }
    }
}

fn namespaced<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("containerd-namespace", NAMESPACE.parse().expect("ascii"));
    req
}

/// Awaits one gRPC call; its error names `what`.
async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    fut.await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{what}: {} ({:?})", s.message(), s.code()))
}

async fn create_container(
    containers: &mut ContainersClient<tonic::transport::Channel>,
    runtime: &str,
    id: &str,
    spec: &serde_json::Value,
) -> Result<(), String> {
    let container = Container {
        id: id.into(),
        runtime: Some(Runtime {
            name: runtime.into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_TYPE.into(),
            value: serde_json::to_vec(spec).expect("spec to JSON"),
        }),
        ..Default::default()
    };
    let req = CreateContainerRequest {
        container: Some(container),
    };
    call("CreateContainer", containers.create(namespaced(req))).await?;
    Ok(())
}

/// Deletes task `id` (killed first if `kill`) and container `id`; a task
/// or container that does not exist is no error.
async fn remove(
    containers: &mut ContainersClient<tonic::transport::Channel>,
    tasks: &mut TasksClient<tonic::transport::Channel>,
    id: &str,
    kill: bool,
) -> Result<(), String> {
    if kill {
        let req = KillRequest {
            container_id: id.into(),
            signal: libc::SIGKILL as u32,
            all: true,
            ..Default::default()
        };
        let _ = tokio::time::timeout(CLEANUP_LIMIT, tasks.kill(namespaced(req))).await;
        let wait = WaitRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let _ = tokio::time::timeout(CLEANUP_LIMIT, tasks.wait(namespaced(wait))).await;
    }
    let req = DeleteTaskRequest {
        container_id: id.into(),
    };
    let task = ignore_not_found(bounded("DeleteTask", tasks.delete(namespaced(req))).await);
    let req = DeleteContainerRequest { id: id.into() };
    let container =
        ignore_not_found(bounded("DeleteContainer", containers.delete(namespaced(req))).await);
    task.and(container)
}

/// [`call`] bounded by [`CLEANUP_LIMIT`], its answer dropped.
async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(), String> {
    match tokio::time::timeout(CLEANUP_LIMIT, call(what, fut)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(format!("{what}: no answer within {CLEANUP_LIMIT:?}")),
    }
}

fn ignore_not_found(r: Result<(), String>) -> Result<(), String> {
    match r {
        Err(e) if e.ends_with("(NotFound)") => Ok(()),
        other => other,
    }
}

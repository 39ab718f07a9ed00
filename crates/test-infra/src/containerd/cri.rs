//! A thin, blocking CRI (v1) client over containerd's socket.
//!
//! It owns a small tokio runtime: call it from plain (not async) tests.

use super::Containerd;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take (a capsa pod boots a VM).
const CALL_LIMIT: Duration = Duration::from_secs(120);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
    log_dir: PathBuf,
    /// How long one call may take ([`CALL_LIMIT`] unless changed).
    limit: Duration,
}

impl Containerd {
    /// A CRI client connected to this containerd.
    pub fn cri(&self) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let socket = self.socket().to_path_buf();
        let channel = rt
            .block_on(async {
                Endpoint::try_from("http://[::]:50051")
                    .expect("endpoint")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .expect("connect CRI");
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
            log_dir: self.dir().join("pods"),
            limit: CALL_LIMIT,
        }
    }
}

impl Cri {
    /// Bounds every later call by `limit` instead of [`CALL_LIMIT`] (many
    /// pods starting at once under TCG, as in the soak, take longer).
    pub fn set_call_limit(&mut self, limit: Duration) {
        self.limit = limit;
    }

    /// Runs `fut` bounded by the call limit; panics with `what` on error
    /// or timeout.
    fn call<T, F>(&self, what: &str, fut: F) -> T
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(self.limit, what, fut)
    }

    fn call_within<T, F>(&self, limit: Duration, what: &str, fut: F) -> T
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await });
        match result {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => panic!("CRI {what} failed: {status}"),
            Err(_) => panic!("CRI {what} timed out after {limit:?}"),
        }
    }

    /// CRI's `Version` (e.g. to check that the service answers).
    pub fn version(&self) -> VersionResponse {
        let mut c = self.runtime.clone();
        self.call("Version", c.version(VersionRequest::default()))
    }

    /// A pod in the host's network namespace (no CNI needed), with its log
    /// directory in the instance's directory.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        self.pod_config_in(name, NamespaceMode::Node)
    }

    /// A pod with a network namespace of its own, which containerd makes and
    /// CNI sets up (the instance must run with `Opts::cni`), host name
    /// `name`, and the given DNS configuration and port mappings.
    pub fn pod_config_with_network(
        &self,
        name: &str,
        dns_config: Option<DnsConfig>,
        port_mappings: Vec<PortMapping>,
    ) -> PodSandboxConfig {
        PodSandboxConfig {
            hostname: name.into(),
            dns_config,
            port_mappings,
            ..self.pod_config_in(name, NamespaceMode::Pod)
        }
    }

    fn pod_config_in(&self, name: &str, network: NamespaceMode) -> PodSandboxConfig {
        let log_directory = self.log_dir.join(name);
        std::fs::create_dir_all(&log_directory).expect("pod log dir");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-uid"),
                namespace: "capsa-test".into(),
                attempt: 0,
            }),
            // Host network implies the host's UTS namespace: no hostname.
            log_directory: log_directory.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs a pod with `config`; `runtime_handler` "" is the default (runc),
    /// "capsa" is capsa's shim. Returns the pod id.
    pub fn run_pod_with(&self, config: PodSandboxConfig, runtime_handler: &str) -> String {
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.into(),
        };
        self.call("RunPodSandbox", c.run_pod_sandbox(req))
            .pod_sandbox_id
    }

    /// [`Self::run_pod_with`] that returns CRI's error instead of failing
    /// the test (bounded all the same).
    pub fn try_run_pod_with(
        &self,
        config: PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.into(),
        };
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(self.limit, c.run_pod_sandbox(req)).await });
        match result {
            Ok(r) => r.map(|r| r.into_inner().pod_sandbox_id),
            Err(_) => panic!("CRI RunPodSandbox timed out after {:?}", self.limit),
        }
    }

    /// Runs the pod [`Self::pod_config`]`(name)`; returns its id.
    pub fn run_pod(&self, name: &str, runtime_handler: &str) -> String {
        self.run_pod_with(self.pod_config(name), runtime_handler)
    }

    /// Creates container `name` running `command` from `image` in the pod;
    /// returns its id.
    pub fn create_container(
        &self,
        pod_id: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> String {
        let config = Self::container_config(name, image, command);
        self.create_container_with(pod_id, pod_config, config)
    }

    /// The configuration [`Self::create_container`] uses, for a test to
    /// add mounts, devices, capabilities to.
    pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// Creates a container from `config` in the pod; returns its id.
    pub fn create_container_with(
        &self,
        pod_id: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> String {
        let mut c = self.runtime.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        self.call("CreateContainer", c.create_container(req))
            .container_id
    }

    pub fn start(&self, container_id: &str) {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: container_id.into(),
        };
        self.call("StartContainer", c.start_container(req));
    }

    /// Runs `cmd` in the container; returns (stdout, stderr, exit code).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> (String, String, i32) {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let r = self.call_within(self.limit + timeout, "ExecSync", c.exec_sync(req));
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (text(r.stdout), text(r.stderr), r.exit_code)
    }

    /// [`Self::exec_sync`] that returns CRI's error instead of failing
    /// the test (bounded all the same).
    pub fn try_exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<(String, String, i32), tonic::Status> {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let limit = self.limit + timeout;
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(limit, c.exec_sync(req)).await });
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        match result {
            Ok(r) => r.map(|r| {
                let r = r.into_inner();
                (text(r.stdout), text(r.stderr), r.exit_code)
            }),
            Err(_) => panic!("CRI ExecSync timed out after {limit:?}"),
        }
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", c.container_status(req))
            .status
            .expect("container status")
    }

    /// ContainerStats: the container's CPU, memory and filesystem use, as
    /// the kubelet reads it.
    pub fn container_stats(&self, id: &str) -> ContainerStats {
        let mut c = self.runtime.clone();
        let req = ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call("ContainerStats", c.container_stats(req))
            .stats
            .expect("container stats")
    }

    pub fn pod_status(&self, pod_id: &str) -> PodSandboxStatus {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        };
        self.call("PodSandboxStatus", c.pod_sandbox_status(req))
            .status
            .expect("pod status")
    }

    /// `PodSandboxStatus` with `verbose`: containerd's `info` (its sandbox
    /// record: `runtimeSpec`, `cniResult`, ...) as JSON.
    pub fn pod_info(&self, pod_id: &str) -> serde_json::Value {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        };
        let r = self.call("PodSandboxStatus", c.pod_sandbox_status(req));
        let info = r.info.get("info").expect("verbose pod status has no info");
        serde_json::from_str(info).expect("pod info is JSON")
    }

    /// The pod's IP, as CNI gave it (`PodSandboxStatus.network.ip`).
    pub fn pod_ip(&self, pod_id: &str) -> String {
        let status = self.pod_status(pod_id);
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        assert!(!ip.is_empty(), "pod {pod_id} has no IP");
        ip
    }

    /// The pod's network namespace (`/var/run/netns/cni-...`), the network
    /// namespace path of the sandbox's runtime spec.
    pub fn pod_netns(&self, pod_id: &str) -> PathBuf {
        let info = self.pod_info(pod_id);
        let namespaces = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        namespaces
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("pod {pod_id} has no network namespace path: {info}"))
    }

    pub fn stop_container(&self, id: &str, timeout: Duration) {
        let mut c = self.runtime.clone();
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout: timeout.as_secs() as i64,
        };
        self.call("StopContainer", c.stop_container(req));
    }

    /// CRI's `UpdateContainerResources` (`kubectl` in-place resize).
    pub fn update_resources(&self, id: &str, resources: LinuxContainerResources) {
        let mut c = self.runtime.clone();
        let req = UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        };
        self.call(
            "UpdateContainerResources",
            c.update_container_resources(req),
        );
    }

    pub fn remove_container(&self, id: &str) {
        let mut c = self.runtime.clone();
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", c.remove_container(req));
    }

    pub fn stop_pod(&self, pod_id: &str) {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call("StopPodSandbox", c.stop_pod_sandbox(req));
    }

    pub fn remove_pod(&self, pod_id: &str) {
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call("RemovePodSandbox", c.remove_pod_sandbox(req));
    }

    /// Ids of the pods CRI knows.
    pub fn list_pods(&self) -> Vec<String> {
        let mut c = self.runtime.clone();
        let req = ListPodSandboxRequest { filter: None };
        let r = self.call("ListPodSandbox", c.list_pod_sandbox(req));
        r.items.into_iter().map(|p| p.id).collect()
    }
}

/// CRI's TCP port mapping `host_port` -> `container_port` on every host
/// address.
pub fn tcp_port_mapping(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: container_port.into(),
        host_port: host_port.into(),
        host_ip: String::new(),
    }
}

impl Containerd {
    /// Best effort, bounded, never panics (it runs in `Drop`): stops and
    /// removes every pod CRI knows, so that CNI releases their network
    /// (netns, IP, iptables rules) before containerd goes.
    pub(super) fn remove_leftover_pods(&self) {
        let limit = Duration::from_secs(60);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let cri = self.cri();
            let mut c = cri.runtime.clone();
            cri.rt.block_on(async {
                let req = ListPodSandboxRequest { filter: None };
                let Ok(Ok(pods)) = tokio::time::timeout(limit, c.list_pod_sandbox(req)).await
                else {
                    return;
                };
                for pod in pods.into_inner().items {
                    let id = pod.id;
                    let stop = StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    };
                    let _ = tokio::time::timeout(limit, c.stop_pod_sandbox(stop)).await;
                    let remove = RemovePodSandboxRequest { pod_sandbox_id: id };
                    let _ = tokio::time::timeout(limit, c.remove_pod_sandbox(remove)).await;
                }
            })
        }));
        if result.is_err() {
            eprintln!("capsa-test-infra: could not remove the pods through CRI");
        }
    }
}

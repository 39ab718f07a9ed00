use std::path::PathBuf;

/// Where the guest agent can be reached from the host: produced by the
/// hypervisor driver that started the VM (`Vm::agent_endpoint`), dialled
/// by [`crate::dial`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AgentEndpoint {
    /// Kernel vsock (`/dev/vhost-vsock` on the host): connect to `cid:port`.
    Vsock { cid: u32, port: u32 },
    /// Hybrid vsock: connect to the Unix socket `path`, write `CONNECT <port>\n`,
    /// read `OK <n>\n`, then the stream is raw.
    HybridVsock { path: PathBuf, port: u32 },
}

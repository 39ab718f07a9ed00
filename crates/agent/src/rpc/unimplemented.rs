//! UNIMPLEMENTED for every AgentService method the agent does not serve.

use std::collections::HashMap;

use async_trait::async_trait;
use ttrpc::asynchronous::{MethodHandler, Service, TtrpcContext};
use ttrpc::{Request, Response};

use super::status::unimplemented;

/// The AgentService methods this agent implements (wire names).
pub const IMPLEMENTED: &[&str] = &[
    "CreateSandbox",
    "DestroySandbox",
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "WaitProcess",
    "SignalProcess",
    "WriteStdin",
    "CloseStdin",
    "ReadStdout",
    "ReadStderr",
    "ExecProcess",
    "ListProcesses",
    "PauseContainer",
    "ResumeContainer",
    "UpdateContainer",
    "StatsContainer",
    "GetOOMEvent",
    "TtyWinResize",
    "GetGuestDetails",
    "OnlineCPUMem",
    "SetGuestDateTime",
    "ReseedRandomDev",
    "CopyFile",
    "GetMetrics",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "SetPolicy",
];

const AGENT_SERVICE: &str = "grpc.AgentService";

/// Answers UNIMPLEMENTED, naming the method.
struct Unimplemented {
    path: String,
}

#[async_trait]
impl MethodHandler for Unimplemented {
    async fn handler(&self, _ctx: TtrpcContext, _req: Request) -> ttrpc::Result<Response> {
        let status = match unimplemented(&self.path) {
            ttrpc::Error::RpcStatus(status) => status,
            other => ttrpc::get_status(ttrpc::Code::UNIMPLEMENTED, other.to_string()),
        };
        let mut response = Response::new();
        response.status = protobuf::MessageField::some(status);
        Ok(response)
    }
}

/// Replaces the handlers of AgentService methods missing from
/// [`IMPLEMENTED`].
pub fn replace_unimplemented(services: &mut HashMap<String, Service>) {
    let Some(service) = services.get_mut(AGENT_SERVICE) else {
        return;
    };
    for (name, handler) in service.methods.iter_mut() {
        if !IMPLEMENTED.contains(&name.as_str()) {
            *handler = Box::new(Unimplemented {
                path: format!("/{AGENT_SERVICE}/{name}"),
            });
        }
    }
}

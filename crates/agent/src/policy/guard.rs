//! The policy in front of every AgentService method: each handler is
//! wrapped so that its request is decided before the method runs.
//!
//! The request is decoded from the frame's payload by the method's input
//! type (the `.proto` descriptor), turned into Kata's JSON and checked
//! against the rule named after that type. The Health service is not
//! guarded (as in Kata). SetPolicy is checked by its own handler, under the
//! same lock as the replacement ([`set_policy`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use capsa_protocols::agent;
use protobuf::reflect::MessageDescriptor;
use ttrpc::asynchronous::{MethodHandler, Service, TtrpcContext};
use ttrpc::{get_status, Code, Request, Response};

use super::{input, AgentPolicy, PolicyError};

/// The policy of one agent, shared by its methods.
pub type SharedPolicy = Arc<Mutex<AgentPolicy>>;

const AGENT_SERVICE: &str = "grpc.AgentService";
const SET_POLICY: &str = "SetPolicy";

/// `err` as the status of a reply; logged once here.
pub fn to_status(method: &str, err: &PolicyError) -> ttrpc::proto::Status {
    let code = match err {
        PolicyError::Denied { .. } => Code::PERMISSION_DENIED,
        PolicyError::Eval { .. } => Code::INTERNAL,
        PolicyError::TooLarge(_) | PolicyError::Parse(_) | PolicyError::NoPackage => {
            Code::INVALID_ARGUMENT
        }
    };
    tracing::warn!(method = %format!("/{AGENT_SERVICE}/{method}"), ?code, "{err}");
    get_status(code, err.to_string())
}

fn lock(policy: &SharedPolicy) -> std::sync::MutexGuard<'_, AgentPolicy> {
    // A panic under the lock leaves a policy that is still whole (the
    // engine is replaced or patched in one assignment).
    policy.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decides `message` (of the type named `request`).
pub fn check(
    policy: &SharedPolicy,
    request: &str,
    message: &dyn protobuf::MessageDyn,
) -> Result<(), PolicyError> {
    let input = input::request_json(message);
    lock(policy).check(request, &input)
}

/// SetPolicy: decided by the current policy, then the new one replaces it
/// (one lock for both, so two SetPolicy calls cannot interleave).
pub fn set_policy(policy: &SharedPolicy, req: &agent::SetPolicyRequest) -> ttrpc::Result<()> {
    let input = input::request_json(req);
    let mut current = lock(policy);
    let replaced = current
        .check("SetPolicyRequest", &input)
        .and_then(|()| AgentPolicy::new(&req.policy));
    match replaced {
        Ok(new) => {
            tracing::info!(bytes = req.policy.len(), "agent policy replaced");
            *current = new;
            Ok(())
        }
        Err(e) => Err(ttrpc::Error::RpcStatus(to_status(SET_POLICY, &e))),
    }
}

/// A method's handler behind the policy.
struct Guarded {
    method: String,
    input: MessageDescriptor,
    policy: SharedPolicy,
    inner: Box<dyn MethodHandler + Send + Sync>,
}

#[async_trait]
impl MethodHandler for Guarded {
    async fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        // A payload that does not decode is the method's to refuse.
        if let Ok(message) = self.input.parse_from_bytes(&req.payload) {
            if let Err(e) = check(&self.policy, self.input.name(), &*message) {
                let mut response = Response::new();
                response.status = protobuf::MessageField::some(to_status(&self.method, &e));
                return Ok(response);
            }
        }
        self.inner.handler(ctx, req).await
    }
}

/// Puts `policy` in front of every AgentService method of `services`
/// but SetPolicy.
pub fn guard_services(services: &mut HashMap<String, Service>, policy: &SharedPolicy) {
    let Some(service) = services.get_mut(AGENT_SERVICE) else {
        return;
    };
    let descriptor = agent::file_descriptor()
        .services()
        .find(|s| s.proto().name() == "AgentService")
        .expect("agent.proto has AgentService");
    let inputs: HashMap<String, MessageDescriptor> = descriptor
        .methods()
        .map(|m| (m.proto().name().to_string(), m.input_type()))
        .collect();
    let methods = std::mem::take(&mut service.methods);
    service.methods = methods
        .into_iter()
        .map(|(name, handler)| {
            let handler: Box<dyn MethodHandler + Send + Sync> =
                match (name.as_str(), inputs.get(&name)) {
                    (SET_POLICY, _) | (_, None) => handler,
                    (_, Some(input)) => Box::new(Guarded {
                        method: name.clone(),
                        input: input.clone(),
                        policy: policy.clone(),
                        inner: handler,
                    }),
                };
            (name, handler)
        })
        .collect();
}

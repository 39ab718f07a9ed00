//! Any method of the agent's services (`grpc.AgentService` and
//! `grpc.Health`), called with a JSON request and answered in JSON
//! (`capsa agent-ctl`). The method's request and reply types come from the
//! protocol's descriptors, so every method of `agent.proto` and
//! `health.proto` works without code of its own.

use std::time::Duration;

use capsa_protocols::{agent, health};
use protobuf::reflect::{MethodDescriptor, ServiceDescriptor};

use crate::{AgentClient, Error};

/// The package of both services.
const PACKAGE: &str = "grpc";

/// The methods of the agent's services, by wire name (`Check` and
/// `Version` are the health service's; no name is in both).
pub fn methods() -> Vec<String> {
    service_methods()
        .map(|(_, m)| m.proto().name().to_string())
        .collect()
}

fn service_methods() -> impl Iterator<Item = (ServiceDescriptor, MethodDescriptor)> {
    [agent::file_descriptor(), health::file_descriptor()]
        .into_iter()
        .flat_map(|f| f.services().collect::<Vec<_>>())
        .flat_map(|s| s.methods().map(|m| (s.clone(), m)).collect::<Vec<_>>())
}

/// Finds `name`: a method's name, optionally after its service
/// (`Health/Check`, `grpc.Health/Check`, `grpc.Health.Check`).
fn find_method(name: &str) -> Option<(ServiceDescriptor, MethodDescriptor)> {
    let (service, method) = match name.rsplit_once(['/', '.']) {
        Some((s, m)) => (Some(s.strip_prefix("grpc.").unwrap_or(s)), m),
        None => (None, name),
    };
    service_methods().find(|(s, m)| {
        m.proto().name() == method && service.is_none_or(|want| s.proto().name() == want)
    })
}

impl AgentClient {
    /// Calls `method` with the request given as JSON (protobuf's JSON
    /// mapping, field names as in the `.proto` or in lowerCamelCase) and
    /// returns the reply as JSON.
    pub async fn call_json(
        &self,
        method: &str,
        request: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let (service, descriptor) =
            find_method(method).ok_or_else(|| Error::UnknownMethod(method.to_string()))?;
        let method = descriptor.proto().name();
        let payload = request_from_json(method, request)?;
        let mut call = ttrpc::Request::new();
        call.service = format!("{PACKAGE}.{}", service.proto().name());
        call.method = method.to_string();
        call.timeout_nano = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX);
        call.payload = payload;
        let reply = self.conn.request(call).await.map_err(|error| Error::Call {
            method: method.to_string(),
            error,
        })?;
        reply_to_json(method, &reply.payload)
    }
}

fn descriptor(method: &str) -> Result<MethodDescriptor, Error> {
    find_method(method)
        .map(|(_, m)| m)
        .ok_or_else(|| Error::UnknownMethod(method.to_string()))
}

/// The request of `method`, given as JSON (protobuf's JSON mapping, field
/// names as in the `.proto` or in lowerCamelCase), encoded for the wire.
pub fn request_from_json(method: &str, request: &str) -> Result<Vec<u8>, Error> {
    let descriptor = descriptor(method)?;
    let bad_request = |e: &dyn std::fmt::Display| Error::BadRequest {
        message: descriptor.input_type().name().to_string(),
        reason: e.to_string(),
    };
    // Valid JSON first: protobuf's parser also takes text-format escapes
    // (`\ooo`), and panics on some (`\779`, with overflow checks).
    serde_json::from_str::<serde::de::IgnoredAny>(request).map_err(|e| bad_request(&e))?;
    let mut req = descriptor.input_type().new_instance();
    protobuf_json_mapping::merge_from_str(&mut *req, request).map_err(|e| bad_request(&e))?;
    req.write_to_bytes_dyn().map_err(|e| bad_request(&e))
}

/// The reply of `method` (the payload the guest sent) as JSON.
pub fn reply_to_json(method: &str, payload: &[u8]) -> Result<String, Error> {
    let bad_reply = |e: &dyn std::fmt::Display| Error::BadReply {
        method: method.to_string(),
        reason: e.to_string(),
    };
    let message = descriptor(method)?
        .output_type()
        .parse_from_bytes(payload)
        .map_err(|e| bad_reply(&e))?;
    protobuf_json_mapping::print_to_string(&*message).map_err(|e| bad_reply(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_service_is_known() {
        let m = methods();
        for name in [
            "CreateContainer",
            "ExecProcess",
            "GetGuestDetails",
            "CopyFile",
        ] {
            assert!(m.iter().any(|x| x == name), "{name} missing from {m:?}");
        }
    }

    /// Found by the fuzz target `agent_ctl_request`: protobuf's JSON parser
    /// (protobuf-support 3.7 lexer) reads `\779` as an octal escape, takes
    /// `9` for an octal digit and overflows a `u8` (a panic with overflow
    /// checks, a wrong byte without); valid JSON has no such escape.
    #[test]
    fn octal_escapes_are_refused_without_a_panic() {
        let err = request_from_json("SignalProcess", r#"{"container_id": "\779"}"#).unwrap_err();
        let Error::BadRequest { message, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(message, "SignalProcessRequest");
    }

    #[test]
    fn health_methods_are_found_by_name_or_service() {
        for name in [
            "Check",
            "Health/Check",
            "grpc.Health/Check",
            "grpc.Health.Check",
        ] {
            let (s, m) = find_method(name).unwrap_or_else(|| panic!("{name} not found"));
            assert_eq!(s.proto().name(), "Health", "{name}");
            assert_eq!(m.proto().name(), "Check", "{name}");
        }
        let (s, _) = find_method("grpc.AgentService/ExecProcess").unwrap();
        assert_eq!(s.proto().name(), "AgentService");
        assert!(find_method("AgentService/Check").is_none());
        assert!(find_method("Nope").is_none());
        assert!(methods().iter().any(|m| m == "Version"));
    }

    #[test]
    fn json_requests_map_to_messages() {
        let (_, d) = find_method("SignalProcess").unwrap();
        let mut req = d.input_type().new_instance();
        protobuf_json_mapping::merge_from_str(&mut *req, r#"{"container_id": "c1", "signal": 9}"#)
            .unwrap();
        let bytes = req.write_to_bytes_dyn().unwrap();
        let typed: agent::SignalProcessRequest =
            protobuf::Message::parse_from_bytes(&bytes).unwrap();
        assert_eq!(typed.container_id, "c1");
        assert_eq!(typed.signal, 9);
    }
}

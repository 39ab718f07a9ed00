//! The host's handling of replies from the guest (a hostile guest writes
//! them): a ttRPC response frame's payload decoded from the bytes, then
//! decoded as the reply of an AgentService method (the first byte picks
//! it) and printed as JSON, as `capsa agent-ctl` does; and the typed
//! replies the runtime reads.
#![no_main]

use capsa_protocols::{agent, health};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let methods = capsa_agent_client::methods();
    let method = &methods[usize::from(which) % methods.len()];
    if let Ok(response) = ttrpc::proto::Response::parse_from_bytes(bytes) {
        let _ = capsa_agent_client::reply_to_json(method, &response.payload);
    }
    let _ = capsa_agent_client::reply_to_json(method, bytes);
    typed(bytes);
});

/// The replies the runtime decodes into generated types.
fn typed(bytes: &[u8]) {
    let _ = agent::WaitProcessResponse::parse_from_bytes(bytes);
    let _ = agent::ReadStreamResponse::parse_from_bytes(bytes);
    let _ = agent::ListProcessesResponse::parse_from_bytes(bytes);
    let _ = agent::StatsContainerResponse::parse_from_bytes(bytes);
    let _ = agent::GuestDetailsResponse::parse_from_bytes(bytes);
    let _ = agent::OOMEvent::parse_from_bytes(bytes);
    let _ = agent::Metrics::parse_from_bytes(bytes);
    let _ = health::HealthCheckResponse::parse_from_bytes(bytes);
    let _ = health::VersionCheckResponse::parse_from_bytes(bytes);
}

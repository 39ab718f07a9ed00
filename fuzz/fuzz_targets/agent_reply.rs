//! The host's handling of replies from the guest (a hostile guest writes
//! them): the bytes read as the ttRPC frames the client reads from the
//! socket; each response's payload decoded as the reply of an
//! AgentService method (the first byte picks it) and printed as JSON, as
//! `capsa agent-ctl` does; and the bytes as each typed reply the runtime
//! reads (the agent's spans, `capsa.Tracing/TakeSpans`, as the host
//! turns them into span data to export).
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use capsa_protocols::{agent, health};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use ttrpc::proto::{GenMessage, Response, MESSAGE_TYPE_RESPONSE};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let methods = capsa_agent_client::methods();
    let method = &methods[usize::from(which) % methods.len()];
    let mut stream = bytes;
    while !stream.is_empty() {
        // Reading from a slice never waits: one poll finishes the read.
        let read =
            pin!(GenMessage::read_from(&mut stream)).poll(&mut Context::from_waker(Waker::noop()));
        let Poll::Ready(Ok(frame)) = read else {
            break;
        };
        if frame.header.type_ != MESSAGE_TYPE_RESPONSE {
            continue;
        }
        if let Ok(response) = Response::parse_from_bytes(&frame.payload) {
            let _ = capsa_agent_client::reply_to_json(method, &response.payload);
        }
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
    // The agent's spans, as the host exports them (only those of the
    // trace it asked for).
    if let Ok(taken) = capsa_protocols::tracing::AgentSpans::parse_from_bytes(bytes) {
        let trace = capsa_runtime::otel::TraceId::from_bytes([7; 16]);
        for span in &taken.spans {
            let _ = capsa_runtime::otel::span_data(span, trace);
        }
    }
}

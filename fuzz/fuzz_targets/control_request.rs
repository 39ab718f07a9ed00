//! The control socket of a `capsa run` owner: a request line from any
//! local process, and the owner's reply as `capsa update` reads it.
#![no_main]

use capsa_runtime::control::{decode_reply, decode_request, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        let Request::Update {
            cpus, memory_mib, ..
        } = req;
        // Whatever passed decoding turns into OCI limits without panic.
        let r = Request::resources(cpus, memory_mib);
        assert_eq!(r.cpu().is_some(), cpus.is_some());
        assert_eq!(r.memory().is_some(), memory_mib.is_some());
    }
    let _ = decode_reply(data);
});

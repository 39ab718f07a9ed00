//! The hybrid-vsock handshake: the line the vsock backend answers to
//! `CONNECT <port>` (`OK <n>`), as the agent client checks it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The client reads the line as UTF-8 (invalid UTF-8 fails the read).
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let accepted = capsa_agent_client::check_connect_reply(line).is_ok();
    assert_eq!(accepted, line.starts_with("OK "), "{line:?}");
});

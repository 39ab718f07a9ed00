//! Replies of UML's management console (a guest that took over the UML
//! kernel writes them), decoded as the driver decodes them: never a
//! panic, the text never longer than the datagram's data.
#![no_main]

use capsa_hypervisor::uml::mconsole;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, _, text)) = mconsole::parse_reply(data) {
        assert!(text.len() <= 3 * data.len());
    }
});

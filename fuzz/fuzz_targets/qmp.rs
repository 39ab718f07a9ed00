//! QMP messages from QEMU (a compromised QEMU writes them): each line
//! decoded as the client does (events skipped), the first as the greeting,
//! the others as command replies, and the `x-query-virtio-status` answer
//! the runtime inspects.
#![no_main]

use capsa_hypervisor::qemu::qmp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (i, line) in text.lines().enumerate() {
        let Ok(Some(message)) = qmp::decode_line(line) else {
            continue;
        };
        if i == 0 {
            let _ = qmp::check_greeting(&message);
        }
        if let Ok(result) = qmp::command_result("query-status", &message) {
            let _ = qmp::virtio_driver_ok(&result);
        }
    }
});

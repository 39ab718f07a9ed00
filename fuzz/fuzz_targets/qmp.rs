//! QMP messages from QEMU (a compromised QEMU writes them), read as the
//! driver's session reads them: split into lines by the bounded
//! `qmp::read_line`, each line decoded by `qmp::decode_message` into a
//! greeting, a reply or an event (or refused), and a reply's result read as
//! the `x-query-virtio-status` answer the driver inspects and as the
//! `query-hotpluggable-cpus` answer vCPU hot-plug picks a slot from.
#![no_main]

use std::sync::OnceLock;

use capsa_hypervisor::qemu::qmp::{self, Message};
use capsa_hypervisor::qemu::resize;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let mut reader = tokio::io::BufReader::new(data);
        // Each line until the end, a cut line or a line that is not UTF-8.
        while let Ok(line) = qmp::read_line(&mut reader).await {
            assert!(!line.contains('\n'));
            match qmp::decode_message(&line) {
                Ok(Message::Reply {
                    result: Ok(value), ..
                }) => {
                    let _ = qmp::virtio_driver_ok(&value);
                    let _ = resize::free_cpu_slot(&value);
                }
                Ok(Message::Event(event)) => {
                    let _ = event.data.get("device");
                }
                Ok(_) | Err(_) => {}
            }
        }
    });
});

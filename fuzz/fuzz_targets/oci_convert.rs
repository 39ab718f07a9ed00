//! The OCI spec conversion (`capsa_protocols::convert`), both ways.
//!
//! First byte even: the rest is a protocol `oci.Spec` as the agent receives
//! it; odd: a `config.json` as the shim reads it from a bundle (the pod's
//! spec, untrusted) and the host converts it to send. Whatever one side
//! accepts, the other must take back: a spec converted for the wire is
//! accepted by the agent's conversion.
#![no_main]

use capsa_protocols::{convert, oci};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let spec = if which % 2 == 0 {
        let Ok(wire) = oci::Spec::parse_from_bytes(bytes) else {
            return;
        };
        if let Some(process) = wire.Process.as_ref() {
            let _ = convert::process_from_grpc(process);
        }
        if let Some(resources) = wire.Linux.as_ref().and_then(|l| l.Resources.as_ref()) {
            let _ = convert::resources_from_grpc(resources);
        }
        match convert::spec_from_grpc(&wire) {
            Ok(spec) => spec,
            Err(_) => return,
        }
    } else {
        match serde_json::from_slice::<oci_spec::runtime::Spec>(bytes) {
            Ok(spec) => spec,
            Err(_) => return,
        }
    };
    let wire = convert::spec_to_grpc(&spec);
    if let Err(e) = convert::spec_from_grpc(&wire) {
        panic!("a converted spec is refused back: {e}\nspec: {spec:?}");
    }
    let bytes = wire.write_to_bytes().expect("a converted spec encodes");
    let decoded = oci::Spec::parse_from_bytes(&bytes).expect("an encoded spec decodes");
    assert_eq!(decoded, wire, "the wire form survives encoding");
});

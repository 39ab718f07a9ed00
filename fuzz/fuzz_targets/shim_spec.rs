//! What the runtime's request parser reads from a task's OCI spec (written
//! by whoever creates the pod): its role in the pod from the CRI
//! annotations (`request::annotations`) and the VM's static size from the
//! sandbox annotations or the spec's resources (`request::pod_limits`,
//! `cpu_mem::static_size`). Input: first byte even, a `config.json`; odd,
//! annotations and limits built from the rest.
#![no_main]

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use capsa_runtime::request;
use capsa_runtime::resource::cpu_mem;
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, Spec,
};

#[derive(Debug, Arbitrary)]
struct Parts {
    annotations: Option<HashMap<String, String>>,
    memory_limit: Option<i64>,
    cpu_quota: Option<i64>,
    cpu_period: Option<u64>,
    default_vcpus: u32,
    default_memory_mib: u32,
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let parts = if which % 2 == 0 {
        None
    } else {
        match Parts::arbitrary_take_rest(Unstructured::new(bytes)) {
            Ok(parts) => Some(parts),
            Err(_) => return,
        }
    };
    let (spec, vcpus, memory) = match parts {
        None => match serde_json::from_slice::<Spec>(bytes) {
            Ok(spec) => (spec, 1, 2048),
            Err(_) => return,
        },
        Some(Parts {
            annotations,
            memory_limit,
            cpu_quota,
            cpu_period,
            default_vcpus,
            default_memory_mib,
        }) => {
            let mut memory = LinuxMemoryBuilder::default();
            if let Some(limit) = memory_limit {
                memory = memory.limit(limit);
            }
            let mut cpu = LinuxCpuBuilder::default();
            if let Some(quota) = cpu_quota {
                cpu = cpu.quota(quota);
            }
            if let Some(period) = cpu_period {
                cpu = cpu.period(period);
            }
            let resources = LinuxResourcesBuilder::default()
                .memory(memory.build().expect("memory"))
                .cpu(cpu.build().expect("cpu"))
                .build()
                .expect("resources");
            let linux = LinuxBuilder::default()
                .resources(resources)
                .build()
                .expect("linux");
            let mut spec = Spec::default();
            spec.set_annotations(annotations);
            spec.set_linux(Some(linux));
            (spec, default_vcpus, default_memory_mib)
        }
    };
    let role = request::annotations(&spec).role;
    let pod = role.pod_id("task");
    assert!(!pod.is_empty(), "{role:?} has an empty pod id");
    let size = cpu_mem::static_size(request::pod_limits(&spec), vcpus, memory);
    let got_vcpus = size.vcpus.expect("vcpus always set");
    assert!(got_vcpus <= 256, "{got_vcpus} vCPUs");
    assert!(
        got_vcpus >= vcpus.min(256),
        "{got_vcpus} vCPUs below {vcpus}"
    );
    assert!(size.memory_mib.expect("memory always set") >= memory);
});

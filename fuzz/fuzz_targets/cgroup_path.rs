//! The sandbox spec's `linux.cgroupsPath` as the shim decodes it with
//! `sandbox_cgroup_only` (`capsa_runtime::resource::cgroup::CgroupPath::parse`):
//! whoever creates the pod writes it, and the runtime creates, joins and removes
//! directories from it. Input: the path text.
#![no_main]

use std::path::Component;

use capsa_runtime::resource::cgroup::CgroupPath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    match CgroupPath::parse(raw, "pod") {
        Ok(path) => {
            // Below every hierarchy's root, never the root itself, and
            // only normal components: nothing outside the cgroup mounts
            // is created or removed.
            let rel = path.rel();
            assert!(!rel.as_os_str().is_empty(), "{raw:?}: the root");
            assert!(
                rel.components().all(|c| matches!(c, Component::Normal(_))),
                "{raw:?} gave {rel:?}"
            );
            if let CgroupPath::Systemd { unit, slice, .. } = &path {
                assert!(unit.ends_with(".scope") && !unit.contains('/'), "{unit:?}");
                assert!(slice.ends_with(".slice"), "{slice:?}");
            }
        }
        Err(e) => {
            // Errors name the path.
            assert!(e.to_string().contains(&format!("{raw:?}")), "{e}");
        }
    }
});

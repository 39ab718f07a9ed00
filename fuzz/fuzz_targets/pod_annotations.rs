//! Pod annotations (`capsa_config::apply_annotations`): whoever creates a
//! pod writes them. Every `io.katacontainers.config.*` key is enabled
//! here, so the values reach their parsers. What is accepted must stay
//! inside the gate: no kernel parameter capsa sets itself or the agent's,
//! virtiofsd options from the allowlist only, paths inside the globs.
#![no_main]

use std::collections::HashMap;

use capsa_config::annotations::{RESERVED_KERNEL_PARAMS, VIRTIO_FS_EXTRA_ARGS};
use capsa_config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines `KEY=VALUE`; a KEY without a dot is a suffix of the
    // hypervisor prefix.
    let mut annotations = HashMap::new();
    for line in text.lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let key = if key.contains('.') {
            key.to_string()
        } else {
            format!("io.katacontainers.config.hypervisor.{key}")
        };
        annotations.insert(key, value.replace("\\n", "\n"));
    }
    let mut config = Config::default();
    config.hypervisor.vm.enable_annotations = vec![".*".into()];
    config.runtime.enable_annotations = vec![".*".into()];
    config.hypervisor.vm.valid_hypervisor_paths = vec!["/opt/qemu/*".into()];
    config.hypervisor.vm.valid_virtio_fs_daemon_paths = vec!["/usr/libexec/virtiofsd".into()];
    let Ok(applied) = capsa_config::apply_annotations(&config, &annotations) else {
        return;
    };
    let q = &applied.config.hypervisor.vm;
    // The default configuration is QEMU's; annotations never change the driver.
    let (
        capsa_config::DriverSettings::Qemu(driver),
        capsa_config::DriverSettings::Qemu(configured),
    ) = (&applied.config.hypervisor.driver, &config.hypervisor.driver)
    else {
        panic!("annotations changed the driver");
    };
    assert!((1..=256).contains(&q.default_vcpus));
    assert!(q.default_memory >= 128);
    for word in q.kernel_params.split_ascii_whitespace() {
        let name = word.split('=').next().unwrap_or_default().replace('-', "_");
        assert!(!name.starts_with("agent."), "{word}");
        assert!(!RESERVED_KERNEL_PARAMS.contains(&name.as_str()), "{word}");
        assert_ne!(word, "--");
    }
    for arg in &q.virtio_fs_extra_args {
        let name = arg.split('=').next().unwrap_or_default();
        assert!(VIRTIO_FS_EXTRA_ARGS.contains(&name), "{arg}");
    }
    let path = driver.path.to_string_lossy();
    assert!(
        driver.path == configured.path
            || (path.starts_with("/opt/qemu/") && !path["/opt/qemu/".len()..].contains('/')),
        "{path}"
    );
    assert!(
        q.virtio_fs_daemon == config.hypervisor.vm.virtio_fs_daemon
            || q.virtio_fs_daemon.as_os_str() == "/usr/libexec/virtiofsd"
    );
    assert_eq!(applied.policy, applied.config.agent.capsa.policy);
});

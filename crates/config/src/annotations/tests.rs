use super::*;

fn config(hypervisor: &[&str], runtime: &[&str]) -> Config {
    let mut c = Config::default();
    c.hypervisor.vm.enable_annotations = hypervisor.iter().map(|s| s.to_string()).collect();
    c.runtime.enable_annotations = runtime.iter().map(|s| s.to_string()).collect();
    c
}

fn apply(c: &Config, pairs: &[(&str, &str)]) -> Result<Applied, AnnotationError> {
    let map = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    apply_annotations(c, &map)
}

fn h(key: &str) -> String {
    format!("{HYPERVISOR_PREFIX}{key}")
}

#[test]
fn other_annotations_are_ignored_and_nothing_is_enabled_by_default() {
    let c = Config::default();
    let a = apply(&c, &[("io.kubernetes.cri.sandbox-id", "x")]).unwrap();
    assert_eq!(a.config, c);
    let e = apply(&c, &[(&h("default_vcpus"), "2")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "annotation io.katacontainers.config.hypervisor.default_vcpus is not enabled: add a pattern \
         matching \"default_vcpus\" to [hypervisor.qemu] enable_annotations in the configuration"
    );
}

#[test]
fn enabled_annotations_size_the_vm() {
    let c = config(&["default_vcpus", "default_memory"], &[]);
    let a = apply(
        &c,
        &[(&h("default_vcpus"), "2"), (&h("default_memory"), "1024")],
    )
    .unwrap();
    assert_eq!(a.config.hypervisor.vm.default_vcpus, 2);
    assert_eq!(a.config.hypervisor.vm.default_memory, 1024);
}

#[test]
fn patterns_are_anchored() {
    // Kata's unanchored `path` also admits `jailer_path` and `path_x`.
    let c = config(&["path"], &[]);
    for key in ["jailer_path", "pathx", "xpath"] {
        match apply(&c, &[(&h(key), "/usr/bin/qemu-system-x86_64")]) {
            Err(AnnotationError::NotEnabled { suffix, .. }) => assert_eq!(suffix, key),
            other => panic!("{key}: {other:?}"),
        }
    }
    // Alternatives stay inside the anchors.
    let c = config(&["default_vcpus|default_memory"], &[]);
    assert!(apply(&c, &[(&h("default_memory"), "256")]).is_ok());
    assert!(matches!(
        apply(&c, &[(&h("default_maxmemory"), "256")]),
        Err(AnnotationError::NotEnabled { .. })
    ));
    let c = config(&["default_.*"], &[]);
    assert!(apply(&c, &[(&h("default_maxvcpus"), "4")]).is_ok());
}

#[test]
fn runtime_and_agent_keys_are_gated_by_the_runtime_setting() {
    let c = config(&[".*"], &[]);
    let e = apply(
        &c,
        &[(
            "io.katacontainers.config.agent.policy",
            "cGFja2FnZSBhZ2VudF9wb2xpY3k=",
        )],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "annotation io.katacontainers.config.agent.policy is not enabled: add a pattern matching \
         \"agent.policy\" to [runtime] enable_annotations in the configuration"
    );
    let c = config(&[], &["agent.policy", "runtime.sandbox_cgroup_only"]);
    let a = apply(
        &c,
        &[
            (
                "io.katacontainers.config.agent.policy",
                "cGFja2FnZSBhZ2VudF9wb2xpY3k=",
            ),
            (
                "io.katacontainers.config.runtime.sandbox_cgroup_only",
                "true",
            ),
        ],
    )
    .unwrap();
    assert_eq!(a.policy.as_deref(), Some("package agent_policy"));
    assert_eq!(
        a.config.agent.capsa.policy.as_deref(),
        Some("package agent_policy")
    );
    assert!(a.config.runtime.sandbox_cgroup_only);
}

#[test]
fn bad_values_name_key_and_value() {
    let c = config(&[".*"], &["agent\\..*"]);
    let e = apply(&c, &[(&h("default_vcpus"), "lots")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "annotation io.katacontainers.config.hypervisor.default_vcpus: invalid value \"lots\": not a whole number"
    );
    for (key, value) in [
        ("default_vcpus", "0"),
        ("default_memory", "64"),
        ("block_device_driver", "nvdimm"),
        ("disable_block_device_use", "yes"),
        ("virtio_fs_extra_args", "--thread-pool-size=4"),
    ] {
        match apply(&c, &[(&h(key), value)]) {
            Err(AnnotationError::Invalid {
                key: k, value: v, ..
            }) => {
                assert_eq!((k, v), (h(key), value.to_string()))
            }
            other => panic!("{key}={value}: {other:?}"),
        }
    }
    assert!(matches!(
        apply(
            &c,
            &[("io.katacontainers.config.agent.policy", "not base64!")]
        ),
        Err(AnnotationError::Invalid { .. })
    ));
    // A maximum below the default: named.
    let e = apply(
        &c,
        &[(&h("default_vcpus"), "4"), (&h("default_maxvcpus"), "2")],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("default_maxvcpus: invalid value \"2\""),
        "{e}"
    );
    // Enabled, but not a key capsa knows.
    assert_eq!(
        apply(&c, &[(&h("jailer_path"), "/x")]).unwrap_err(),
        AnnotationError::Unsupported {
            key: h("jailer_path")
        }
    );
}

#[test]
fn paths_must_match_the_globs() {
    let c = config(&["path", "virtio_fs_daemon"], &[]);
    // Default: only the configured binary.
    assert!(apply(&c, &[(&h("path"), "/usr/bin/qemu-system-x86_64")]).is_ok());
    let e = apply(&c, &[(&h("path"), "/tmp/evil")]).unwrap_err();
    assert!(
        e.to_string()
            .contains("matches none of valid_hypervisor_paths"),
        "{e}"
    );
    let mut c = c;
    c.hypervisor.vm.valid_hypervisor_paths = vec!["/opt/qemu/*/qemu-system-x86_64".into()];
    c.hypervisor.vm.valid_virtio_fs_daemon_paths = vec!["/usr/libexec/virtiofsd*".into()];
    let a = apply(&c, &[(&h("path"), "/opt/qemu/9.0/qemu-system-x86_64")]).unwrap();
    let qemu = a.config.hypervisor.driver.qemu().unwrap();
    assert_eq!(qemu.path, Path::new("/opt/qemu/9.0/qemu-system-x86_64"));
    for bad in [
        "/opt/qemu/a/b/qemu-system-x86_64",
        "/opt/qemu/../../tmp/qemu-system-x86_64",
        "opt/qemu/9.0/qemu-system-x86_64",
    ] {
        assert!(apply(&c, &[(&h("path"), bad)]).is_err(), "{bad}");
    }
    assert!(apply(&c, &[(&h("virtio_fs_daemon"), "/usr/libexec/virtiofsd")]).is_ok());
    assert!(apply(&c, &[(&h("virtio_fs_daemon"), "/usr/bin/sh")]).is_err());
}

#[test]
fn virtio_fs_extra_args_come_from_the_allowlist() {
    assert_eq!(
        virtio_fs_extra_args(r#"["--thread-pool-size=4", "--announce-submounts"]"#).unwrap(),
        vec!["--thread-pool-size=4", "--announce-submounts"]
    );
    for bad in [
        r#"["--shared-dir=/"]"#,
        r#"["--sandbox=none"]"#,
        r#"["--seccomp=none"]"#,
        r#"["--modcaps=+sys_admin"]"#,
        r#"["-o", "modcaps=+sys_admin"]"#,
        r#"["--socket-path=/tmp/x"]"#,
        r#"["--thread-pool-size=100000"]"#,
        r#"["--xattr=1"]"#,
    ] {
        assert!(virtio_fs_extra_args(bad).is_err(), "{bad}");
    }
}

#[test]
fn kernel_params_cannot_set_what_capsa_sets() {
    assert_eq!(
        kernel_params("  mitigations=off  virtio_net.napi_tx=1 ").unwrap(),
        vec!["mitigations=off", "virtio_net.napi_tx=1"]
    );
    for bad in [
        "agent.debug_console",
        "agent.debug_console_vport=1026",
        "agent.log=debug",
        "init=/bin/sh",
        "rdinit=/bin/sh",
        "console=hvc0",
        "earlycon=uart8250,io,0x3f8",
        "earlyprintk=ttyS0",
        "panic=0",
        "swiotlb=1",
        "root=/dev/vdb",
        "rw",
        "x=1 -- agent.log=debug",
        "quoted=\"a",
    ] {
        assert!(kernel_params(bad).is_err(), "{bad}");
    }
    let c = config(&["kernel_params"], &[]);
    let a = apply(&c, &[(&h("kernel_params"), "mitigations=off")]).unwrap();
    assert_eq!(a.config.hypervisor.vm.kernel_params, "mitigations=off");
    assert!(apply(&c, &[(&h("kernel_params"), "agent.debug_console")]).is_err());
}

#[test]
fn a_bad_pattern_is_named() {
    let c = config(&["("], &[]);
    assert!(matches!(
        apply(&c, &[]),
        Err(AnnotationError::BadPattern { .. })
    ));
}

#[test]
fn a_long_value_is_shortened_in_errors() {
    let c = config(&[".*"], &[]);
    let e = apply(&c, &[(&h("default_vcpus"), &"9".repeat(500))]).unwrap_err();
    assert!(e.to_string().len() < 300, "{e}");
}

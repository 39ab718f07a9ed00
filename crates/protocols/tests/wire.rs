//! The agent API on the wire: field numbers and method paths must be
//! Kata's, or a Kata runtime and capsa's agent would misread each other.

use capsa_protocols::{agent, agent_ttrpc, convert, oci};
use protobuf::Message;

/// Field number and wire type of each top-level field of an encoded message.
fn tags(bytes: &[u8]) -> Vec<(u32, u8)> {
    let mut input = protobuf::CodedInputStream::from_bytes(bytes);
    let mut out = Vec::new();
    while !input.eof().unwrap() {
        let tag = input.read_raw_varint32().unwrap();
        let (field, wire) = (tag >> 3, (tag & 7) as u8);
        out.push((field, wire));
        match wire {
            0 => {
                input.read_raw_varint64().unwrap();
            }
            2 => {
                let len = input.read_raw_varint32().unwrap();
                input.skip_raw_bytes(len).unwrap();
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    out
}

#[test]
fn create_container_request_field_numbers() {
    let req = agent::CreateContainerRequest {
        container_id: "c".into(),
        exec_id: "e".into(),
        storages: vec![agent::Storage::default()],
        OCI: Some(oci::Spec {
            Hostname: "h".into(),
            ..Default::default()
        })
        .into(),
        sandbox_pidns: true,
        ..Default::default()
    };
    let bytes = req.write_to_bytes().unwrap();
    assert_eq!(tags(&bytes), vec![(1, 2), (2, 2), (5, 2), (6, 2), (7, 0)]);
    let back = agent::CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
    assert_eq!(back, req);
}

#[test]
fn storage_and_sandbox_field_numbers() {
    let storage = agent::Storage {
        driver: "virtio-fs".into(),
        source: "kataShared".into(),
        fstype: "virtiofs".into(),
        mount_point: "/m".into(),
        ..Default::default()
    };
    assert_eq!(
        tags(&storage.write_to_bytes().unwrap()),
        vec![(1, 2), (3, 2), (4, 2), (6, 2)]
    );
    let sandbox = agent::CreateSandboxRequest {
        hostname: "h".into(),
        storages: vec![storage],
        sandbox_id: "s".into(),
        kernel_modules: vec![agent::KernelModule::default()],
        ..Default::default()
    };
    assert_eq!(
        tags(&sandbox.write_to_bytes().unwrap()),
        vec![(1, 2), (3, 2), (5, 2), (7, 2)]
    );
    let read = agent::ReadStreamRequest {
        container_id: "c".into(),
        exec_id: "e".into(),
        len: 5,
        ..Default::default()
    };
    assert_eq!(
        tags(&read.write_to_bytes().unwrap()),
        vec![(1, 2), (2, 2), (3, 0)]
    );
}

#[test]
fn service_method_paths_are_katas() {
    struct Nothing;
    impl agent_ttrpc::AgentService for Nothing {}
    let services = agent_ttrpc::create_agent_service(std::sync::Arc::new(Nothing));
    let service = services
        .get("grpc.AgentService")
        .expect("grpc.AgentService");
    for method in [
        "CreateContainer",
        "WaitProcess",
        "ReadStdout",
        "CreateSandbox",
        "SetPolicy",
    ] {
        assert!(service.methods.contains_key(method), "{method} missing");
    }
    struct Healthy;
    impl capsa_protocols::health_ttrpc::Health for Healthy {}
    let health = capsa_protocols::health_ttrpc::create_health(std::sync::Arc::new(Healthy));
    let health = health.get("grpc.Health").expect("grpc.Health");
    assert!(health.methods.contains_key("Check"));
    assert!(health.methods.contains_key("Version"));
}

#[test]
fn oci_spec_round_trips() {
    let json = r#"{
      "ociVersion": "1.0.2",
      "process": {
        "terminal": true,
        "consoleSize": {"height": 24, "width": 80},
        "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6]},
        "args": ["sh", "-c", "true"],
        "env": ["PATH=/bin", "A=b"],
        "cwd": "/tmp",
        "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"],
                         "permitted": ["CAP_KILL"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
        "noNewPrivileges": true,
        "oomScoreAdj": 100
      },
      "root": {"path": "/run/kata-containers/shared/containers/c/rootfs", "readonly": true},
      "hostname": "box",
      "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                 {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "mode=755"]}],
      "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
      "linux": {
        "sysctl": {"net.ipv4.ip_forward": "1"},
        "resources": {"memory": {"limit": 104857600}, "cpu": {"shares": 512, "quota": 50000,
                      "period": 100000, "cpus": "0"}, "pids": {"limit": 64},
                      "devices": [{"allow": false, "access": "rwm"},
                                  {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]},
        "cgroupsPath": "/capsa/c",
        "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}],
        "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0}],
        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                                  "args": [{"index": 1, "value": 2, "valueTwo": 3, "op": "SCMP_CMP_EQ"}]}]},
        "rootfsPropagation": "rprivate",
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]
      }
    }"#;
    let spec: oci_spec::runtime::Spec = serde_json::from_str(json).unwrap();
    let grpc = convert::spec_to_grpc(&spec);
    assert_eq!(grpc.Process.User.UID, 1000);
    assert_eq!(grpc.Linux.Namespaces[2].Type, "network");
    assert_eq!(grpc.Linux.Seccomp.Syscalls[0].Action, "SCMP_ACT_ERRNO");
    // Through the wire and back.
    let bytes = grpc.write_to_bytes().unwrap();
    let grpc = oci::Spec::parse_from_bytes(&bytes).unwrap();
    let back = convert::spec_from_grpc(&grpc).unwrap();
    // Compared as values: capability sets are unordered.
    assert_eq!(back, spec);
}

#[test]
fn bad_enum_values_are_named() {
    let mut grpc = convert::spec_to_grpc(&oci_spec::runtime::Spec::default());
    grpc.Linux
        .mut_or_insert_default()
        .Namespaces
        .push(oci::LinuxNamespace {
            Type: "bogus".into(),
            ..Default::default()
        });
    let err = convert::spec_from_grpc(&grpc).unwrap_err().to_string();
    assert!(
        err.contains("namespace type") && err.contains("bogus"),
        "{err}"
    );
}

#[test]
fn user_fields_are_katas_and_umask_is_in_capsas_range() {
    let user = oci::User {
        UID: 1,
        GID: 2,
        AdditionalGids: vec![3],
        Username: "u".into(),
        Umask: Some(0o027),
        ..Default::default()
    };
    let bytes = user.write_to_bytes().unwrap();
    assert_eq!(
        tags(&bytes),
        vec![(1, 0), (2, 0), (3, 2), (4, 2), (CAPSA_FIRST_FIELD, 0)]
    );
    // An unset umask is not on the wire: a Kata agent sees Kata's message.
    let kata = oci::User {
        Umask: None,
        ..user.clone()
    };
    let bytes = kata.write_to_bytes().unwrap();
    assert!(tags(&bytes).iter().all(|(f, _)| *f <= 4));
    assert_eq!(
        oci::User::parse_from_bytes(&user.write_to_bytes().unwrap()).unwrap(),
        user
    );
}

/// The first field number of capsa's own range (see agent.proto).
const CAPSA_FIRST_FIELD: u32 = 100_001;

/// A message whose only field is a varint `value` under number `field`, as
/// an upstream encoder writes it.
fn varint_field(field: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut os = protobuf::CodedOutputStream::vec(&mut out);
    os.write_uint64(field, value).unwrap();
    os.flush().unwrap();
    drop(os);
    out
}

#[test]
fn capsa_fields_never_take_upstream_numbers() {
    let sandbox = agent::CreateSandboxRequest {
        guest_userns: true,
        ..Default::default()
    };
    assert_eq!(
        tags(&sandbox.write_to_bytes().unwrap()),
        vec![(CAPSA_FIRST_FIELD, 0)]
    );
    // What upstream may put at the old numbers is not read as capsa's field.
    let old = agent::CreateSandboxRequest::parse_from_bytes(&varint_field(8, 1)).unwrap();
    assert!(!old.guest_userns);
    let old = oci::User::parse_from_bytes(&varint_field(5, 0o22)).unwrap();
    assert_eq!(old.Umask, None);
}

#[test]
fn passfd_ports_field_numbers() {
    let create = agent::CreateContainerRequest {
        container_id: "c".into(),
        stdin_port: 1,
        stdout_port: 2,
        stderr_port: 3,
        ..Default::default()
    };
    let bytes = create.write_to_bytes().unwrap();
    assert_eq!(tags(&bytes), vec![(1, 2), (9, 0), (10, 0), (11, 0)]);
    // Decoded from what a Kata runtime writes: field 10 is stdout_port.
    let from_kata =
        agent::CreateContainerRequest::parse_from_bytes(&varint_field(10, 4242)).unwrap();
    assert_eq!(from_kata.stdout_port, 4242);

    let exec = agent::ExecProcessRequest {
        container_id: "c".into(),
        stdin_port: 1,
        stdout_port: 2,
        stderr_port: 3,
        ..Default::default()
    };
    let bytes = exec.write_to_bytes().unwrap();
    assert_eq!(tags(&bytes), vec![(1, 2), (5, 0), (6, 0), (7, 0)]);
    let from_kata = agent::ExecProcessRequest::parse_from_bytes(&varint_field(7, 7)).unwrap();
    assert_eq!(from_kata.stderr_port, 7);
}

#[test]
fn storage_shared_and_extra_features_field_numbers() {
    let storage = agent::Storage {
        driver: "local".into(),
        shared: true,
        ..Default::default()
    };
    assert_eq!(
        tags(&storage.write_to_bytes().unwrap()),
        vec![(1, 2), (8, 0)]
    );
    assert!(
        agent::Storage::parse_from_bytes(&varint_field(8, 1))
            .unwrap()
            .shared
    );

    let details = agent::AgentDetails {
        version: "1".into(),
        extra_features: vec!["passfd-io".into()],
        ..Default::default()
    };
    assert_eq!(
        tags(&details.write_to_bytes().unwrap()),
        vec![(1, 2), (6, 2)]
    );
}

#[test]
fn hooks_field_numbers_and_round_trip() {
    let hook = |p: &str| oci::Hook {
        Path: p.into(),
        ..Default::default()
    };
    let hooks = oci::Hooks {
        Prestart: vec![hook("/a")],
        Poststart: vec![hook("/b")],
        Poststop: vec![hook("/c")],
        CreateRuntime: vec![hook("/d")],
        CreateContainer: vec![hook("/e")],
        StartContainer: vec![hook("/f")],
        ..Default::default()
    };
    let bytes = hooks.write_to_bytes().unwrap();
    assert_eq!(
        tags(&bytes),
        vec![(1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2)]
    );
    let spec = oci::Spec {
        Hooks: Some(hooks).into(),
        ..Default::default()
    };
    assert_eq!(tags(&spec.write_to_bytes().unwrap()), vec![(6, 2)]);

    let json = r#"{
      "ociVersion": "1.0.2",
      "hooks": {
        "prestart": [{"path": "/bin/pre", "args": ["pre", "x"], "env": ["A=1"], "timeout": 5}],
        "createRuntime": [{"path": "/bin/cr"}],
        "createContainer": [{"path": "/bin/cc", "args": ["cc"]}],
        "startContainer": [{"path": "/bin/sc", "timeout": 1}],
        "poststart": [{"path": "/bin/ps"}],
        "poststop": [{"path": "/bin/po", "env": ["B=2", "C=3"]}]
      }
    }"#;
    let spec: oci_spec::runtime::Spec = serde_json::from_str(json).unwrap();
    let grpc = convert::spec_to_grpc(&spec);
    let hooks = grpc.Hooks.as_ref().expect("hooks carried");
    assert_eq!(hooks.Prestart[0].Args, ["pre", "x"]);
    assert_eq!(hooks.Prestart[0].Timeout, 5);
    assert_eq!(hooks.StartContainer[0].Path, "/bin/sc");
    let bytes = grpc.write_to_bytes().unwrap();
    let back = convert::spec_from_grpc(&oci::Spec::parse_from_bytes(&bytes).unwrap()).unwrap();
    assert_eq!(back.hooks(), spec.hooks());
}

#[test]
fn negative_hook_timeout_is_named() {
    let mut grpc = convert::spec_to_grpc(&oci_spec::runtime::Spec::default());
    grpc.Hooks.mut_or_insert_default().Poststop.push(oci::Hook {
        Path: "/bin/true".into(),
        Timeout: -3,
        ..Default::default()
    });
    let err = convert::spec_from_grpc(&grpc).unwrap_err().to_string();
    assert!(err.contains("hook timeout") && err.contains("-3"), "{err}");
}

#[test]
fn network_messages_field_numbers_are_katas() {
    use capsa_protocols::types;
    let addr = types::IPAddress {
        family: types::IPFamily::v6.into(),
        address: "fd00::1".into(),
        mask: "64".into(),
        ..Default::default()
    };
    assert_eq!(
        tags(&addr.write_to_bytes().unwrap()),
        vec![(1, 0), (2, 2), (3, 2)]
    );
    let iface = types::Interface {
        device: "eth0".into(),
        name: "eth0".into(),
        IPAddresses: vec![addr.clone()],
        mtu: 1500,
        hwAddr: "02:00:00:00:00:01".into(),
        devicePath: "/devices/pci0000:00/0000:00:03.0".into(),
        type_: "virtio".into(),
        raw_flags: 1,
        ..Default::default()
    };
    assert_eq!(
        tags(&iface.write_to_bytes().unwrap()),
        vec![
            (1, 2),
            (2, 2),
            (3, 2),
            (4, 0),
            (5, 2),
            (6, 2),
            (7, 2),
            (8, 0)
        ]
    );
    let route = types::Route {
        dest: "10.0.0.0/24".into(),
        gateway: "10.0.0.1".into(),
        device: "eth0".into(),
        source: "10.0.0.2".into(),
        scope: 253,
        family: types::IPFamily::v6.into(),
        flags: 4,
        mtu: 1400,
        ..Default::default()
    };
    assert_eq!(
        tags(&route.write_to_bytes().unwrap()),
        vec![
            (1, 2),
            (2, 2),
            (3, 2),
            (4, 2),
            (5, 0),
            (6, 0),
            (7, 0),
            (8, 0)
        ]
    );
    let neigh = types::ARPNeighbor {
        toIPAddress: Some(addr).into(),
        device: "eth0".into(),
        lladdr: "02:00:00:00:00:02".into(),
        state: 128,
        flags: 1,
        ..Default::default()
    };
    assert_eq!(
        tags(&neigh.write_to_bytes().unwrap()),
        vec![(1, 2), (2, 2), (3, 2), (4, 0), (5, 0)]
    );
    let req = agent::CreateSandboxRequest {
        dns: vec!["nameserver 10.0.0.53".into()],
        ..Default::default()
    };
    assert_eq!(tags(&req.write_to_bytes().unwrap()), vec![(2, 2)]);
    let back = types::Route::parse_from_bytes(&route.write_to_bytes().unwrap()).unwrap();
    assert_eq!(back, route);
}

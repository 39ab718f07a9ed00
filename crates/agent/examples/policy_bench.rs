//! What the agent policy costs per request (`make bench`).
//!
//! Two policies: the default allow-all, and one of genpolicy's size and
//! shape (about 150 KiB: rules that find the request's container among the
//! pod's in `policy_data` and compare its process, environment (regular
//! expressions), mounts and storages field by field; state kept in
//! `data.pstate` with `ops`). For each, per request:
//!
//! - `decide`: what the agent adds to a request it serves: the payload
//!   decoded by the method's type, Kata's JSON built, the rule evaluated
//!   (`capsa_agent::policy`), in process;
//! - `rpc`: a whole call to the agent's ttRPC server on a Unix socket (the
//!   agent run on the host, as its tests do), with the policy in force:
//!   ReadStdout of a missing process (answered NOT_FOUND after the
//!   policy allowed it).
//!
//! `RUNS` (default 2000) requests each. Prints a table; docs/performance.md
//! keeps the figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capsa_agent::policy::{input, AgentPolicy};
use capsa_protocols::agent_ttrpc::AgentServiceClient;
use capsa_protocols::{agent, oci};

const CONTAINERS: usize = 6;
const ENV: usize = 30;
const MOUNTS: usize = 12;

fn runs() -> usize {
    std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2000)
}

/// genpolicy-shaped rules (written for this bench, not genpolicy's text).
const RULES: &str = r#"package agent_policy

import rego.v1

default CreateContainerRequest := {"allowed": false}
default ExecProcessRequest := false
default ReadStreamRequest := true
default WriteStreamRequest := true
default CloseStdinRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default StatsContainerRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default SetPolicyRequest := false

CreateContainerRequest := {"allowed": true, "ops": ops} if {
    some p_container in policy_data.containers
    allow_container(p_container, input)
    ops := [{"op": "add", "path": concat("/", ["", "pstate", input.container_id]), "value": p_container.name}]
}

allow_container(p, i) if {
    p.OCI.Version == i.OCI.Version
    allow_process(p.OCI.Process, i.OCI.Process)
    allow_mounts(p.OCI.Mounts, i.OCI.Mounts)
    allow_storages(p.storages, i.storages)
    allow_linux(p.OCI.Linux, i.OCI.Linux)
    allow_annotations(p.OCI.Annotations, i.OCI.Annotations)
}

allow_process(p, i) if {
    p.Terminal == i.Terminal
    p.Cwd == i.Cwd
    p.NoNewPrivileges == i.NoNewPrivileges
    count(p.Args) == count(i.Args)
    every n, arg in i.Args { allow_arg(p.Args[n], arg) }
    every env in i.Env { allow_env(p.Env, env) }
    allow_user(p.User, i.User)
    allow_caps(p.Capabilities, i.Capabilities)
}

allow_arg(p, i) if p == i
allow_arg(p, i) if {
    startswith(p, "re:")
    regex.match(substring(p, 3, -1), i)
}

allow_env(p_env, i) if i in p_env
allow_env(p_env, i) if {
    some p in p_env
    startswith(p, "re:")
    regex.match(substring(p, 3, -1), i)
}
allow_env(_, i) if {
    some p in policy_data.common.env_regex
    regex.match(p, i)
}

allow_user(p, i) if {
    p.UID == i.UID
    p.GID == i.GID
}

allow_caps(p, i) if {
    every c in i.Bounding { c in p.Bounding }
    every c in i.Effective { c in p.Effective }
    every c in i.Permitted { c in p.Permitted }
}

allow_mounts(p_mounts, i_mounts) if {
    every i in i_mounts { allow_mount(p_mounts, i) }
}

allow_mount(p_mounts, i) if {
    some p in p_mounts
    p.destination == i.destination
    p.type_ == i.type_
    allow_mount_source(p, i)
    every o in i.options { o in p.options }
}

allow_mount_source(p, i) if p.source == i.source
allow_mount_source(p, i) if {
    startswith(p.source, "re:")
    regex.match(substring(p.source, 3, -1), i.source)
}

allow_storages(p_storages, i_storages) if {
    count(p_storages) == count(i_storages)
    every n, i in i_storages {
        p := p_storages[n]
        p.driver == i.driver
        p.fstype == i.fstype
        regex.match(p.source, i.source)
        every o in i.options { o in p.options }
    }
}

allow_linux(p, i) if {
    every ns in i.Namespaces { some p_ns in p.Namespaces; p_ns.Type == ns.Type }
    every path in i.MaskedPaths { path in p.MaskedPaths }
    every path in i.ReadonlyPaths { path in p.ReadonlyPaths }
}

allow_annotations(p, i) if {
    every k, v in i {
        allow_annotation(p, k, v)
    }
}

allow_annotation(p, k, v) if p[k] == v
allow_annotation(p, k, v) if {
    some pk, pv in p
    startswith(pk, "re:")
    regex.match(substring(pk, 3, -1), k)
    regex.match(pv, v)
}

ExecProcessRequest if {
    some cmd in policy_data.common.exec_commands
    concat(" ", input.process.Args) == cmd
}
"#;

fn env(n: usize) -> String {
    format!("VARIABLE_{n}=value-{n}-{}", "x".repeat(40))
}

/// The spec of container `n` of the pod.
fn spec(n: usize) -> oci::Spec {
    let mounts = (0..MOUNTS)
        .map(|m| oci::Mount {
            destination: format!("/var/lib/mount-{m}"),
            source: format!("/run/kata-containers/shared/containers/c{n}-mount-{m}"),
            type_: "bind".into(),
            options: vec!["rbind".into(), "rprivate".into(), "ro".into()],
            ..Default::default()
        })
        .collect();
    let caps: Vec<String> = [
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_NET_BIND_SERVICE",
    ]
    .map(String::from)
    .to_vec();
    oci::Spec {
        Version: "1.1.0".into(),
        Process: protobuf::MessageField::some(oci::Process {
            Args: vec![format!("/bin/server-{n}"), "--port".into(), "8080".into()],
            Env: (0..ENV).map(env).collect(),
            Cwd: "/".into(),
            NoNewPrivileges: true,
            User: protobuf::MessageField::some(oci::User {
                UID: 1000,
                GID: 1000,
                ..Default::default()
            }),
            Capabilities: protobuf::MessageField::some(oci::LinuxCapabilities {
                Bounding: caps.clone(),
                Effective: caps.clone(),
                Permitted: caps,
                ..Default::default()
            }),
            ..Default::default()
        }),
        Mounts: mounts,
        Annotations: [
            (
                "io.kubernetes.cri.container-type".to_string(),
                "container".to_string(),
            ),
            ("io.kubernetes.cri.sandbox-id".to_string(), "a".repeat(64)),
            (
                "io.kubernetes.cri.container-name".to_string(),
                format!("c{n}"),
            ),
        ]
        .into(),
        Linux: protobuf::MessageField::some(oci::Linux {
            Namespaces: ["pid", "mount", "ipc", "uts"]
                .map(|t| oci::LinuxNamespace {
                    Type: t.into(),
                    ..Default::default()
                })
                .to_vec(),
            MaskedPaths: vec![
                "/proc/kcore".into(),
                "/proc/keys".into(),
                "/proc/timer_list".into(),
            ],
            ReadonlyPaths: vec!["/proc/bus".into(), "/proc/sys".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn storage(n: usize) -> agent::Storage {
    agent::Storage {
        driver: "virtio-fs".into(),
        fstype: "virtiofs".into(),
        source: format!("c{n}-rootfs"),
        options: vec!["ro".into()],
        mount_point: format!("/run/kata-containers/shared/containers/c{n}/rootfs"),
        ..Default::default()
    }
}

/// `policy_data` for the pod: its containers as the policy expects them
/// (Kata's JSON of the request, patterns where genpolicy puts them).
fn policy_data() -> serde_json::Value {
    let containers: Vec<serde_json::Value> = (0..CONTAINERS)
        .map(|n| {
            let req = agent::CreateContainerRequest {
                OCI: protobuf::MessageField::some(spec(n)),
                storages: vec![storage(n)],
                ..Default::default()
            };
            let mut json = input::request_json(&req);
            json["name"] = format!("c{n}").into();
            json["storages"][0]["source"] = format!("^c{n}-rootfs$").into();
            json["OCI"]["Annotations"]["re:^io\\.kubernetes\\.cri\\.sandbox-id$"] =
                "^[a-z0-9]{64}$".into();
            json["OCI"]["Annotations"]
                .as_object_mut()
                .unwrap()
                .remove("io.kubernetes.cri.sandbox-id");
            json
        })
        .collect();
    serde_json::json!({
        "containers": containers,
        "common": {
            "env_regex": ["^HOSTNAME=[a-z0-9-]+$", "^KUBERNETES_[A-Z_]+=.*$", "^TERM=xterm$"],
            "exec_commands": ["/bin/sh -c echo ok", "/bin/health-check"],
        },
    })
}

fn genpolicy_sized() -> String {
    let data = serde_json::to_string_pretty(&policy_data()).unwrap();
    format!("{RULES}\npolicy_data := {data}\n")
}

fn create_request() -> agent::CreateContainerRequest {
    let n = CONTAINERS - 1;
    agent::CreateContainerRequest {
        container_id: "c".repeat(64),
        exec_id: "c".repeat(64),
        OCI: protobuf::MessageField::some(spec(n)),
        storages: vec![storage(n)],
        ..Default::default()
    }
}

fn exec_request() -> agent::ExecProcessRequest {
    agent::ExecProcessRequest {
        container_id: "c".repeat(64),
        exec_id: "e".repeat(16),
        process: protobuf::MessageField::some(oci::Process {
            Args: vec!["/bin/health-check".into()],
            Env: vec!["PATH=/bin".into()],
            Cwd: "/".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn read_request() -> agent::ReadStreamRequest {
    agent::ReadStreamRequest {
        container_id: "c".repeat(64),
        exec_id: "e".repeat(16),
        len: 4096,
        ..Default::default()
    }
}

/// Mean time of one decision on `message` (decoded from its bytes, as the
/// agent does): the allowed answer is checked.
fn decide(policy: &mut AgentPolicy, message: &dyn protobuf::MessageDyn) -> Duration {
    let bytes = message.write_to_bytes_dyn().unwrap();
    let descriptor = message.descriptor_dyn();
    let runs = runs();
    let start = Instant::now();
    for _ in 0..runs {
        let decoded = descriptor.parse_from_bytes(&bytes).unwrap();
        let json = input::request_json(&*decoded);
        policy
            .check(descriptor.name(), &json)
            .unwrap_or_else(|e| panic!("{}: {e}", descriptor.name()));
    }
    start.elapsed() / runs as u32
}

/// Mean time of a ReadStdout call through the agent's server with `policy`
/// (given as the agent's default policy file).
async fn rpc(policy: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.rego");
    std::fs::write(&file, policy).unwrap();
    std::env::set_var(capsa_agent::policy::POLICY_FILE_ENV, &file);
    let address = format!("unix://{}", dir.path().join("agent.sock").display());
    let sandbox = Arc::new(capsa_agent::sandbox::Sandbox::new(
        capsa_agent::reaper::Reaper::new(),
        false,
    ));
    let server = tokio::spawn({
        let address = address.clone();
        async move { capsa_agent::server::serve(sandbox, &address).await }
    });
    let client = loop {
        match ttrpc::asynchronous::Client::connect(&address).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let agent = AgentServiceClient::new(client);
    let ctx = || ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
    let req = read_request();
    let runs = runs();
    let start = Instant::now();
    for _ in 0..runs {
        match agent.read_stdout(ctx(), &req).await {
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::NOT_FOUND => {}
            other => panic!("ReadStdout: {other:?}"),
        }
    }
    let mean = start.elapsed() / runs as u32;
    agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    mean
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main]
async fn main() {
    let genpolicy = genpolicy_sized();
    let allow_all = capsa_protocols::policy::ALLOW_ALL;
    println!(
        "agent policy: {} requests each; allow-all {} bytes, genpolicy-sized {} KiB",
        runs(),
        allow_all.len(),
        genpolicy.len() / 1024
    );
    let started = Instant::now();
    let mut big = AgentPolicy::new(&genpolicy).expect("the genpolicy-sized policy parses");
    let parse = started.elapsed();
    let mut all = AgentPolicy::allow_all();
    println!(
        "SetPolicy of the genpolicy-sized policy (parse): {}",
        micros(parse)
    );
    println!(
        "{:<28} {:>14} {:>16}",
        "decide", "allow-all", "genpolicy-sized"
    );
    let messages: [(&str, Box<dyn protobuf::MessageDyn>); 3] = [
        ("CreateContainerRequest", Box::new(create_request())),
        ("ExecProcessRequest", Box::new(exec_request())),
        ("ReadStreamRequest", Box::new(read_request())),
    ];
    for (name, message) in &messages {
        let a = decide(&mut all, &**message);
        let g = decide(&mut big, &**message);
        println!("{name:<28} {:>14} {:>16}", micros(a), micros(g));
    }
    let a = rpc(allow_all).await;
    let g = rpc(&genpolicy).await;
    println!(
        "{:<28} {:>14} {:>16}",
        "rpc ReadStdout (round trip)",
        micros(a),
        micros(g)
    );
}

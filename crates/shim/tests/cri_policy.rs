//! What a pod may ask for, through containerd's CRI plugin (whose capsa
//! runtime passes `io.katacontainers.*` pod annotations on): annotations
//! gated by `enable_annotations`, and the agent policy a pod brings
//! (`io.katacontainers.config.agent.policy`) or an operator sets (`capsa
//! policy set`).

mod common;

use std::time::Duration;

use capsa_test_infra::containerd::cri_v1::PodSandboxConfig;
use capsa_test_infra::containerd::Cri;
use common::{capsa, text, Setup};

const HYPERVISOR: &str = "io.katacontainers.config.hypervisor.";
const POLICY: &str = "io.katacontainers.config.agent.policy";

/// A policy that allows everything but ExecProcess.
const NO_EXEC: &str = r#"package agent_policy
import rego.v1
default ExecProcessRequest := false
default CreateContainerRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default ReadStreamRequest := true
default WriteStreamRequest := true
default CloseStdinRequest := true
default StatsContainerRequest := true
default UpdateContainerRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default AddARPNeighborsRequest := true
default OnlineCPUMemRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default GetMetricsRequest := true
default TtyWinResizeRequest := true
default CopyFileRequest := true
default SetGuestDateTimeRequest := true
default ReseedRandomDevRequest := true
default ListProcessesRequest := true
default PauseContainerRequest := true
default ResumeContainerRequest := true
"#;

fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The setup with `[hypervisor.qemu]` keys `qemu` and `[runtime]` keys
/// `runtime` (the last table of the test configuration).
fn setup(qemu: &str, runtime: &str) -> Setup {
    let s = Setup::with_qemu_extra(qemu);
    let mut config = std::fs::read_to_string(&s.env.config).unwrap();
    config.push_str(runtime);
    config.push('\n');
    std::fs::write(&s.env.config, config).unwrap();
    s.ctrd.import_pause();
    s
}

fn pod_config(cri: &Cri, name: &str, annotations: &[(&str, &str)]) -> PodSandboxConfig {
    let mut config = cri.pod_config(name);
    config.annotations = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config
}

/// RunPodSandbox fails with a message holding each of `parts`, and
/// nothing of the pod is left (no VM, shim, state).
fn assert_refused(s: &Setup, name: &str, annotations: &[(&str, &str)], parts: &[&str]) {
    let cri = s.ctrd.cri();
    let err = cri
        .try_run_pod_with(pod_config(&cri, name, annotations), "capsa")
        .expect_err("the pod must be refused");
    let msg = err.message();
    for part in parts {
        assert!(msg.contains(part), "{part:?} not in {msg:?}");
    }
    s.assert_all_gone();
    s.assert_no_state();
}

/// The `-smp` value of the QEMU of pod `pod`.
fn qemu_smp(s: &Setup, pod: &str) -> String {
    let state = s.env.state_dir.join(pod).display().to_string();
    let procs = capsa_test_infra::leaks::processes_naming(&state);
    let qemu = procs
        .iter()
        .find(|p| p.contains("qemu-system"))
        .unwrap_or_else(|| panic!("no QEMU naming {state}: {procs:?}"));
    let words: Vec<&str> = qemu.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "-smp").expect("-smp");
    words[at + 1].to_string()
}

#[test]
fn annotations_are_gated_by_anchored_patterns_and_checked() {
    let s = setup(
        r#"enable_annotations = ["default_vcpus", "path", "kernel_params"]"#,
        "",
    );
    // Not enabled: named with the key that would enable it.
    assert_refused(
        &s,
        "off",
        &[(&format!("{HYPERVISOR}default_memory"), "1024")],
        &[
            "annotation io.katacontainers.config.hypervisor.default_memory is not enabled",
            "[hypervisor.qemu] enable_annotations",
        ],
    );
    // Anchored: `path` does not enable `jailer_path`.
    assert_refused(
        &s,
        "anchor",
        &[(
            &format!("{HYPERVISOR}jailer_path"),
            "/usr/bin/qemu-system-x86_64",
        )],
        &["jailer_path is not enabled"],
    );
    // A path outside valid_hypervisor_paths (default: the configured one).
    assert_refused(
        &s,
        "path",
        &[(&format!("{HYPERVISOR}path"), "/bin/sh")],
        &["hypervisor.path", "\"/bin/sh\"", "valid_hypervisor_paths"],
    );
    // kernel_params cannot switch the debug console on.
    assert_refused(
        &s,
        "console",
        &[(
            &format!("{HYPERVISOR}kernel_params"),
            "agent.debug_console agent.debug_console_vport=1026",
        )],
        &["kernel_params", "agent's options"],
    );
    // The policy annotation needs [runtime] enable_annotations.
    assert_refused(
        &s,
        "policy",
        &[(POLICY, &base64(NO_EXEC))],
        &[
            POLICY,
            "is not enabled",
            "\"agent.policy\"",
            "[runtime] enable_annotations",
        ],
    );

    // Enabled: the VM boots with 2 vCPUs.
    let cri = s.ctrd.cri();
    let pod = cri.run_pod_with(
        pod_config(
            &cri,
            "sized",
            &[(&format!("{HYPERVISOR}default_vcpus"), "2")],
        ),
        "capsa",
    );
    let smp = qemu_smp(&s, &pod);
    assert!(smp == "2" || smp.starts_with("2,"), "-smp {smp}");
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    s.assert_all_gone();
}

#[test]
fn a_pod_policy_denies_exec_and_can_lock_itself() {
    let s = setup("", r#"enable_annotations = ["agent\\.policy"]"#);
    let cri = s.ctrd.cri();
    // A policy that does not parse: the pod fails, naming the parser's
    // complaint, and nothing is left.
    assert_refused(
        &s,
        "bad",
        &[(
            POLICY,
            &base64("package agent_policy\nExecProcessRequest := {\n"),
        )],
        &["SetPolicy", "the policy does not parse"],
    );

    // Denies ExecProcess, and SetPolicy (no rule: denied).
    let config = pod_config(&cri, "noexec", &[(POLICY, &base64(NO_EXEC))]);
    let pod = cri.run_pod_with(config.clone(), "capsa");
    let c = cri.create_container(&pod, &config, "app", &s.image, &["sleep", "1000"]);
    cri.start(&c);
    let err = cri
        .try_exec_sync(&c, &["true"], Duration::from_secs(30))
        .expect_err("exec must be denied");
    assert!(
        err.message()
            .contains("ExecProcessRequest is blocked by policy"),
        "{err:?}"
    );
    let out = capsa(&s, &["exec", &pod, "--", "true"], None);
    assert!(!out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("PERMISSION_DENIED")
            && stderr.contains("ExecProcessRequest is blocked by policy"),
        "{stderr}"
    );
    // The policy has no SetPolicyRequest rule: it cannot be replaced.
    let allow_all = s.env.state_dir.join("allow-all.rego");
    std::fs::write(&allow_all, capsa_protocols::policy::ALLOW_ALL).unwrap();
    let out = capsa(
        &s,
        &["policy", "set", &pod, allow_all.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("SetPolicyRequest is blocked by policy"),
        "{out:?}"
    );
    let out = capsa(&s, &["policy", "get", &pod], None);
    assert_eq!(text(&out.stdout), NO_EXEC, "{out:?}");
    assert!(cri
        .try_exec_sync(&c, &["true"], Duration::from_secs(30))
        .is_err());

    std::fs::remove_file(&allow_all).unwrap();
    cri.stop_container(&c, Duration::from_secs(5));
    cri.remove_container(&c);
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    s.assert_all_gone();
}

#[test]
fn capsa_policy_set_takes_effect_on_an_allow_all_pod() {
    let s = setup("", "");
    let cri = s.ctrd.cri();
    let config = cri.pod_config("open");
    let pod = cri.run_pod_with(config.clone(), "capsa");
    let c = cri.create_container(&pod, &config, "app", &s.image, &["sleep", "1000"]);
    cri.start(&c);
    let (out, _, code) = cri.exec_sync(&c, &["echo", "open"], Duration::from_secs(30));
    assert_eq!((out.as_str(), code), ("open\n", 0));
    let out = capsa(&s, &["policy", "get", &pod], None);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    // From standard input; allows SetPolicy, and defines no ExecProcess
    // rule: exec is denied for want of a rule.
    let policy = NO_EXEC.replace("default ExecProcessRequest := false\n", "")
        + "default SetPolicyRequest := true\n";
    let out = capsa(&s, &["policy", "set", &pod, "-"], Some(policy.as_bytes()));
    assert!(out.status.success(), "{out:?}");
    let err = cri
        .try_exec_sync(&c, &["true"], Duration::from_secs(30))
        .expect_err("exec must be denied");
    assert!(
        err.message().contains(
            "ExecProcessRequest is blocked by policy (no rule data.agent_policy.ExecProcessRequest"
        ),
        "{err:?}"
    );
    let out = capsa(&s, &["policy", "get", &pod], None);
    assert_eq!(text(&out.stdout), policy);
    // It allows SetPolicy: back to allow-all.
    let out = capsa(
        &s,
        &["policy", "set", &pod, "-"],
        Some(capsa_protocols::policy::ALLOW_ALL.as_bytes()),
    );
    assert!(out.status.success(), "{out:?}");
    let (out, _, code) = cri.exec_sync(&c, &["echo", "again"], Duration::from_secs(30));
    assert_eq!((out.as_str(), code), ("again\n", 0));

    cri.stop_container(&c, Duration::from_secs(5));
    cri.remove_container(&c);
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    s.assert_all_gone();
}

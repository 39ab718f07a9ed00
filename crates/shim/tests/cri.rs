//! Kubernetes' view: pods through containerd's CRI plugin, runtime handler
//! `capsa`. One VM per pod, every container of the pod in it.

mod common;

use std::time::Duration;

use common::Setup;
use k8s_cri_state::*;

/// CRI's container states (`ContainerState` in the CRI API).
mod k8s_cri_state {
    pub const CONTAINER_RUNNING: i32 = 1;
    pub const CONTAINER_EXITED: i32 = 2;
}

const EXEC_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_pod_runs_its_containers_in_one_vm() {
    let s = Setup::new();
    s.ctrd.import_pause();
    let cri = s.ctrd.cri();
    let config = cri.pod_config("pod1");
    let pod = cri.run_pod_with(config.clone(), "capsa");

    let one = cri.create_container(&pod, &config, "one", &s.image, &["sleep", "1000"]);
    cri.start(&one);
    let two = cri.create_container(&pod, &config, "two", &s.image, &["sleep", "1000"]);
    cri.start(&two);
    let three = cri.create_container(&pod, &config, "three", &s.image, &["sh", "-c", "exit 3"]);
    cri.start(&three);

    // Same guest kernel boot for both containers, not the host's.
    let boot = |id: &str| {
        let (out, err, code) =
            cri.exec_sync(id, &["cat", "/proc/sys/kernel/random/boot_id"], EXEC_LIMIT);
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    let (b1, b2) = (boot(&one), boot(&two));
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(b1, b2, "the pod's containers run in one VM");
    assert_ne!(
        b1,
        host.trim(),
        "the containers run in a VM, not on the host"
    );

    // ExecSync: output, error output, exit code.
    let (out, err, code) = cri.exec_sync(
        &one,
        &["sh", "-c", "echo to-out; echo to-err >&2; exit 5"],
        EXEC_LIMIT,
    );
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("to-out\n", "to-err\n", 5)
    );

    // Container status: running, and exited with its code.
    assert_eq!(cri.container_status(&one).state, CONTAINER_RUNNING);
    let mut status = None;
    let exited = capsa_test_infra::wait_until(Duration::from_secs(60), || {
        let st = cri.container_status(&three);
        let done = st.state == CONTAINER_EXITED;
        status = Some(st);
        done
    });
    let status = status.expect("one status");
    assert!(exited, "container three never exited: {status:?}");
    assert_eq!(status.exit_code, 3, "{status:?}");

    // Stop and remove: nothing left.
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    assert!(cri.list_pods().is_empty());
    s.assert_all_gone();
}

//! Boots real guests under TCG: the guest mounts the virtio-fs share,
//! writes a file, sets its vsock device up and powers off when told to.

mod common;

use std::time::{Duration, Instant};

use capsa_hypervisor::qemu::QemuVm;
use capsa_hypervisor::{accel, Accelerator, AgentEndpoint, Vm};
use common::{assert_all_gone, initrd, wait_for, TestDir, SERIAL, TAG};

#[tokio::test]
async fn q35_guest_writes_to_the_share_and_powers_off() {
    boot_share_power_off("q35").await;
}

#[tokio::test]
async fn microvm_guest_writes_to_the_share_and_powers_off() {
    boot_share_power_off("microvm").await;
}

/// Boots under TCG. microvm with Debian's kernel hangs before its first
/// console line about one boot in six under TCG (a documented limit; q35,
/// the default, does not): for microvm, a boot that prints nothing within
/// 30 s (the first line comes after a few seconds, more under a heavy
/// load) is stopped and tried again, at most four times in all.
async fn boot(machine: &str) -> (TestDir, QemuVm, Instant) {
    let attempts = if machine == "microvm" { 4 } else { 1 };
    for attempt in 1..=attempts {
        let t = TestDir::new();
        let mut vm = QemuVm::new(t.config(machine, &initrd::share_and_power_off(TAG)));
        let started = Instant::now();
        vm.start().await.expect("start");
        if attempt == attempts
            || wait_for(Duration::from_secs(30), || !t.console().is_empty()).await
        {
            return (t, vm, started);
        }
        eprintln!("{machine}: no console output after 30 s (attempt {attempt}): booting again");
        vm.shutdown(Duration::from_secs(5)).await.expect("shutdown");
        assert_all_gone(&t);
    }
    unreachable!("the last attempt returns")
}

async fn boot_share_power_off(machine: &str) {
    let _serial = SERIAL.lock().await;
    let (t, mut vm, started) = boot(machine).await;
    assert_eq!(vm.accelerator(), Some(Accelerator::Tcg));
    assert!(vm.pid().is_some());
    if !accel::detect().vhost_vsock {
        let path = t.run_dir().join("vsock.sock");
        assert!(path.exists(), "no hybrid vsock socket");
        assert_eq!(
            vm.agent_endpoint(1024),
            AgentEndpoint::HybridVsock { path, port: 1024 }
        );
    }

    // The file exists before the guest's write lands: wait for the text.
    let file = t.shared().join("from-guest");
    let want = "hello from the guest\n";
    let wrote = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&file).is_ok_and(|text| text == want)
    })
    .await;
    assert!(
        wrote,
        "no {want:?} from the guest (file: {:?}); console:\n{}",
        std::fs::read_to_string(&file).ok(),
        t.console()
    );
    let vsock = vm.wait_guest_ready(Duration::from_secs(10)).await;
    assert!(
        vsock.expect("wait_guest_ready"),
        "vsock device not ready; console:\n{}",
        t.console()
    );
    assert!(
        !vm.wait_exit(Duration::ZERO).await.unwrap(),
        "QEMU exited before the guest was told to power off"
    );

    std::fs::write(t.shared().join("stop"), "").unwrap();
    let exited = vm.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(exited, "guest did not power off; console:\n{}", t.console());
    eprintln!("{machine}: {:.2?} from start to exit", started.elapsed());
    assert!(
        t.console().contains("capsa-test: powering off"),
        "console:\n{}",
        t.console()
    );

    let stop = Instant::now();
    vm.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    eprintln!("{machine}: shutdown after exit took {:.2?}", stop.elapsed());
    vm.shutdown(Duration::from_secs(5))
        .await
        .expect("second shutdown");
    assert_all_gone(&t);
}

//! `shutdown` ends VMs that do not end themselves, within its bound.

mod common;

use std::time::{Duration, Instant};

use capsa_hypervisor::qemu::QemuVm;
use capsa_hypervisor::Vm;
use common::{assert_all_gone, initrd, TestDir, SERIAL};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const GRACE: Duration = Duration::from_secs(2);
/// `GRACE`, plus the helpers' SIGTERM grace and reaping, plus slack.
const BOUND: Duration = Duration::from_secs(8);

/// The guest's init sleeps forever: QEMU is asked to quit over QMP.
#[tokio::test]
async fn hung_guest_is_stopped() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut vm = QemuVm::new(t.config("q35", &initrd::hang()));
    vm.start().await.expect("start");
    // Let the kernel get as far as running init.
    assert!(!vm.wait_exit(Duration::from_secs(3)).await.unwrap());

    let start = Instant::now();
    vm.shutdown(GRACE).await.expect("shutdown");
    let took = start.elapsed();
    eprintln!("shutdown of a hung guest took {took:.2?}");
    assert!(took < BOUND, "shutdown took {took:?}");
    assert_all_gone(&t);
}

/// QEMU itself is frozen (SIGSTOP): QMP connects but never answers, so
/// `shutdown` must give up after `grace` and kill it.
#[tokio::test]
async fn frozen_qemu_is_killed() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut vm = QemuVm::new(t.config("q35", &initrd::hang()));
    vm.start().await.expect("start");
    let pid = vm.pid().expect("pid") as i32;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();

    let start = Instant::now();
    vm.shutdown(GRACE).await.expect("shutdown");
    let took = start.elapsed();
    eprintln!("shutdown of a frozen QEMU took {took:.2?}");
    assert!(took >= GRACE, "gave up before the grace period: {took:?}");
    assert!(took < BOUND, "shutdown took {took:?}");
    assert_all_gone(&t);
}

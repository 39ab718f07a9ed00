//! `start` failures name the step and the culprit, and leave nothing
//! running and nothing in `run_dir`.

mod common;

use capsa_hypervisor::qemu::QemuVm;
use capsa_hypervisor::{Error, Vm};
use common::{assert_all_gone, initrd, TestDir, SERIAL};
use std::time::Duration;

#[tokio::test]
async fn missing_kernel_is_named() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut cfg = t.config("q35", &initrd::hang());
    cfg.kernel = t.path().join("no-such-vmlinuz");
    let mut vm = QemuVm::new(cfg);
    let err = vm.start().await.expect_err("start with no kernel");
    assert!(matches!(err, Error::MissingFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("kernel"), "{msg}");
    assert!(
        msg.contains(&*t.path().join("no-such-vmlinuz").to_string_lossy()),
        "{msg}"
    );
    assert_eq!(vm.pid(), None);
    vm.shutdown(Duration::from_secs(1)).await.expect("shutdown");
    assert_all_gone(&t);
}

#[tokio::test]
async fn missing_initrd_is_named() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut cfg = t.config("q35", &initrd::hang());
    cfg.initrd = Some(t.path().join("no-such-initrd"));
    let err = QemuVm::new(cfg)
        .start()
        .await
        .expect_err("start with no initrd");
    let msg = err.to_string();
    assert!(
        msg.contains("initrd") && msg.contains("no-such-initrd"),
        "{msg}"
    );
    assert_all_gone(&t);
}

/// QEMU starts and exits at once: the error carries its stderr, and the
/// helpers started before it are stopped.
#[tokio::test]
async fn qemu_exiting_at_start_reports_its_stderr() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut cfg = t.config("q35", &initrd::hang());
    let bogus = t.path().join("bogus-vmlinuz");
    std::fs::write(&bogus, "not a kernel\n").unwrap();
    cfg.kernel = bogus;
    let err = QemuVm::new(cfg)
        .start()
        .await
        .expect_err("start with a bogus kernel");
    assert!(matches!(err, Error::VmExited { .. }), "{err:?}");
    // QEMU's own words, from its stderr.
    let msg = err.to_string();
    assert!(msg.contains("qemu: ") && msg.contains("kernel"), "{msg}");
    assert_all_gone(&t);
}

/// A helper that fails at start: the error names it and shows its log; the
/// helper started before it is stopped.
#[tokio::test]
async fn failing_virtiofsd_is_named() {
    let _serial = SERIAL.lock().await;
    let t = TestDir::new();
    let mut cfg = t.config("q35", &initrd::hang());
    if let Some(fs) = cfg.shared_fs.as_mut() {
        fs.extra_args.push("--no-such-option".into());
    }
    let err = QemuVm::new(cfg)
        .start()
        .await
        .expect_err("start with a bad virtiofsd option");
    assert!(matches!(err, Error::HelperExited { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("virtiofsd") && msg.contains("--no-such-option"),
        "{msg}"
    );
    assert_all_gone(&t);
}

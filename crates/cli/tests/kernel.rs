//! The guest kernels: capsa's own build (the default) has everything built
//! in and runs the workload with nothing loaded as a module and every
//! device bound to its driver; Debian's kernel with its modular initrd
//! (`<assets>/debian`) stays selectable; `capsa check` tells them apart.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use capsa_assets::{load_manifest, missing_options, KernelInput};
use capsa_test_infra::{assert_no_leaks, assets_dir, run_bounded, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

fn capsa(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsa"));
    cmd.arg("--config").arg(config).args(args);
    cmd
}

fn run(env: &TestEnv, config: &Path, script: &str) -> Output {
    let mut c = capsa(config, &["run", "--rootfs"]);
    c.arg(&env.rootfs).args(["--", "sh", "-c", script]);
    let out = run_bounded(c, None, LIMIT);
    assert_no_leaks(&env.state_dir);
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The id of capsa's kernel build in the assets; fails if the assets boot
/// another kernel.
fn build_id() -> String {
    match load_manifest(&assets_dir())
        .expect("assets manifest")
        .inputs
        .kernel
    {
        KernelInput::Build { id, .. } => id,
        other => panic!("the assets' kernel is not capsa's build but {other:?}: run `make assets`"),
    }
}

/// In the guest (seen from a container): no `/proc/modules` (the kernel
/// cannot load modules), every virtio device and every PCI device bound
/// to a driver, and the running kernel's configuration has what the
/// repository's fragments ask for.
#[test]
fn capsa_kernel_has_everything_built_in_and_bound() {
    build_id();
    let env = TestEnv::new();
    let script = "\
        if [ -e /proc/modules ]; then echo modules: $(cat /proc/modules | wc -l); fi; \
        for d in /sys/bus/virtio/devices/* /sys/bus/pci/devices/*; do \
          [ -e \"$d\" ] || continue; \
          drv=none; [ -e \"$d/driver\" ] && drv=$(basename $(readlink \"$d/driver\")); \
          echo \"device $(basename $d) $(cat $d/vendor 2>/dev/null || echo -) $(cat $d/device) $drv\"; \
        done; \
        echo config-begin; zcat /proc/config.gz; echo config-end";
    let out = run(&env, &env.config, script);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("modules:"),
        "modules loaded in the guest: {stdout}"
    );

    let devices: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("device "))
        .collect();
    let fields: Vec<Vec<&str>> = devices
        .iter()
        .map(|d| d.split_whitespace().collect())
        .collect();
    // virtio IDs: 0x001a virtio-fs, 0x0013 vsock.
    for id in ["0x001a", "0x0013"] {
        assert!(
            fields
                .iter()
                .any(|f| f[1].starts_with("virtio") && f[3] == id),
            "no virtio device {id}: {devices:?}"
        );
    }
    // Every virtio device, every virtio PCI function (vendor 0x1af4) and
    // every QEMU PCIe root port (0x1b36) has its driver; the chipset's
    // functions capsa does not use (SATA, SMBus) may have none.
    for f in &fields {
        let ours = f[1].starts_with("virtio") || f[2] == "0x1af4" || f[2] == "0x1b36";
        assert!(
            !ours || f[4] != "none",
            "unbound device: {f:?} (all: {devices:?})"
        );
    }

    let config: String = stdout
        .lines()
        .skip_while(|l| *l != "config-begin")
        .skip(1)
        .take_while(|l| *l != "config-end")
        .map(|l| format!("{l}\n"))
        .collect();
    let kernel_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel");
    let recipe =
        capsa_assets::kbuild::Recipe::load(&kernel_dir, capsa_assets::Arch::X86_64).unwrap();
    let missing = missing_options(&recipe.merged_config(), &config);
    assert!(
        missing.is_empty(),
        "the running kernel lacks: {}",
        missing.join(", ")
    );
}

/// `kernel = <assets>/debian/vmlinuz` with its initrd: the workload runs on
/// Debian's kernel, and `capsa check` calls it foreign; the default is
/// capsa's build, named by its id.
#[test]
fn debian_kernel_stays_selectable_and_check_names_the_kernel() {
    let id = build_id();
    let env = TestEnv::new();
    let out = run_bounded(capsa(&env.config, &["check"]), None, LIMIT);
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kernel in use"))
        .unwrap_or_else(|| panic!("no kernel line in {stdout}"));
    assert!(
        line.contains(&format!("capsa's build {}", &id[..12])),
        "{line}"
    );

    let debian_dir = assets_dir().join("debian");
    let debian = load_manifest(&debian_dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make assets`)", debian_dir.display()));
    assert!(
        !debian.modules.is_empty(),
        "Debian's initrd has its modules"
    );
    let text_config = std::fs::read_to_string(&env.config).unwrap();
    let config = env.write_config(
        "debian.toml",
        &text_config
            .replace(
                &format!("kernel = {:?}", assets_dir().join("vmlinuz")),
                &format!("kernel = {:?}", debian.kernel),
            )
            .replace(
                &format!("initrd = {:?}", assets_dir().join("initrd.img")),
                &format!("initrd = {:?}", debian.initrd),
            ),
    );
    let out = run(&env, &config, "uname -r");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), debian.kernel_version);

    let out = run_bounded(capsa(&config, &["check"]), None, LIMIT);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "kernel in use   foreign kernel (release {})",
            debian.kernel_version
        )),
        "{stdout}"
    );
}

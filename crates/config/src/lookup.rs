use std::path::{Path, PathBuf};

use crate::{validate, Config, Error, Invalid};

/// Environment variable naming the configuration file.
pub const ENV_CONF_FILE: &str = "CAPSA_CONF_FILE";

/// Files tried, in order, when neither a path nor `CAPSA_CONF_FILE` is given.
pub const DEFAULT_PATHS: &[&str] = &[
    "/etc/capsa/configuration.toml",
    "/usr/share/defaults/capsa/configuration.toml",
];

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// No file was found: built-in defaults.
    Defaults,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// Finds the configuration file: `explicit`, then `$CAPSA_CONF_FILE`, then
/// [`DEFAULT_PATHS`]. An explicit or environment path must exist.
pub fn find(explicit: Option<&Path>) -> Result<Source, Error> {
    let env = std::env::var_os(ENV_CONF_FILE).filter(|v| !v.is_empty());
    find_in(explicit, env.as_deref().map(Path::new), DEFAULT_PATHS)
}

fn find_in(
    explicit: Option<&Path>,
    env: Option<&Path>,
    defaults: &[&str],
) -> Result<Source, Error> {
    if let Some(path) = explicit.or(env) {
        if !path.is_file() {
            return Err(Error::NotFound { path: path.into() });
        }
        return Ok(Source::File(path.into()));
    }
    Ok(defaults
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .map_or(Source::Defaults, Source::File))
}

/// Finds, reads, parses and validates the configuration (the shared keys
/// only: [`load_checked`] adds the driver's checks).
pub fn load(explicit: Option<&Path>) -> Result<(Config, Source), Error> {
    load_checked(explicit, |_| Ok(()))
}

/// [`load`], then `check` (a driver's checks of its own keys), whose
/// error gets the file's path.
pub fn load_checked(
    explicit: Option<&Path>,
    check: impl Fn(&Config) -> Result<(), Invalid>,
) -> Result<(Config, Source), Error> {
    let source = find(explicit)?;
    let config = match &source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            parse_checked(&text, path, check)?
        }
        Source::Defaults => {
            let config = Config::default();
            check(&config).map_err(|e| e.at(Path::new("built-in defaults")))?;
            config
        }
    };
    tracing::debug!(%source, "configuration loaded");
    Ok((config, source))
}

/// Parses and validates `text`, read from `path` (the shared keys only).
pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
    parse_checked(text, path, |_| Ok(()))
}

/// [`parse`], then `check`.
pub fn parse_checked(
    text: &str,
    path: &Path,
    check: impl Fn(&Config) -> Result<(), Invalid>,
) -> Result<Config, Error> {
    let config: Config = toml::from_str(text).map_err(|e| Error::Parse {
        path: path.into(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    validate::check(&config, path)?;
    check(&config).map_err(|e| e.at(path))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "").unwrap();
        let other = dir.path().join("env.toml");
        std::fs::write(&other, "").unwrap();
        assert_eq!(
            find_in(Some(&file), Some(&other), &[]).unwrap(),
            Source::File(file.clone())
        );
        assert_eq!(
            find_in(None, Some(&other), &[]).unwrap(),
            Source::File(other.clone())
        );
        let missing = dir.path().join("missing.toml");
        let err = find_in(Some(&missing), None, &[]).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn defaults_are_tried_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let second = dir.path().join("second.toml");
        std::fs::write(&second, "").unwrap();
        let first = dir.path().join("first.toml");
        let paths = [first.to_str().unwrap(), second.to_str().unwrap()];
        assert_eq!(
            find_in(None, None, &paths).unwrap(),
            Source::File(second.clone())
        );
        std::fs::write(&first, "").unwrap();
        assert_eq!(
            find_in(None, None, &paths).unwrap(),
            Source::File(first.clone())
        );
        assert_eq!(find_in(None, None, &[]).unwrap(), Source::Defaults);
    }

    fn qemu(c: &Config) -> &crate::QemuSettings {
        c.hypervisor.driver.qemu().expect("the QEMU driver")
    }

    #[test]
    fn kata_keys_parse() {
        let text = r#"
[hypervisor.qemu]
path = "/opt/qemu"
kernel = "/k"
initrd = "/i"
machine_type = "microvm"
default_vcpus = 2
default_memory = 1024
default_maxvcpus = 4
default_maxmemory = 4096
memory_slots = 3
enable_virtio_mem = false
reclaim_guest_freed_memory = true
kernel_params = "quiet"
shared_fs = "virtio-fs"
virtio_fs_daemon = "/v"
virtio_fs_cache = "never"
virtio_fs_extra_args = ["--thread-pool-size=1"]
disable_block_device_use = true
block_device_driver = "virtio-scsi"
disable_vhost_net = true
enable_debug = true

[agent.capsa]
dial_timeout = 10
kernel_modules = ["dummy"]
enable_debug = true
health_check_interval = 0

[runtime]
enable_debug = true
internetworking_model = "none"
"#;
        let c = parse(text, Path::new("/x.toml")).unwrap();
        let v = &c.hypervisor.vm;
        let q = qemu(&c);
        // Shared keys in the neutral value, typed.
        assert_eq!(v.kernel, Path::new("/k"));
        assert_eq!(v.default_memory, 1024);
        assert_eq!(v.default_maxvcpus, 4);
        assert_eq!(v.default_maxmemory, 4096);
        assert_eq!(v.virtio_fs_extra_args.len(), 1);
        assert_eq!(v.virtio_fs_cache, crate::VirtioFsCache::Never);
        assert_eq!(v.shared_fs, crate::SharedFs::VirtioFs);
        assert_eq!(v.block_device_driver, crate::BlockDriver::VirtioScsi);
        assert!(v.disable_vhost_net && v.enable_debug);
        // QEMU's own keys in its settings.
        assert_eq!(q.path, Path::new("/opt/qemu"));
        assert_eq!(q.machine_type, crate::MachineType::Microvm);
        assert_eq!(q.memory_slots, 3);
        assert!(q.reclaim_guest_freed_memory);
        assert_eq!(c.agent.capsa.dial_timeout, 10);
        assert_eq!(c.agent.capsa.health_check_interval, 0);
        assert_eq!(c.agent.capsa.kernel_modules, vec!["dummy".to_string()]);
        assert!(c.runtime.enable_debug);
        assert_eq!(c.runtime.internetworking_model, "none");
        let d = parse("", Path::new("/x.toml")).unwrap();
        assert_eq!(d, Config::default());
        assert_eq!(d.hypervisor.driver.name(), "qemu");
        assert_eq!(d.runtime.internetworking_model, "tcfilter");
        assert!(!d.hypervisor.vm.disable_vhost_net);
        let (v, q) = (&d.hypervisor.vm, qemu(&d));
        assert_eq!(
            (v.default_maxvcpus, v.default_maxmemory, q.memory_slots),
            (0, 0, 10),
            "Kata's defaults"
        );
        assert!(!q.enable_virtio_mem);
        assert!(
            q.reclaim_guest_freed_memory,
            "capsa's default (Kata's is false): docs/performance.md, Density"
        );
        // An empty table is the defaults too.
        assert_eq!(
            parse("[hypervisor.qemu]\n", Path::new("/x.toml")).unwrap(),
            d
        );
    }

    #[test]
    fn printed_configuration_reads_back_the_same() {
        let text = "[hypervisor.qemu]\nmachine_type = \"microvm\"\ndefault_vcpus = 2\nshared_fs = \"none\"\n";
        let c = parse(text, Path::new("/p.toml")).unwrap();
        let printed = toml::to_string(&c).unwrap();
        assert!(printed.contains("[hypervisor.qemu]"), "{printed}");
        // One table: the shared keys first, then QEMU's.
        let kernel = printed.find("kernel =").unwrap();
        let path = printed.find("path =").unwrap();
        assert!(kernel < path, "{printed}");
        assert_eq!(parse(&printed, Path::new("/p.toml")).unwrap(), c);
    }

    #[test]
    fn shared_keys_are_split_from_the_drivers() {
        let shared = crate::driver::shared_keys();
        for key in ["kernel", "default_vcpus", "shared_fs", "hotplug_timeout"] {
            assert!(shared.iter().any(|k| k == key), "{key}: {shared:?}");
        }
        let own = toml::Table::try_from(crate::QemuSettings::default()).unwrap();
        for key in own.keys() {
            assert!(!shared.contains(key), "{key} is both shared and QEMU's");
        }
        assert!(own.contains_key("pcie_root_port") && own.contains_key("machine_type"));
    }

    #[test]
    fn shared_limits_are_checked() {
        let bad = |text: &str, key: &str, reason: &str| {
            let err = parse(text, Path::new("/m.toml")).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(reason) && err.contains("/m.toml"),
                "{text}: {err}"
            );
        };
        bad(
            "[hypervisor.qemu]\ndefault_vcpus = 2\ndefault_maxvcpus = 1\n",
            "hypervisor.qemu.default_maxvcpus",
            "less than default_vcpus (2)",
        );
        bad(
            "[hypervisor.qemu]\ndefault_maxmemory = 256\n",
            "hypervisor.qemu.default_maxmemory",
            "256 MiB is less than default_memory (512 MiB)",
        );
        bad(
            "[hypervisor.qemu]\nimage = \"/r.img\"\n",
            "hypervisor.qemu.image",
            "and hypervisor.qemu.initrd (\"/usr/share/capsa/initrd.img\") are exclusive",
        );
        bad(
            "[hypervisor.qemu]\ninitrd = \"\"\n",
            "hypervisor.qemu.initrd",
            "must be set",
        );
        bad(
            "[hypervisor.qemu]\nhotplug_timeout = 0\n",
            "hypervisor.qemu.hotplug_timeout",
            "not between 1 and 60",
        );
        parse(
            "[hypervisor.qemu]\ninitrd = \"\"\nimage = \"/r.img\"\n",
            Path::new("/m.toml"),
        )
        .unwrap();
    }

    #[test]
    fn enums_name_the_key_and_the_values() {
        for (text, key, value) in [
            (
                "machine_type = \"pc\"",
                "hypervisor.qemu.machine_type",
                "microvm",
            ),
            (
                "accelerator = \"hvf\"",
                "hypervisor.qemu.accelerator",
                "tcg",
            ),
            (
                "shared_fs = \"9p\"",
                "hypervisor.qemu.shared_fs",
                "virtio-fs",
            ),
            (
                "virtio_fs_cache = \"x\"",
                "hypervisor.qemu.virtio_fs_cache",
                "metadata",
            ),
            (
                "block_device_driver = \"nvme\"",
                "hypervisor.qemu.block_device_driver",
                "virtio-scsi",
            ),
        ] {
            let err = parse(
                &format!("[hypervisor.qemu]\n{text}\n"),
                Path::new("/e.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(key) && err.contains(value) && err.contains("/e.toml"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn one_hypervisor_table() {
        let err = parse(
            "[hypervisor.qemu]\n[hypervisor.firecracker]\n",
            Path::new("/t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("one hypervisor table"), "{err}");
    }

    #[test]
    fn driver_checks_run_with_the_path() {
        let check = |c: &Config| {
            if c.hypervisor.vm.default_vcpus > 4 {
                Err(Invalid::new(c.hypervisor.key("default_vcpus"), "too many"))
            } else {
                Ok(())
            }
        };
        let err = parse_checked(
            "[hypervisor.qemu]\ndefault_vcpus = 5\n",
            Path::new("/c.toml"),
            check,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "configuration file /c.toml: invalid value for `hypervisor.qemu.default_vcpus`: too many"
        );
        parse_checked("", Path::new("/c.toml"), check).unwrap();
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse(
            "[hypervisor.qemu]\nbogus_key = 1\n",
            Path::new("/etc/x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus_key"), "{err}");
        assert!(err.contains("/etc/x.toml"), "{err}");
        let err = parse("[hypervisor.firecracker]\n", Path::new("/y.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("firecracker"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_file() {
        let err = parse(
            "[hypervisor.qemu]\ndefault_vcpus = 0\n",
            Path::new("/z.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("default_vcpus"), "{err}");
        assert!(err.contains("/z.toml"), "{err}");
        let err = parse(
            "[hypervisor.qemu]\ndefault_memory = \"lots\"\n",
            Path::new("/z.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("default_memory"), "{err}");
        let err = parse(
            "[runtime]\nstate_dir = \"run/capsa\"\n",
            Path::new("/z.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("runtime.state_dir"), "{err}");
        assert!(err.contains("not an absolute path"), "{err}");
        // tracing: the endpoint is checked when tracing is on.
        let on = |endpoint: &str| {
            let text =
                format!("[runtime]\nenable_tracing = true\ntracing_endpoint = {endpoint:?}\n");
            parse(&text, Path::new("/z.toml")).map_err(|e| e.to_string())
        };
        assert!(on("http://127.0.0.1:4317").unwrap().runtime.enable_tracing);
        assert!(on("http://collector.example:4317/").is_ok());
        for bad in [
            "127.0.0.1:4317",
            "http://:4317",
            "http://host",
            "http://h:0",
            "ftp://h:1",
            "https://collector.example:443",
        ] {
            let err = on(bad).unwrap_err();
            assert!(err.contains("runtime.tracing_endpoint"), "{bad}: {err}");
        }
        let off = parse(
            "[runtime]\ntracing_endpoint = \"x\"\n",
            Path::new("/z.toml"),
        )
        .unwrap();
        assert!(!off.runtime.enable_tracing);
        let err = parse("[runtime]\ntimeline_dir = \"svg\"\n", Path::new("/z.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runtime.timeline_dir") && err.contains("not an absolute path"),
            "{err}"
        );
        let err = parse(
            "[runtime]\ncni_plugin_dirs = [\"/usr/lib/cni\", \"bin\"]\n",
            Path::new("/z.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("runtime.cni_plugin_dirs") && err.contains("bin"),
            "{err}"
        );
        let err = parse(
            "[runtime]\ninternetworking_model = \"bridged\"\n",
            Path::new("/z.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("runtime.internetworking_model"), "{err}");
        assert!(err.contains("bridged"), "{err}");
    }

    #[test]
    fn debug_console_is_off_unless_asked() {
        let c = parse("", Path::new("/d.toml")).unwrap();
        assert!(!c.agent.capsa.debug_console_enabled);
        let c = parse(
            "[agent.capsa]\ndebug_console_enabled = true\n",
            Path::new("/d.toml"),
        )
        .unwrap();
        assert!(c.agent.capsa.debug_console_enabled);
    }
}

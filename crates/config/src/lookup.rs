use std::path::{Path, PathBuf};

use crate::{validate, Config, Error};

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

/// Finds, reads, parses and validates the configuration.
pub fn load(explicit: Option<&Path>) -> Result<(Config, Source), Error> {
    let source = find(explicit)?;
    let config = match &source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            parse(&text, path)?
        }
        Source::Defaults => Config::default(),
    };
    tracing::debug!(%source, "configuration loaded");
    Ok((config, source))
}

/// Parses and validates `text`, read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
    let config: Config = toml::from_str(text).map_err(|e| Error::Parse {
        path: path.into(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    validate::check(&config, path)?;
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
        assert_eq!(c.hypervisor.qemu.machine_type, "microvm");
        assert_eq!(c.hypervisor.qemu.default_memory, 1024);
        assert_eq!(c.hypervisor.qemu.default_maxvcpus, 4);
        assert_eq!(c.hypervisor.qemu.default_maxmemory, 4096);
        assert_eq!(c.hypervisor.qemu.memory_slots, 3);
        assert!(c.hypervisor.qemu.reclaim_guest_freed_memory);
        assert_eq!(c.hypervisor.qemu.virtio_fs_extra_args.len(), 1);
        assert_eq!(c.agent.capsa.dial_timeout, 10);
        assert_eq!(c.agent.capsa.health_check_interval, 0);
        assert_eq!(c.agent.capsa.kernel_modules, vec!["dummy".to_string()]);
        assert!(c.runtime.enable_debug);
        assert!(c.hypervisor.qemu.disable_vhost_net);
        assert_eq!(c.runtime.internetworking_model, "none");
        let d = parse("", Path::new("/x.toml")).unwrap();
        assert_eq!(d.runtime.internetworking_model, "tcfilter");
        assert!(!d.hypervisor.qemu.disable_vhost_net);
        let q = &d.hypervisor.qemu;
        assert_eq!(
            (q.default_maxvcpus, q.default_maxmemory, q.memory_slots),
            (0, 0, 10),
            "Kata's defaults"
        );
        assert!(!q.enable_virtio_mem);
        assert!(
            q.reclaim_guest_freed_memory,
            "capsa's default (Kata's is false): docs/performance.md, Density"
        );
    }

    #[test]
    fn hot_plug_maxima_are_checked() {
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
            "[hypervisor.qemu]\nmemory_slots = 300\n",
            "hypervisor.qemu.memory_slots",
            "more than 256",
        );
        bad(
            "[hypervisor.qemu]\nenable_virtio_mem = true\nmachine_type = \"microvm\"\n",
            "hypervisor.qemu.enable_virtio_mem",
            "q35",
        );
        bad(
            "[hypervisor.qemu]\nreclaim_guest_freed_memory = false\nenable_virtio_mem = true\npcie_root_port = 27\n",
            "hypervisor.qemu.pcie_root_port",
            "more than 26",
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
            "[hypervisor.qemu]\ninitrd = \"\"\nimage = \"/r.img\"\nmachine_type = \"microvm\"\n",
            "hypervisor.qemu.image",
            "disable_image_nvdimm",
        );
        bad(
            "[hypervisor.qemu]\nreclaim_guest_freed_memory = false\ninitrd = \"\"\nimage = \"/r.img\"\ndisable_image_nvdimm = true\npcie_root_port = 27\n",
            "hypervisor.qemu.pcie_root_port",
            "27 is more than 26 (with an image on virtio-blk,",
        );
        parse(
            "[hypervisor.qemu]\ninitrd = \"\"\nimage = \"/r.img\"\n",
            Path::new("/m.toml"),
        )
        .unwrap();
        let ok = "[hypervisor.qemu]\nreclaim_guest_freed_memory = false\ndefault_maxvcpus = 0\ndefault_maxmemory = 512\nenable_virtio_mem = true\npcie_root_port = 26\n";
        parse(ok, Path::new("/m.toml")).unwrap();
        bad(
            "[hypervisor.qemu]\nenable_virtio_mem = true\nreclaim_guest_freed_memory = true\npcie_root_port = 26\n",
            "hypervisor.qemu.pcie_root_port",
            "26 is more than 25 (with enable_virtio_mem and reclaim_guest_freed_memory",
        );
        bad(
            "[hypervisor.qemu]\ntcg_tb_size = 4096\n",
            "hypervisor.qemu.tcg_tb_size",
            "4096 MiB is more than 2048 MiB",
        );
        let ok = "[hypervisor.qemu]\nreclaim_guest_freed_memory = true\npcie_root_port = 26\ntcg_tb_size = 0\n";
        let q = parse(ok, Path::new("/m.toml")).unwrap().hypervisor.qemu;
        assert!(q.reclaim_guest_freed_memory);
        assert_eq!(q.tcg_tb_size, 0);
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

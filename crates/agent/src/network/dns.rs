//! The sandbox's DNS: CreateSandbox's `dns` lines become a guest file that
//! is bind-mounted, read-only, on the `/etc/resolv.conf` of each container
//! whose spec mounts one (the runtime's copy in the shared directory is
//! replaced; Kata's agent does the same, at the same path).

use std::path::Path;

use oci_spec::runtime::Spec;

use super::NetworkError;

/// Where the sandbox's `resolv.conf` lives in the guest (Kata's path).
pub const SANDBOX_DNS_FILE: &str = "/run/kata-containers/sandbox/resolv.conf";

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The file's content: one line each.
pub fn resolv_conf(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// Writes `lines` to `path` (mode 0644), its directory created.
pub fn write(path: &Path, lines: &[String]) -> Result<(), NetworkError> {
    let err = |source| NetworkError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, resolv_conf(lines)).map_err(err)
}

/// Points the spec's `/etc/resolv.conf` mount, if any, at `file`,
/// read-only. Returns whether there was one.
pub fn use_sandbox_dns(spec: &mut Spec, file: &Path) -> bool {
    let mut found = false;
    for m in spec.mounts_mut().iter_mut().flatten() {
        if m.destination() != Path::new(RESOLV_CONF) {
            continue;
        }
        found = true;
        m.set_source(Some(file.to_path_buf()));
        m.set_typ(Some("bind".to_string()));
        let mut options: Vec<String> = m
            .options()
            .iter()
            .flatten()
            .filter(|o| *o != "rw" && *o != "ro")
            .cloned()
            .collect();
        if !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.push("rbind".to_string());
        }
        options.push("ro".to_string());
        m.set_options(Some(options));
    }
    found
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{Mount, SpecBuilder};

    use super::*;

    #[test]
    fn lines_become_the_file() {
        let lines = vec![
            "nameserver 10.96.0.10".to_string(),
            "search default.svc.cluster.local ".to_string(),
            "options ndots:5".to_string(),
        ];
        assert_eq!(
            resolv_conf(&lines),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sandbox/resolv.conf");
        write(&file, &lines).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), resolv_conf(&lines));
    }

    #[test]
    fn the_resolv_conf_mount_takes_the_sandbox_file_read_only() {
        let mut resolv = Mount::default();
        resolv.set_destination("/etc/resolv.conf".into());
        resolv.set_source(Some(
            "/run/kata-containers/shared/containers/c-resolv.conf".into(),
        ));
        resolv.set_options(Some(vec!["rbind".into(), "rw".into()]));
        let mut other = Mount::default();
        other.set_destination("/etc/hosts".into());
        other.set_source(Some("/x/hosts".into()));
        let mut spec = SpecBuilder::default()
            .mounts(vec![resolv, other.clone()])
            .build()
            .unwrap();
        assert!(use_sandbox_dns(&mut spec, Path::new(SANDBOX_DNS_FILE)));
        let mounts = spec.mounts().as_ref().unwrap();
        assert_eq!(
            mounts[0].source().as_deref(),
            Some(Path::new(SANDBOX_DNS_FILE))
        );
        assert_eq!(mounts[0].typ().as_deref(), Some("bind"));
        assert_eq!(
            mounts[0].options().as_deref(),
            Some(&["rbind".to_string(), "ro".to_string()][..])
        );
        assert_eq!(mounts[1], other);

        let mut none = SpecBuilder::default().mounts(vec![other]).build().unwrap();
        assert!(!use_sandbox_dns(&mut none, Path::new(SANDBOX_DNS_FILE)));
    }
}

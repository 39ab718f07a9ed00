//! The OCI runtime spec of a container started by `capsa run`.

use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxNamespaceType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::Error;

/// The process a container runs, as the user asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, added to the defaults (`PATH`, `TERM` with a tty).
    pub env: Vec<String>,
    /// Working directory inside the container; `/` if empty.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub terminal: bool,
    /// Rows and columns of the terminal, with `terminal`.
    pub console_size: Option<(u16, u16)>,
}

/// A host directory or file bind-mounted into the container
/// (`capsa run -v SRC:DST[:ro|:rw]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The host path, as given (resolved and checked when shared).
    pub source: PathBuf,
    /// The absolute path in the container.
    pub destination: String,
    pub readonly: bool,
}

/// A `-v` argument that is not `SRC:DST[:ro|:rw]`.
#[derive(Debug, thiserror::Error)]
#[error("volume {arg:?}: {reason} (expected SRC:DST[:ro|:rw], DST absolute)")]
pub struct BadVolume {
    arg: String,
    reason: &'static str,
}

impl FromStr for Volume {
    type Err = BadVolume;

    fn from_str(arg: &str) -> Result<Self, BadVolume> {
        let bad = |reason| BadVolume {
            arg: arg.into(),
            reason,
        };
        let parts: Vec<&str> = arg.split(':').collect();
        let (source, destination, readonly) = match parts[..] {
            [s, d] => (s, d, false),
            [s, d, "ro"] => (s, d, true),
            [s, d, "rw"] => (s, d, false),
            [_, _, _] => return Err(bad("the mode is neither ro nor rw")),
            _ => return Err(bad("not two or three ':'-separated fields")),
        };
        if source.is_empty() {
            return Err(bad("empty source"));
        }
        if !destination.starts_with('/') {
            return Err(bad("destination is not absolute"));
        }
        Ok(Self {
            source: source.into(),
            destination: destination.into(),
            readonly,
        })
    }
}

/// The character devices every container may use (runc's defaults):
/// null, zero, full, random, urandom, tty, console, ptmx, and the pty
/// slaves (major 136, any minor).
const STANDARD_DEVICES: [(i64, Option<i64>); 9] = [
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(1)),
    (5, Some(2)),
    (136, None),
];

/// runc's device rules: deny every device, then allow the standard ones
/// (containerd's default spec sends the deny; the guest's libcontainer adds
/// the same allows itself, written out here so the spec says it all).
fn device_rules() -> Result<Vec<LinuxDeviceCgroup>, Error> {
    let mut rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?];
    for (major, minor) in STANDARD_DEVICES {
        let mut rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major)
            .access("rwm");
        if let Some(minor) = minor {
            rule = rule.minor(minor);
        }
        rules.push(rule.build()?);
    }
    Ok(rules)
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the spec: the OCI defaults (namespaces, mounts, capabilities,
/// masked paths of `runc spec`), the process, the rootfs at `guest_root`,
/// runc's device rules (deny all but the standard devices), and no network
/// namespace of its own (the container uses the VM's network).
pub fn build(process: &ProcessSpec, guest_root: &str, hostname: &str) -> Result<Spec, Error> {
    let mut spec = Spec::default();
    let mut env = vec![DEFAULT_PATH.to_string()];
    if process.terminal {
        env.push("TERM=xterm".into());
    }
    for e in &process.env {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|d| d.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let cwd = if process.cwd.is_empty() {
        "/"
    } else {
        &process.cwd
    };
    let default_process = spec.process().clone().unwrap_or_default();
    let proc = ProcessBuilder::default()
        .terminal(process.terminal)
        .args(process.args.clone())
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(process.uid)
                .gid(process.gid)
                .build()?,
        )
        .capabilities(default_process.capabilities().clone().unwrap_or_default())
        .rlimits(default_process.rlimits().clone().unwrap_or_default())
        .no_new_privileges(default_process.no_new_privileges().unwrap_or(true))
        .build()?;
    let mut proc = proc;
    if let (true, Some((rows, cols))) = (process.terminal, process.console_size) {
        proc.set_console_size(Some(
            oci_spec::runtime::BoxBuilder::default()
                .height(u64::from(rows))
                .width(u64::from(cols))
                .build()?,
        ));
    }
    spec.set_process(Some(proc));
    spec.set_root(Some(
        RootBuilder::default()
            .path(guest_root)
            .readonly(false)
            .build()?,
    ));
    spec.set_hostname(Some(hostname.to_string()));
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
        }
        let mut resources = linux.resources().clone().unwrap_or_default();
        resources.set_devices(Some(device_rules()?));
        linux.set_resources(Some(resources));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProcessSpec {
        ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "id".into()],
            env: vec!["FOO=bar".into(), "PATH=/bin".into()],
            cwd: "/tmp".into(),
            uid: 1000,
            gid: 100,
            terminal: true,
            console_size: Some((30, 100)),
        }
    }

    #[test]
    fn volumes_parse() {
        let v: Volume = "/a/b:/x:ro".parse().unwrap();
        assert_eq!(v.source, PathBuf::from("/a/b"));
        assert_eq!(v.destination, "/x");
        assert!(v.readonly);
        assert!(!"/a:/x".parse::<Volume>().unwrap().readonly);
        assert!(!"/a:/x:rw".parse::<Volume>().unwrap().readonly);
        for bad in ["/a", "/a:x", ":/x", "/a:/x:rx", "/a:/x:ro:z"] {
            let e = bad.parse::<Volume>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn process_fields_are_carried() {
        let spec = build(
            &sample(),
            "/run/kata-containers/shared/containers/c/rootfs",
            "h",
        )
        .unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap()[2], "id");
        assert_eq!(p.cwd().to_str().unwrap(), "/tmp");
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().gid(), 100);
        assert_eq!(p.terminal(), Some(true));
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"FOO=bar".to_string()));
        assert!(
            env.contains(&"PATH=/bin".to_string()),
            "user PATH overrides default"
        );
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"TERM=xterm".to_string()));
        let size = p.console_size().unwrap();
        assert_eq!((size.height(), size.width()), (30, 100));
        assert_eq!(spec.hostname().as_deref(), Some("h"));
        assert_eq!(
            spec.root().as_ref().unwrap().path().to_str().unwrap(),
            "/run/kata-containers/shared/containers/c/rootfs"
        );
    }

    #[test]
    fn devices_are_denied_but_the_standard_ones() {
        let spec = build(&ProcessSpec::default(), "/r", "h").unwrap();
        let resources = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let rules = resources.devices().as_ref().unwrap();
        assert!(!rules[0].allow(), "deny first");
        assert_eq!(rules[0].typ(), None, "all devices");
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        let allowed: Vec<_> = rules[1..]
            .iter()
            .map(|r| {
                assert!(r.allow());
                assert_eq!(r.typ(), Some(LinuxDeviceType::C));
                (r.major().unwrap(), r.minor())
            })
            .collect();
        for device in [(1, Some(3)), (1, Some(9)), (5, Some(2)), (136, None)] {
            assert!(allowed.contains(&device), "{device:?}");
        }
        // Neither /dev/kmsg (1:11) nor a serial port (4:64).
        assert!(!allowed.iter().any(|d| *d == (1, Some(11)) || d.0 == 4));
    }

    #[test]
    fn no_network_namespace_but_pid_mount_ipc_uts() {
        let spec = build(&ProcessSpec::default(), "/r", "h").unwrap();
        let kinds: Vec<_> = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!kinds.contains(&LinuxNamespaceType::Network));
        for k in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
        ] {
            assert!(kinds.contains(&k), "{k:?} missing");
        }
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.cwd().to_str().unwrap(), "/");
    }
}

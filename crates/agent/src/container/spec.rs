//! Checks the OCI spec received from the host and adapts it to the guest.
//!
//! The spec was written for the host: paths of namespaces to join and
//! security profiles name things of the host that do not exist in the
//! guest. What changes is returned as notes, which the agent logs. Hooks
//! are guest hooks (see [`super::hooks`]): capsa's runtime does not send
//! the host's.
//!
//! Bind mounts are confined: their source must be in the share
//! ([`capsa_protocols::GUEST_SHARED_DIR`]) or in a storage's mount point,
//! never elsewhere in the guest (the agent's own files, `/dev`, `/proc`).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespace, LinuxNamespaceType, LinuxSeccompAction, Mount, Spec,
};

use crate::validate;

/// The umask of a process whose spec gives none (runc's default), rather
/// than whatever the agent has. Kata's `oci.User` has no umask; capsa's
/// carries it as an extra field (5), so a Kata runtime's processes get this.
pub const DEFAULT_UMASK: u32 = 0o022;

/// Parent of the cgroups of containers without `linux.cgroupsPath`.
pub const DEFAULT_CGROUP_PARENT: &str = "/capsa";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the spec has no process")]
    NoProcess,
    #[error("the spec's process has no args")]
    NoArgs,
    #[error("the spec has no root")]
    NoRoot,
    #[error("invalid root path")]
    Root(#[source] validate::ValidateError),
    #[error("cannot build the linux section")]
    Linux(#[source] oci_spec::OciSpecError),
    #[error("seccomp action SCMP_ACT_NOTIFY (syscalls {0:?}) is not supported: the guest has no seccomp listener")]
    SeccompNotify(Vec<String>),
    #[error("bind mount on {destination:?}: source {source_path:?} is not an absolute path")]
    BindRelative {
        destination: PathBuf,
        source_path: PathBuf,
    },
    #[error("bind mount on {destination:?}: cannot resolve source {source_path:?}")]
    BindResolve {
        destination: PathBuf,
        source_path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("bind mount on {destination:?}: source {source_path:?} (resolved to {resolved:?}) is outside the shared directory {shared} and the storages' mount points")]
    BindOutside {
        destination: PathBuf,
        source_path: PathBuf,
        resolved: PathBuf,
        shared: &'static str,
    },
    #[error("cannot set sysctl {key} to {value:?} in the guest")]
    Sysctl {
        key: String,
        value: String,
        #[source]
        error: std::io::Error,
    },
}

/// Checks that `spec` can run a container at all.
pub fn check(spec: &Spec) -> Result<PathBuf, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::NoArgs);
    }
    let root = spec.root().as_ref().ok_or(SpecError::NoRoot)?;
    let root = root.path().to_str().unwrap_or_default();
    validate::guest_path("root path", root).map_err(SpecError::Root)
}

/// Adapts `spec` to the guest; returns one note per change.
///
/// - AppArmor and SELinux labels are removed (the guest has neither);
/// - a process without umask gets [`DEFAULT_UMASK`]; `noNewPrivileges`
///   `false` is removed (the same, and what lets libcontainer load seccomp
///   before it drops the capabilities);
/// - the seccomp profile is kept (libcontainer loads it, libseccomp is
///   linked in); its listener path, a host path, is removed, and a profile
///   with `SCMP_ACT_NOTIFY` is refused;
/// - bind mounts must take their source from the share or from one of
///   `storage_roots` (the storages' mount points); the source is resolved
///   (symbolic links included) and replaced by its real path;
/// - the network namespace is removed (containers use the VM's network),
///   namespace paths are dropped (they are host paths), and mount and pid
///   namespaces are added when missing: a container never shares the
///   agent's mount table or pid space;
/// - `linux.cgroupsPath` becomes an absolute cgroupfs path, by default
///   `/capsa/<id>`; systemd-style (`slice:prefix:name`) or paths with `..`
///   are replaced by the default.
pub fn adapt(
    spec: &mut Spec,
    id: &str,
    storage_roots: &[PathBuf],
) -> Result<Vec<String>, SpecError> {
    adapt_with(spec, id, storage_roots, &|p| std::fs::canonicalize(p))
}

/// [`adapt`], with bind mount sources (and the roots they must be in)
/// resolved by `resolve` instead of the guest's filesystem: pure when
/// `resolve` is (the fuzz targets use a lexical one).
pub fn adapt_with(
    spec: &mut Spec,
    id: &str,
    storage_roots: &[PathBuf],
    resolve: &dyn Fn(&Path) -> std::io::Result<PathBuf>,
) -> Result<Vec<String>, SpecError> {
    let mut notes = Vec::new();
    if let Some(process) = spec.process_mut() {
        if process.apparmor_profile().is_some() {
            process.set_apparmor_profile(None);
            notes.push("apparmor profile removed".to_string());
        }
        if process.selinux_label().is_some() {
            process.set_selinux_label(None);
            notes.push("selinux label removed".to_string());
        }
        // `false` and absent mean the same, but libcontainer loads a seccomp
        // profile before it drops the capabilities only when the field is
        // absent; with `false` it loads it after, without CAP_SYS_ADMIN,
        // and the kernel refuses the filter.
        if process.no_new_privileges() == Some(false) {
            process.set_no_new_privileges(None);
            notes.push("noNewPrivileges false left implicit".to_string());
        }
        if process.user().umask().is_none() {
            process.user_mut().set_umask(Some(DEFAULT_UMASK));
            notes.push(format!("umask set to {DEFAULT_UMASK:04o}"));
        }
    }
    if spec.linux().is_none() {
        let linux = LinuxBuilder::default()
            .namespaces(Vec::new())
            .build()
            .map_err(SpecError::Linux)?;
        spec.set_linux(Some(linux));
    }
    let Some(linux) = spec.linux_mut() else {
        return Ok(notes);
    };
    if let Some(seccomp) = linux.seccomp_mut() {
        let notify: Vec<String> = seccomp
            .syscalls()
            .iter()
            .flatten()
            .filter(|c| c.action() == LinuxSeccompAction::ScmpActNotify)
            .flat_map(|c| c.names().iter().cloned())
            .collect();
        if !notify.is_empty() || seccomp.default_action() == LinuxSeccompAction::ScmpActNotify {
            return Err(SpecError::SeccompNotify(notify));
        }
        if seccomp.listener_path().is_some() {
            seccomp.set_listener_path(None);
            seccomp.set_listener_metadata(None);
            notes.push("seccomp listener path removed".to_string());
        }
    }
    if linux.mount_label().is_some() {
        linux.set_mount_label(None);
        notes.push("mount label removed".to_string());
    }
    let namespaces = linux.namespaces_mut().get_or_insert_with(Vec::new);
    adapt_namespaces(namespaces, &mut notes);
    let given = linux.cgroups_path().clone();
    let path = cgroup_path(given.as_deref(), id);
    if given.as_deref() != Some(path.as_path()) {
        notes.push(format!("cgroups path {given:?} set to {path:?}"));
    }
    linux.set_cgroups_path(Some(path));
    if let Some(mounts) = spec.mounts_mut() {
        confine_binds(mounts, storage_roots, resolve, &mut notes)?;
    }
    Ok(notes)
}

/// Whether `m` is a bind mount (OCI: type `bind`, or option `bind`/`rbind`).
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Checks that every bind mount's source is in the share or in a storage,
/// and replaces it by its resolved path.
fn confine_binds(
    mounts: &mut [Mount],
    storage_roots: &[PathBuf],
    resolve: &dyn Fn(&Path) -> std::io::Result<PathBuf>,
    notes: &mut Vec<String>,
) -> Result<(), SpecError> {
    let shared = capsa_protocols::GUEST_SHARED_DIR;
    let roots: Vec<PathBuf> = std::iter::once(Path::new(shared))
        .chain(storage_roots.iter().map(PathBuf::as_path))
        .map(|r| resolve(r).unwrap_or_else(|_| r.to_path_buf()))
        .collect();
    for m in mounts.iter_mut().filter(|m| is_bind(m)) {
        let destination = m.destination().clone();
        let source_path = m.source().clone().unwrap_or_default();
        if !source_path.is_absolute() {
            return Err(SpecError::BindRelative {
                destination,
                source_path,
            });
        }
        let resolved = match resolve(&source_path) {
            Ok(p) => p,
            Err(error) => {
                return Err(SpecError::BindResolve {
                    destination,
                    source_path,
                    error,
                })
            }
        };
        if !roots.iter().any(|r| resolved.starts_with(r)) {
            return Err(SpecError::BindOutside {
                destination,
                source_path,
                resolved,
                shared,
            });
        }
        if resolved != source_path {
            notes.push(format!(
                "bind mount on {destination:?}: source {source_path:?} resolved to {resolved:?}"
            ));
            m.set_source(Some(resolved));
        }
    }
    Ok(())
}

/// Removes the `net.*` sysctls from `spec` and sets them in the guest.
///
/// Containers have no network namespace of their own: they use the VM's,
/// which is the pod's network, so a network sysctl is the pod's setting
/// (as with Kata, whose containers join the sandbox's namespace).
/// libcontainer refuses `net.*` sysctls without a network namespace of the
/// container, so the agent sets them itself. The other sysctls stay in the
/// spec: libcontainer sets them in the container's namespaces (IPC, UTS).
/// Blocking; returns one note per sysctl set.
pub fn apply_network_sysctls(spec: &mut Spec) -> Result<Vec<String>, SpecError> {
    let Some(sysctls) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.sysctl_mut().as_mut())
    else {
        return Ok(Vec::new());
    };
    let network: HashMap<String, String> = sysctls
        .iter()
        .filter(|(k, _)| k.replace('/', ".").starts_with("net."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    sysctls.retain(|k, _| !network.contains_key(k));
    let mut keys: Vec<_> = network.keys().collect();
    keys.sort();
    let mut notes = Vec::new();
    for key in keys {
        let value = &network[key];
        let path = sysctl_path(key).ok_or_else(|| SpecError::Sysctl {
            key: key.clone(),
            value: value.clone(),
            error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid sysctl name"),
        })?;
        std::fs::write(&path, value).map_err(|error| SpecError::Sysctl {
            key: key.clone(),
            value: value.clone(),
            error,
        })?;
        tracing::info!(%key, %value, "network sysctl set in the guest");
        notes.push(format!(
            "sysctl {key}={value} set in the guest (the pod's network)"
        ));
    }
    Ok(notes)
}

/// `/proc/sys/<a>/<b>/...` for `a.b...` (or `a/b/...`); `None` when a part
/// is empty or `..`.
pub fn sysctl_path(key: &str) -> Option<PathBuf> {
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        key.split('.').collect()
    };
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return None;
    }
    let mut path = PathBuf::from("/proc/sys");
    path.extend(parts);
    Some(path)
}

fn adapt_namespaces(namespaces: &mut Vec<LinuxNamespace>, notes: &mut Vec<String>) {
    let before = namespaces.len();
    namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
    if namespaces.len() != before {
        notes.push("network namespace removed".to_string());
    }
    for ns in namespaces.iter_mut() {
        if let Some(path) = ns.path().clone() {
            notes.push(format!("{:?} namespace path {path:?} dropped", ns.typ()));
            ns.set_path(None);
        }
    }
    for typ in [LinuxNamespaceType::Mount, LinuxNamespaceType::Pid] {
        if !namespaces.iter().any(|ns| ns.typ() == typ) {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(typ);
            namespaces.push(ns);
            notes.push(format!("{typ:?} namespace added"));
        }
    }
}

/// The cgroup of container `id`: `given` when it is a usable cgroupfs path
/// (made absolute), `/capsa/<id>` otherwise.
pub fn cgroup_path(given: Option<&Path>, id: &str) -> PathBuf {
    let usable = |p: &Path| {
        let s = p.to_string_lossy();
        !s.is_empty()
            && !s.contains(':')
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && p.components().any(|c| matches!(c, Component::Normal(_)))
    };
    match given {
        Some(p) if usable(p) => Path::new("/").join(p),
        _ => Path::new(DEFAULT_CGROUP_PARENT).join(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        HookBuilder, HooksBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder, MountBuilder,
        RootBuilder,
    };

    fn kinds(spec: &Spec) -> Vec<LinuxNamespaceType> {
        let linux = spec.linux().as_ref().unwrap();
        linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    #[test]
    fn default_spec_passes_the_checks() {
        let mut spec = Spec::default();
        spec.set_root(Some(RootBuilder::default().path("/run/r").build().unwrap()));
        assert_eq!(check(&spec).unwrap(), PathBuf::from("/run/r"));
    }

    #[test]
    fn checks_refuse_unusable_specs() {
        let mut spec = Spec::default();
        spec.set_root(Some(RootBuilder::default().path("rootfs").build().unwrap()));
        assert!(matches!(check(&spec), Err(SpecError::Root(_))));
        spec.set_root(None);
        assert!(matches!(check(&spec), Err(SpecError::NoRoot)));
        spec.process_mut().as_mut().unwrap().set_args(Some(vec![]));
        assert!(matches!(check(&spec), Err(SpecError::NoArgs)));
        spec.set_process(None);
        assert!(matches!(check(&spec), Err(SpecError::NoProcess)));
    }

    #[test]
    fn host_only_parts_are_removed() {
        let mut spec = Spec::default();
        let hook = HookBuilder::default()
            .path("/usr/bin/true")
            .build()
            .unwrap();
        spec.set_hooks(Some(
            HooksBuilder::default()
                .prestart(vec![hook])
                .build()
                .unwrap(),
        ));
        let process = spec.process_mut().as_mut().unwrap();
        process.set_apparmor_profile(Some("cri-containerd.apparmor.d".into()));
        process.set_no_new_privileges(Some(false));
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.set_seccomp(Some(LinuxSeccompBuilder::default().build().unwrap()));
        let ns = linux.namespaces_mut().as_mut().unwrap();
        ns.retain(|n| n.typ() != LinuxNamespaceType::Pid);
        ns.iter_mut()
            .find(|n| n.typ() == LinuxNamespaceType::Ipc)
            .unwrap()
            .set_path(Some("/proc/42/ns/ipc".into()));

        let notes = adapt(&mut spec, "c1", &[]).unwrap();

        assert!(spec.hooks().is_some(), "guest hooks are kept");
        assert!(spec
            .process()
            .as_ref()
            .unwrap()
            .apparmor_profile()
            .is_none());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some(), "the seccomp profile is kept");
        let user = spec.process().as_ref().unwrap().user();
        assert_eq!(user.umask(), Some(DEFAULT_UMASK));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), None);
        let k = kinds(&spec);
        assert!(!k.contains(&LinuxNamespaceType::Network));
        assert!(k.contains(&LinuxNamespaceType::Pid));
        assert!(k.contains(&LinuxNamespaceType::Mount));
        assert!(k.contains(&LinuxNamespaceType::Ipc));
        assert!(linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .all(|n| n.path().is_none()));
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/capsa/c1"))
        );
        assert!(
            notes.iter().any(|n| n.contains("/proc/42/ns/ipc")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n == "Pid namespace added"),
            "{notes:?}"
        );
    }

    #[test]
    fn spec_without_linux_gets_namespaces_and_cgroup() {
        let mut spec = Spec::default();
        spec.set_linux(None);
        adapt(&mut spec, "x", &[]).unwrap();
        assert_eq!(
            kinds(&spec),
            vec![LinuxNamespaceType::Mount, LinuxNamespaceType::Pid]
        );
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/capsa/x")));
    }

    #[test]
    fn cgroup_paths() {
        let p = |s: &str| cgroup_path(Some(Path::new(s)), "id");
        assert_eq!(p("/k8s.io/abc"), PathBuf::from("/k8s.io/abc"));
        assert_eq!(p("k8s.io/abc"), PathBuf::from("/k8s.io/abc"));
        assert_eq!(p("system.slice:cri:abc"), PathBuf::from("/capsa/id"));
        assert_eq!(p("/a/../b"), PathBuf::from("/capsa/id"));
        assert_eq!(p("/"), PathBuf::from("/capsa/id"));
        assert_eq!(p(""), PathBuf::from("/capsa/id"));
        assert_eq!(cgroup_path(None, "id"), PathBuf::from("/capsa/id"));
    }

    fn bind(destination: &str, source: &Path, options: &[&str]) -> Mount {
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    fn with_mounts(mounts: Vec<Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.mounts_mut()
            .get_or_insert_with(Vec::new)
            .extend(mounts);
        spec
    }

    #[test]
    fn bind_sources_in_a_storage_are_kept_and_resolved() {
        let storage = tempfile::tempdir().unwrap();
        let data = storage.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&data, storage.path().join("link")).unwrap();
        let mut spec = with_mounts(vec![
            bind("/data", &data, &["rbind"]),
            bind("/link", &storage.path().join("link"), &["ro"]),
        ]);
        let notes = adapt(&mut spec, "c", &[storage.path().to_path_buf()]).unwrap();
        let real = std::fs::canonicalize(&data).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let bound: Vec<_> = mounts
            .iter()
            .filter(|m| is_bind(m))
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(bound, vec![real.clone(), real]);
        assert!(notes.iter().any(|n| n.contains("resolved to")), "{notes:?}");
        // The default mounts (proc, tmpfs, ...) are not binds: untouched.
        assert!(mounts.iter().any(|m| m.typ().as_deref() == Some("proc")));
    }

    #[test]
    fn bind_sources_elsewhere_in_the_guest_are_refused() {
        let storage = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let roots = [storage.path().to_path_buf()];

        let mut spec = with_mounts(vec![bind("/etc/x", elsewhere.path(), &[])]);
        let err = adapt(&mut spec, "c", &roots).unwrap_err();
        assert!(matches!(err, SpecError::BindOutside { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("/etc/x"), "{message}");
        assert!(message.contains("shared/containers"), "{message}");

        // A symbolic link in the storage to elsewhere is resolved first.
        std::os::unix::fs::symlink(elsewhere.path(), storage.path().join("escape")).unwrap();
        let mut spec = with_mounts(vec![bind("/e", &storage.path().join("escape"), &[])]);
        let err = adapt(&mut spec, "c", &roots).unwrap_err();
        assert!(matches!(err, SpecError::BindOutside { .. }), "{err:?}");

        // `..` leaving the storage, and a type-less mount with option bind.
        let up = storage
            .path()
            .join("..")
            .join(elsewhere.path().file_name().unwrap());
        let mut m = bind("/up", &up, &["bind"]);
        m.set_typ(None);
        let mut spec = with_mounts(vec![m]);
        let err = adapt(&mut spec, "c", &roots).unwrap_err();
        assert!(matches!(err, SpecError::BindOutside { .. }), "{err:?}");

        let mut spec = with_mounts(vec![bind("/r", Path::new("relative"), &[])]);
        let err = adapt(&mut spec, "c", &roots).unwrap_err();
        assert!(matches!(err, SpecError::BindRelative { .. }), "{err:?}");

        let mut spec = with_mounts(vec![bind("/m", &storage.path().join("missing"), &[])]);
        let err = adapt(&mut spec, "c", &roots).unwrap_err();
        assert!(matches!(err, SpecError::BindResolve { .. }), "{err:?}");
        assert!(err.to_string().contains("/m"), "{err}");
    }

    #[test]
    fn seccomp_notify_is_refused_and_listener_removed() {
        let call = |action| {
            LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string()])
                .action(action)
                .build()
                .unwrap()
        };
        let mut spec = Spec::default();
        let seccomp = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![call(LinuxSeccompAction::ScmpActNotify)])
            .build()
            .unwrap();
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_seccomp(Some(seccomp));
        let err = adapt(&mut spec, "c", &[]).unwrap_err();
        assert!(
            matches!(err, SpecError::SeccompNotify(ref n) if n == &["mkdir"]),
            "{err:?}"
        );

        let mut spec = Spec::default();
        let seccomp = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .listener_path("/run/host/seccomp.sock")
            .syscalls(vec![call(LinuxSeccompAction::ScmpActErrno)])
            .build()
            .unwrap();
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_seccomp(Some(seccomp));
        adapt(&mut spec, "c", &[]).unwrap();
        let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert!(seccomp.listener_path().is_none());
        assert_eq!(seccomp.syscalls().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.1/forwarding"),
            Some(PathBuf::from("/proc/sys/net/ipv4/conf/eth0.1/forwarding"))
        );
        assert_eq!(sysctl_path("net..x"), None);
        assert_eq!(sysctl_path("net/../../etc"), None);
    }
}

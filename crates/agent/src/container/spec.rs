//! Checks the OCI spec received from the host and adapts it to the guest.
//!
//! The spec was written for the host: paths of namespaces to join, hooks
//! and security profiles name things of the host that do not exist in the
//! guest. What changes is returned as notes, which the agent logs.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxBuilder, LinuxNamespace, LinuxNamespaceType, Spec};

use crate::validate;

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
/// - hooks are removed: they name host binaries, and a hook's wait would
///   race with the agent's central reaper;
/// - AppArmor and SELinux labels are removed (the guest has neither);
/// - seccomp is removed: this agent is built without seccomp support;
/// - the network namespace is removed (containers use the VM's network),
///   namespace paths are dropped (they are host paths), and mount and pid
///   namespaces are added when missing: a container never shares the
///   agent's mount table or pid space;
/// - `linux.cgroupsPath` becomes an absolute cgroupfs path, by default
///   `/capsa/<id>`; systemd-style (`slice:prefix:name`) or paths with `..`
///   are replaced by the default.
pub fn adapt(spec: &mut Spec, id: &str) -> Result<Vec<String>, SpecError> {
    let mut notes = Vec::new();
    if spec.hooks().is_some() {
        spec.set_hooks(None);
        notes.push("hooks removed".to_string());
    }
    if let Some(process) = spec.process_mut() {
        if process.apparmor_profile().is_some() {
            process.set_apparmor_profile(None);
            notes.push("apparmor profile removed".to_string());
        }
        if process.selinux_label().is_some() {
            process.set_selinux_label(None);
            notes.push("selinux label removed".to_string());
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
    if linux.seccomp().is_some() {
        linux.set_seccomp(None);
        notes.push("seccomp profile removed: not supported by this agent".to_string());
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
    Ok(notes)
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
    use oci_spec::runtime::{HookBuilder, HooksBuilder, LinuxSeccompBuilder, RootBuilder};

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
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.set_seccomp(Some(LinuxSeccompBuilder::default().build().unwrap()));
        let ns = linux.namespaces_mut().as_mut().unwrap();
        ns.retain(|n| n.typ() != LinuxNamespaceType::Pid);
        ns.iter_mut()
            .find(|n| n.typ() == LinuxNamespaceType::Ipc)
            .unwrap()
            .set_path(Some("/proc/42/ns/ipc".into()));

        let notes = adapt(&mut spec, "c1").unwrap();

        assert!(spec.hooks().is_none());
        assert!(spec
            .process()
            .as_ref()
            .unwrap()
            .apparmor_profile()
            .is_none());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
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
        assert!(notes.iter().any(|n| n == "hooks removed"), "{notes:?}");
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
        adapt(&mut spec, "x").unwrap();
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
}

//! The sandbox's shared PID namespace.
//!
//! The sandbox's PID namespace is the one of its first container (Kata's
//! runtime makes that the pause container). A later container joins it
//! when CreateSandbox asked for a shared PID namespace (`sandbox_pidns`),
//! when its own CreateContainer asks for it, or when its spec has no PID
//! namespace at all (Kata's runtime removes it to mean "share").

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use super::Sandbox;

/// Whether `spec` names no PID namespace (checked before the spec is
/// adapted, which adds one).
pub fn omits_pid_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_none_or(|ns| ns.iter().all(|n| n.typ() != LinuxNamespaceType::Pid))
}

/// Makes the (adapted) spec join the PID namespace of process `pid`.
pub fn join(spec: &mut Spec, pid: i32) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let namespaces = linux.namespaces_mut().get_or_insert_with(Vec::new);
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    let mut ns = LinuxNamespace::default();
    ns.set_typ(LinuxNamespaceType::Pid);
    ns.set_path(Some(format!("/proc/{pid}/ns/pid").into()));
    namespaces.push(ns);
}

impl Sandbox {
    /// The pid of the init of the sandbox's PID namespace holder, if
    /// container `id` must join it and it is alive.
    pub(super) async fn shared_pidns(&self, id: &str, asked: bool, omitted: bool) -> Option<i32> {
        let state = self.state.lock().await;
        if !(state.sandbox_pidns || asked || omitted) {
            return None;
        }
        let holder = state.pidns_holder.as_ref()?;
        let container = state.containers.get(holder)?;
        if container.init.status().is_some() {
            tracing::warn!(container = id, holder = %holder, "the sandbox's PID namespace is gone");
            return None;
        }
        Some(container.init.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid_ns(spec: &Spec) -> Vec<Option<std::path::PathBuf>> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Pid)
            .map(|n| n.path().clone())
            .collect()
    }

    #[test]
    fn omitted_and_joined() {
        let mut spec = Spec::default();
        assert!(!omits_pid_namespace(&spec));
        join(&mut spec, 42);
        assert_eq!(pid_ns(&spec), vec![Some("/proc/42/ns/pid".into())]);
        let linux = spec.linux_mut().as_mut().unwrap();
        linux
            .namespaces_mut()
            .as_mut()
            .unwrap()
            .retain(|n| n.typ() != LinuxNamespaceType::Pid);
        assert!(omits_pid_namespace(&spec));
        spec.set_linux(None);
        assert!(omits_pid_namespace(&spec));
    }
}

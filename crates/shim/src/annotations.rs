//! Which pod a task belongs to, from the annotations containerd's CRI
//! plugin or CRI-O put in the OCI spec.

use std::collections::HashMap;

const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

/// What a task is to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The pod's sandbox (pause) container: it starts the VM.
    Sandbox,
    /// A container of the pod `sandbox_id`: it joins that VM.
    Container { sandbox_id: String },
    /// No pod annotations (`ctr run`): a VM of its own.
    Standalone,
}

impl Role {
    /// The id of the pod (and of its VM) a task with id `id` belongs to.
    pub fn pod_id<'a>(&'a self, id: &'a str) -> &'a str {
        match self {
            Role::Container { sandbox_id } => sandbox_id,
            Role::Sandbox | Role::Standalone => id,
        }
    }
}

/// The role of a task from its spec's annotations.
pub fn role(annotations: Option<&HashMap<String, String>>) -> Role {
    let Some(a) = annotations else {
        return Role::Standalone;
    };
    let pair = [
        (CRI_CONTAINER_TYPE, CRI_SANDBOX_ID),
        (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID),
    ]
    .into_iter()
    .find_map(|(t, s)| a.get(t).map(|kind| (kind, a.get(s))));
    match pair {
        Some((kind, _)) if kind == "sandbox" => Role::Sandbox,
        Some((kind, Some(sandbox))) if kind == "container" && !sandbox.is_empty() => {
            Role::Container {
                sandbox_id: sandbox.clone(),
            }
        }
        _ => Role::Standalone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn containerd_cri_annotations() {
        let a = map(&[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "p1")]);
        assert_eq!(role(Some(&a)), Role::Sandbox);
        let a = map(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "p1")]);
        let r = role(Some(&a));
        assert_eq!(
            r,
            Role::Container {
                sandbox_id: "p1".into()
            }
        );
        assert_eq!(r.pod_id("c1"), "p1");
    }

    #[test]
    fn crio_annotations() {
        let a = map(&[(CRIO_CONTAINER_TYPE, "container"), (CRIO_SANDBOX_ID, "p2")]);
        assert_eq!(role(Some(&a)).pod_id("c"), "p2");
        let a = map(&[(CRIO_CONTAINER_TYPE, "sandbox")]);
        assert_eq!(role(Some(&a)), Role::Sandbox);
    }

    #[test]
    fn without_annotations_a_task_stands_alone() {
        assert_eq!(role(None), Role::Standalone);
        assert_eq!(role(Some(&map(&[("other", "x")]))), Role::Standalone);
        // A container without its sandbox id cannot join anything.
        let a = map(&[(CRI_CONTAINER_TYPE, "container")]);
        assert_eq!(role(Some(&a)), Role::Standalone);
        assert_eq!(Role::Standalone.pod_id("me"), "me");
    }
}

//! The pod network a sandbox spec names: the network namespace CRI made
//! (and ran CNI in) before the shim's Create, and the DNS configuration
//! it mounts at `/etc/resolv.conf`.

use std::path::{Path, PathBuf};

use capsa_runtime::PodNetwork;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Where containers find their DNS configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Longest `resolv.conf` read (the agent bounds what it takes as well).
const MAX_RESOLV_CONF: u64 = 64 * 1024;

/// The network of the pod whose sandbox (or standalone task) spec is
/// `spec`: its netns path, if it joins one, and the lines of the file it
/// mounts at `/etc/resolv.conf`.
pub fn pod_network(spec: &Spec) -> PodNetwork {
    PodNetwork {
        netns: netns_path(spec),
        dns: spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new(RESOLV_CONF))
            .and_then(|m| m.source().as_deref())
            .map(dns_lines)
            .unwrap_or_default(),
    }
}

/// The path of the network namespace the spec joins; `None` when it asks
/// for a new one or none (the VM then has loopback only).
fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

/// The meaningful lines of a `resolv.conf` (no blanks, no comments).
fn dns_lines(path: &Path) -> Vec<String> {
    use std::io::Read;
    let mut text = String::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_RESOLV_CONF).read_to_string(&mut text));
    if let Err(e) = read {
        tracing::warn!(path = %path.display(), error = %e, "the pod's resolv.conf not read: no DNS configuration for the guest");
        return Vec::new();
    }
    parse_dns(&text)
}

fn parse_dns(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_netns_is_the_network_namespace_path() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1234"}
            ]}
        }));
        assert_eq!(
            netns_path(&s).as_deref(),
            Some(Path::new("/var/run/netns/cni-1234"))
        );
        let own = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "network"}]}
        }));
        assert_eq!(netns_path(&own), None);
        let host = spec(serde_json::json!({"ociVersion": "1.0.2", "linux": {}}));
        assert_eq!(netns_path(&host), None);
    }

    #[test]
    fn dns_comes_from_the_resolv_conf_mount() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("resolv.conf");
        std::fs::write(
            &file,
            "# made by CRI\nnameserver 10.96.0.10\n\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
        )
        .unwrap();
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/etc/hostname", "source": "/nonexistent", "type": "bind"},
                {"destination": "/etc/resolv.conf", "source": file, "type": "bind", "options": ["rbind", "ro"]}
            ]
        }));
        assert_eq!(
            pod_network(&s).dns,
            [
                "nameserver 10.96.0.10",
                "search ns.svc.cluster.local svc.cluster.local",
                "options ndots:5"
            ]
        );
        let none = spec(serde_json::json!({"ociVersion": "1.0.2", "mounts": []}));
        assert!(pod_network(&none).dns.is_empty());
    }
}

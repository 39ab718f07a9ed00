//! The network of `capsa run --network bridge`: a network namespace that
//! capsa makes for the sandbox (`<state dir>/netns`), connected by the CNI
//! plugins of a configuration list (and a loopback network, as
//! containerd's CRI does), released again when the sandbox's state
//! directory goes — also by a later `capsa` if the one that made it was
//! killed: what was made is written to `<state dir>/cni.json` before it
//! is made.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cni::{self, Conflist, Invocation, PortMapping};
use super::{netns, NetworkError};

/// The file in the sandbox's state directory that says what to release.
pub const ATTACHMENT_FILE: &str = "cni.json";
/// The network namespace's file in the sandbox's state directory.
pub const NETNS_FILE: &str = "netns";
/// The interface CNI makes in the netns.
pub const IFNAME: &str = "eth0";

/// Where the configuration list is looked for when
/// `runtime.cni_conflist` is empty, in order; the built-in
/// [`cni::DEFAULT_CONFLIST`] when none exists.
pub const CONFLIST_PATHS: &[&str] = &[
    "/etc/capsa/cni/capsa-bridge.conflist",
    "/usr/share/defaults/capsa/cni/capsa-bridge.conflist",
];

/// What to attach: a configuration list and the ports to forward.
#[derive(Debug, Clone)]
pub struct CniRequest {
    pub conflist: Conflist,
    /// Where the list came from (a file, or "built-in"), for messages.
    pub origin: String,
    pub plugin_dirs: Vec<PathBuf>,
    pub ports: Vec<PortMapping>,
}

impl CniRequest {
    /// The configuration list of `config` (`runtime.cni_conflist`, else
    /// the first of [`CONFLIST_PATHS`], else the built-in one) and its
    /// plugin directories, with `ports` to forward.
    pub fn from_config(
        config: &capsa_config::RuntimeConfig,
        ports: Vec<PortMapping>,
    ) -> Result<Self, NetworkError> {
        let file = Some(config.cni_conflist.clone())
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| {
                CONFLIST_PATHS
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists())
            });
        let (conflist, origin) = match file {
            Some(path) => (Conflist::load(&path)?, path.display().to_string()),
            None => (
                Conflist::parse(cni::DEFAULT_CONFLIST, "built-in")?,
                "built-in".to_string(),
            ),
        };
        tracing::info!(%origin, network = %conflist.name, "CNI configuration list");
        Ok(Self {
            conflist,
            origin,
            plugin_dirs: config.cni_plugin_dirs.clone(),
            ports,
        })
    }
}

/// One network run in the netns, with its ADD result once it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedNetwork {
    pub conflist: Value,
    pub origin: String,
    pub ifname: String,
    pub result: Option<Value>,
}

/// What capsa made for a sandbox's network (`cni.json`, and the record's
/// `cni`): enough to run DEL and remove the netns without the
/// configuration file, which may have changed or gone since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    /// The netns capsa made (and removes).
    pub netns: PathBuf,
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: String,
    pub plugin_dirs: Vec<PathBuf>,
    pub port_mappings: Vec<PortMapping>,
    /// In the order they were added.
    pub networks: Vec<AttachedNetwork>,
}

impl CniAttachment {
    /// The container's address on the main network (`10.4.0.2/24`).
    pub fn address(&self) -> Option<String> {
        let result = self.networks.last()?.result.as_ref()?;
        let result: cni::CniResult = serde_json::from_value(result.clone()).ok()?;
        result.container_address().map(String::from)
    }

    fn invocation(&self, ifname: &str) -> Invocation {
        let mut runtime_config = Map::new();
        if !self.port_mappings.is_empty() {
            runtime_config.insert(
                "portMappings".into(),
                serde_json::to_value(&self.port_mappings).unwrap_or_default(),
            );
        }
        Invocation {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: ifname.into(),
            plugin_dirs: self.plugin_dirs.clone(),
            runtime_config,
        }
    }

    fn save(&self, dir: &Path) -> Result<(), NetworkError> {
        let path = dir.join(ATTACHMENT_FILE);
        let tmp = dir.join(format!(".{ATTACHMENT_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| NetworkError::Record { path, source })
    }
}

/// The loopback network run before the list, on `lo`.
fn loopback(version: &str) -> Value {
    serde_json::json!({
        "cniVersion": version,
        "name": "capsa-loopback",
        "plugins": [{"type": "loopback"}],
    })
}

/// Makes the netns `<dir>/netns` for sandbox `id` and runs ADD of the
/// loopback network and of the request's list in it. On an error, what
/// was made is released again.
pub fn attach(dir: &Path, id: &str, request: &CniRequest) -> Result<CniAttachment, NetworkError> {
    if !request.ports.is_empty() && !request.conflist.has_capability("portMappings") {
        return Err(NetworkError::NoPortMapping(request.origin.clone()));
    }
    let mut attachment = CniAttachment {
        netns: dir.join(NETNS_FILE),
        container_id: id.into(),
        plugin_dirs: request.plugin_dirs.clone(),
        port_mappings: request.ports.clone(),
        networks: vec![
            AttachedNetwork {
                conflist: loopback(&request.conflist.cni_version),
                origin: "built-in".into(),
                ifname: "lo".into(),
                result: None,
            },
            AttachedNetwork {
                conflist: request.conflist.to_value(),
                origin: request.origin.clone(),
                ifname: IFNAME.into(),
                result: None,
            },
        ],
    };
    // Recorded before anything is made: a capsa killed from here on
    // leaves a record that the next one releases.
    attachment.save(dir)?;
    let made = add_all(dir, &mut attachment);
    if let Err(e) = made {
        // A list that failed ADD may fail DEL the same way (a bad
        // configuration): what DEL could release is released, and the
        // netns goes all the same.
        if let Err(undo) = release_all(dir, true) {
            tracing::warn!(error = %undo, "releasing a network whose set-up failed");
        }
        return Err(e);
    }
    tracing::info!(
        sandbox = %id,
        network = %request.conflist.name,
        address = attachment.address().unwrap_or_default(),
        "network attached"
    );
    Ok(attachment)
}

fn add_all(dir: &Path, attachment: &mut CniAttachment) -> Result<(), NetworkError> {
    netns::create_named(&attachment.netns)?;
    for i in 0..attachment.networks.len() {
        let net = &attachment.networks[i];
        let list = Conflist::parse(&net.conflist.to_string(), &net.origin)?;
        let result = cni::add(&list, &attachment.invocation(&net.ifname))?;
        attachment.networks[i].result = Some(result);
        attachment.save(dir)?;
    }
    Ok(())
}

/// Runs CHECK of every network of the attachment recorded in `dir`.
pub fn check(dir: &Path) -> Result<(), NetworkError> {
    let Some(attachment) = load(dir)? else {
        return Ok(());
    };
    for net in &attachment.networks {
        let list = Conflist::parse(&net.conflist.to_string(), &net.origin)?;
        let cached = net.result.clone().unwrap_or_default();
        cni::check(&list, &attachment.invocation(&net.ifname), &cached)?;
    }
    Ok(())
}

/// The attachment recorded in `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<CniAttachment>, NetworkError> {
    let path = dir.join(ATTACHMENT_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(NetworkError::Record { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| NetworkError::Record {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

/// Releases the attachment recorded in `dir`: DEL of its networks in
/// reverse order (each with its cached result), then the netns goes, then
/// the record. Nothing recorded: nothing to do (`false`). If a DEL fails,
/// the netns and the record stay, for a later try.
pub fn release(dir: &Path) -> Result<bool, NetworkError> {
    release_all(dir, false)
}

/// [`release`]; with `force`, a failed DEL is logged and the netns and
/// the record go anyway.
fn release_all(dir: &Path, force: bool) -> Result<bool, NetworkError> {
    let Some(attachment) = load(dir)? else {
        return Ok(false);
    };
    let mut first = None;
    for net in attachment.networks.iter().rev() {
        let deleted = Conflist::parse(&net.conflist.to_string(), &net.origin)
            .map_err(NetworkError::from)
            .and_then(|list| {
                let inv = attachment.invocation(&net.ifname);
                Ok(cni::del(&list, &inv, net.result.as_ref())?)
            });
        if let Err(e) = deleted {
            first.get_or_insert(e);
        }
    }
    match first {
        Some(e) if force => tracing::warn!(error = %e, "CNI DEL failed; removing the netns anyway"),
        Some(e) => return Err(e),
        None => {}
    }
    netns::remove_named(&attachment.netns)?;
    let path = dir.join(ATTACHMENT_FILE);
    std::fs::remove_file(&path).map_err(|source| NetworkError::Record { path, source })?;
    tracing::info!(sandbox = %attachment.container_id, "network released");
    Ok(true)
}

/// The DNS lines a guest on a bridged network gets from the host's
/// `resolv.conf` (its text): `nameserver`, `search` and `options` lines,
/// less loopback name servers (a resolver on the host's loopback, such
/// as systemd-resolved's 127.0.0.53, is unreachable from the guest).
pub fn host_dns(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .map(str::trim)
        .filter(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| !a.is_loopback()),
                (Some("search" | "options"), Some(_)) => true,
                _ => false,
            }
        })
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dns_skips_loopback_servers_and_comments() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n\
                    nameserver ::1\nnameserver 2001:db8::1\nsearch example.org\n\
                    options edns0 trust-ad\nnameserver bogus\n";
        assert_eq!(
            host_dns(text),
            [
                "nameserver 10.0.0.2",
                "nameserver 2001:db8::1",
                "search example.org",
                "options edns0 trust-ad"
            ]
        );
        assert!(host_dns("nameserver 127.0.0.1\n").is_empty());
    }

    #[test]
    fn nothing_recorded_is_nothing_to_release() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!release(dir.path()).unwrap());
        assert!(load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn ports_need_a_list_that_maps_ports() {
        let dir = tempfile::tempdir().unwrap();
        let list = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#;
        let request = CniRequest {
            conflist: Conflist::parse(list, "/x.conflist").unwrap(),
            origin: "/x.conflist".into(),
            plugin_dirs: vec![],
            ports: vec!["8080:80".parse().unwrap()],
        };
        let err = attach(dir.path(), "sb", &request).unwrap_err().to_string();
        assert!(
            err.contains("/x.conflist") && err.contains("portMappings"),
            "{err}"
        );
        assert!(!dir.path().join(ATTACHMENT_FILE).exists());
    }
}

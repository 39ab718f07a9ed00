//! Runs CNI plugins the way the CNI specification (1.0) has a runtime do
//! it: a network configuration list is a chain of plugins; ADD runs them
//! in order, each getting the previous one's result as `prevResult`; DEL
//! runs them in reverse and goes on past failures (a plugin must tolerate
//! what is already gone); CHECK runs them in order against the cached ADD
//! result. Each plugin is an executable named by its `type`, found in the
//! plugin directories, with `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in its environment and its
//! configuration on stdin; runtime values (`portMappings`) go to the
//! plugins whose `capabilities` ask for them.
//!
//! Written here rather than taken from a crate: the one Rust crate that
//! calls plugins (`rust-cni`) is a young port that loads every file of a
//! configuration directory, has no runtime capabilities (portmap's
//! `portMappings`), keeps no result for DEL and CHECK, and reports plugin
//! errors as strings. The calling side of the specification is small.

mod conflist;
mod ports;
mod result;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

pub use conflist::{Conflist, DEFAULT_CONFLIST};
pub use ports::PortMapping;
pub use result::{describe_failure, CniResult, PluginError};

/// Where plugins are looked for by default: Debian's
/// `containernetworking-plugins`, then the upstream path.
pub const DEFAULT_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI configuration list {origin}: {why}")]
    BadConflist { origin: String, why: String },
    #[error("CNI plugin {plugin:?} is in none of {dirs}")]
    NoPlugin { plugin: String, dirs: String },
    #[error("run CNI plugin {path}: {source}")]
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI {command} of network {network}: plugin {plugin} failed: {said}")]
    Plugin {
        command: &'static str,
        network: String,
        plugin: String,
        said: String,
    },
    #[error("CNI {command} of network {network}: plugin {plugin} printed no valid result: {why}")]
    BadResult {
        command: &'static str,
        network: String,
        plugin: String,
        why: String,
    },
}

/// What the plugins are told about the container, besides the list.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub container_id: String,
    pub netns: PathBuf,
    /// `eth0` (`lo` for a loopback network).
    pub ifname: String,
    pub plugin_dirs: Vec<PathBuf>,
    /// Values for plugins' capabilities (`portMappings`).
    pub runtime_config: Map<String, Value>,
}

/// Runs the list's plugins in order (ADD) and returns the last result,
/// to keep for DEL and CHECK. If a plugin fails, DEL is run for the whole
/// list (undoing what the first ones made) and the failure returned.
pub fn add(list: &Conflist, inv: &Invocation) -> Result<Value, CniError> {
    let mut prev: Option<Value> = None;
    for i in 0..list.plugins.len() {
        let out = invoke(list, i, "ADD", inv, prev.as_ref()).and_then(|out| {
            parse_result(&out).map_err(|why| CniError::BadResult {
                command: "ADD",
                network: list.name.clone(),
                plugin: list.plugin_type(i).into(),
                why,
            })
        });
        match out {
            Ok(result) => prev = Some(result),
            Err(e) => {
                if let Err(undo) = del(list, inv, prev.as_ref()) {
                    tracing::warn!(error = %undo, "undoing a failed CNI ADD");
                }
                return Err(e);
            }
        }
    }
    Ok(prev.unwrap_or_else(|| Value::Object(Map::new())))
}

/// Runs the list's plugins in reverse order (DEL), each with the cached
/// ADD result if there is one. Goes on past a failing plugin so that the
/// others still release what they hold; returns the first failure.
pub fn del(list: &Conflist, inv: &Invocation, cached: Option<&Value>) -> Result<(), CniError> {
    let mut first = None;
    for i in (0..list.plugins.len()).rev() {
        if let Err(e) = invoke(list, i, "DEL", inv, cached) {
            tracing::warn!(error = %e, "CNI DEL");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Runs the list's plugins in order (CHECK) against the cached ADD
/// result: an error says what no longer matches.
pub fn check(list: &Conflist, inv: &Invocation, cached: &Value) -> Result<(), CniError> {
    for i in 0..list.plugins.len() {
        invoke(list, i, "CHECK", inv, Some(cached))?;
    }
    Ok(())
}

/// A result as JSON, checked to decode as one.
fn parse_result(out: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<CniResult>(out).map_err(|e| e.to_string())?;
    serde_json::from_slice(out).map_err(|e| e.to_string())
}

/// The executable of plugin type `plugin`.
pub fn find_plugin(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::NoPlugin {
            plugin: plugin.into(),
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Runs plugin `index` of `list` with `command`; its stdout on success.
fn invoke(
    list: &Conflist,
    index: usize,
    command: &'static str,
    inv: &Invocation,
    prev: Option<&Value>,
) -> Result<Vec<u8>, CniError> {
    let plugin = list.plugin_type(index);
    let path = find_plugin(plugin, &inv.plugin_dirs)?;
    let conf = list.plugin_config(index, prev, &inv.runtime_config);
    let cni_path = std::env::join_paths(&inv.plugin_dirs).unwrap_or_default();
    let exec_err = |source| CniError::Exec {
        path: path.clone(),
        source,
    };
    tracing::debug!(plugin, command, network = %list.name, "CNI plugin");
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", cni_path)
        .env_remove("CNI_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec_err)?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(conf.to_string().as_bytes()));
    let out = child.wait_with_output().map_err(exec_err)?;
    if !out.status.success() {
        return Err(CniError::Plugin {
            command,
            network: list.name.clone(),
            plugin: plugin.into(),
            said: describe_failure(&out.stdout, &out.stderr),
        });
    }
    if let Some(Err(e)) = written {
        return Err(exec_err(e));
    }
    Ok(out.stdout)
}

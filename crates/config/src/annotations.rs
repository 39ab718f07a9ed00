//! What a pod may ask for: Kata's `io.katacontainers.config.*` pod
//! annotations, gated by `enable_annotations`, without the holes of Kata's
//! gate.
//!
//! - `io.katacontainers.config.hypervisor.<key>` is enabled by a pattern of
//!   `[hypervisor.qemu] enable_annotations` matching `<key>`;
//!   `io.katacontainers.config.runtime.<key>` and
//!   `io.katacontainers.config.agent.<key>` by a pattern of
//!   `[runtime] enable_annotations` matching `runtime.<key>` /
//!   `agent.<key>`. Patterns are regular expressions matched against the
//!   whole key (capsa anchors them: Kata's unanchored `path` also admits
//!   `jailer_path`), and Kata leaves the runtime and agent keys ungated.
//! - Any annotation under these prefixes that is not enabled is an error
//!   naming it and the key that would enable it; so is an enabled one that
//!   capsa does not support, and a supported one with a bad value.
//! - Paths must match `valid_hypervisor_paths` /
//!   `valid_virtio_fs_daemon_paths` (globs; empty: only the configured
//!   binary); `virtio_fs_extra_args` takes options from
//!   [`VIRTIO_FS_EXTRA_ARGS`] only; `kernel_params` cannot set what the
//!   runtime sets itself, the agent's options, `init`/`rdinit` or the
//!   console ([`RESERVED_KERNEL_PARAMS`]).
//!
//! [`apply_annotations`] is pure: the configuration and the annotations
//! in, the adjusted configuration (and the pod's agent policy) out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::Config;

pub const HYPERVISOR_PREFIX: &str = "io.katacontainers.config.hypervisor.";
pub const RUNTIME_PREFIX: &str = "io.katacontainers.config.runtime.";
pub const AGENT_PREFIX: &str = "io.katacontainers.config.agent.";

/// The largest agent policy an annotation may carry, decoded (the agent's
/// own limit is 2 MiB; Kubernetes allows 256 KiB of annotations in all).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// virtiofsd options a pod may add (`--name` or `--name=value`): none that
/// changes what is shared, how virtiofsd is sandboxed, its socket or its
/// capabilities (GHSA-rr59-xxvx-96qr).
pub const VIRTIO_FS_EXTRA_ARGS: &[&str] = &[
    "--thread-pool-size",
    "--allow-direct-io",
    "--announce-submounts",
    "--xattr",
    "--no-xattr",
    "--posix-acl",
    "--readdirplus",
    "--no-readdirplus",
    "--writeback",
];

/// Kernel parameters an annotation cannot set: those the runtime sets
/// itself (the console, `panic`, `quiet`, `swiotlb`, the root image's),
/// the agent's (`agent.*`, which also switch the debug console on), and
/// what runs first (`init`, `rdinit`) or where output goes (`console`,
/// `earlycon`, `earlyprintk`).
pub const RESERVED_KERNEL_PARAMS: &[&str] = &[
    "console",
    "earlycon",
    "earlyprintk",
    "init",
    "rdinit",
    "initrd",
    "panic",
    "quiet",
    "swiotlb",
    "root",
    "rootflags",
    "rootfstype",
    "ro",
    "rw",
];

/// Errors of pod annotations; each names the annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error(
        "annotation {key} is not enabled: add a pattern matching {suffix:?} to {setting} in the configuration"
    )]
    NotEnabled {
        key: String,
        suffix: String,
        setting: &'static str,
    },
    #[error("annotation {key} is not supported by capsa")]
    Unsupported { key: String },
    #[error("annotation {key}: invalid value {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{setting}: pattern {pattern:?} is not a valid regular expression: {reason}")]
    BadPattern {
        setting: &'static str,
        pattern: String,
        reason: String,
    },
}

/// The outcome of a pod's annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The configuration with the annotations' values
    /// (`agent.capsa.policy` holds the pod's policy).
    pub config: Config,
    /// The pod's agent policy (Rego), from
    /// `io.katacontainers.config.agent.policy`.
    pub policy: Option<String>,
}

const HYPERVISOR_SETTING: &str = "[hypervisor.qemu] enable_annotations";
const RUNTIME_SETTING: &str = "[runtime] enable_annotations";

/// `patterns` anchored and compiled; the first that does not compile is
/// an error naming `setting`.
fn compile(
    patterns: &[String],
    setting: &'static str,
) -> Result<Vec<regex::Regex>, AnnotationError> {
    patterns
        .iter()
        .map(|p| {
            regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| AnnotationError::BadPattern {
                setting,
                pattern: p.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Checks the patterns of both `enable_annotations` settings compile.
pub fn check_patterns(config: &Config) -> Result<(), AnnotationError> {
    compile(&config.hypervisor.vm.enable_annotations, HYPERVISOR_SETTING)?;
    compile(&config.runtime.enable_annotations, RUNTIME_SETTING)?;
    Ok(())
}

/// Applies the `io.katacontainers.config.*` annotations of a pod to
/// `config`. Other annotations are ignored. Annotations are applied in key
/// order, so the outcome does not depend on the map's order.
pub fn apply_annotations(
    config: &Config,
    annotations: &HashMap<String, String>,
) -> Result<Applied, AnnotationError> {
    let hypervisor = compile(&config.hypervisor.vm.enable_annotations, HYPERVISOR_SETTING)?;
    let runtime = compile(&config.runtime.enable_annotations, RUNTIME_SETTING)?;
    let mut out = config.clone();
    let mut policy = None;
    let sorted: BTreeMap<&String, &String> = annotations.iter().collect();
    for (key, value) in sorted {
        let (suffix, patterns, setting) = if let Some(s) = key.strip_prefix(HYPERVISOR_PREFIX) {
            (s.to_string(), &hypervisor, HYPERVISOR_SETTING)
        } else if let Some(s) = key.strip_prefix(RUNTIME_PREFIX) {
            (format!("runtime.{s}"), &runtime, RUNTIME_SETTING)
        } else if let Some(s) = key.strip_prefix(AGENT_PREFIX) {
            (format!("agent.{s}"), &runtime, RUNTIME_SETTING)
        } else {
            continue;
        };
        if !patterns.iter().any(|r| r.is_match(&suffix)) {
            return Err(AnnotationError::NotEnabled {
                key: key.clone(),
                suffix,
                setting,
            });
        }
        let invalid = |reason: String| AnnotationError::Invalid {
            key: key.clone(),
            value: shorten(value),
            reason,
        };
        let q = &mut out.hypervisor.vm;
        match suffix.as_str() {
            "default_vcpus" => q.default_vcpus = number(value, 1, 256).map_err(invalid)?,
            "default_maxvcpus" => q.default_maxvcpus = number(value, 0, 256).map_err(invalid)?,
            "default_memory" => {
                q.default_memory = number(value, 128, 1024 * 1024).map_err(invalid)?
            }
            "default_maxmemory" => {
                q.default_maxmemory = number(value, 0, 1024 * 1024).map_err(invalid)?
            }
            "kernel_params" => {
                let params = kernel_params(value).map_err(invalid)?;
                if !params.is_empty() {
                    if !q.kernel_params.is_empty() {
                        q.kernel_params.push(' ');
                    }
                    q.kernel_params.push_str(&params.join(" "));
                }
            }
            "path" => {
                let crate::DriverSettings::Qemu(driver) = &mut out.hypervisor.driver else {
                    let name = out.hypervisor.driver.name();
                    return Err(invalid(format!(
                        "the {name} driver has no hypervisor binary of its own"
                    )));
                };
                let allowed = globs_or(&config.hypervisor.vm.valid_hypervisor_paths, &driver.path);
                driver.path =
                    allowed_path(value, &allowed, "valid_hypervisor_paths").map_err(invalid)?;
            }
            "virtio_fs_daemon" => {
                let allowed = globs_or(
                    &config.hypervisor.vm.valid_virtio_fs_daemon_paths,
                    &config.hypervisor.vm.virtio_fs_daemon,
                );
                q.virtio_fs_daemon = allowed_path(value, &allowed, "valid_virtio_fs_daemon_paths")
                    .map_err(invalid)?;
            }
            "virtio_fs_extra_args" => {
                let args = virtio_fs_extra_args(value).map_err(invalid)?;
                q.virtio_fs_extra_args.extend(args);
            }
            "block_device_driver" => {
                q.block_device_driver = value
                    .parse()
                    .map_err(|_| invalid("is not one of virtio-blk, virtio-scsi".into()))?;
            }
            "disable_block_device_use" => {
                q.disable_block_device_use = boolean(value).map_err(invalid)?
            }
            "runtime.sandbox_cgroup_only" => {
                out.runtime.sandbox_cgroup_only = boolean(value).map_err(invalid)?
            }
            "agent.policy" => policy = Some(decode_policy(value).map_err(invalid)?),
            _ => return Err(AnnotationError::Unsupported { key: key.clone() }),
        }
    }
    let q = &out.hypervisor.vm;
    let vcpus = (
        HYPERVISOR_PREFIX.to_string() + "default_maxvcpus",
        q.default_maxvcpus,
    );
    if q.default_maxvcpus != 0 && q.default_maxvcpus < q.default_vcpus {
        return Err(AnnotationError::Invalid {
            key: vcpus.0,
            value: vcpus.1.to_string(),
            reason: format!("less than default_vcpus ({})", q.default_vcpus),
        });
    }
    if q.default_maxmemory != 0 && q.default_maxmemory < q.default_memory {
        return Err(AnnotationError::Invalid {
            key: HYPERVISOR_PREFIX.to_string() + "default_maxmemory",
            value: q.default_maxmemory.to_string(),
            reason: format!("less than default_memory ({} MiB)", q.default_memory),
        });
    }
    out.agent.capsa.policy = policy.clone().or(out.agent.capsa.policy);
    Ok(Applied {
        config: out,
        policy,
    })
}

/// `value` as an error shows it: at most 80 characters (a policy is
/// long).
fn shorten(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_string(),
    }
}

fn number(value: &str, min: u32, max: u32) -> Result<u32, String> {
    let n: u32 = value
        .trim()
        .parse()
        .map_err(|_| "not a whole number".to_string())?;
    if !(min..=max).contains(&n) {
        return Err(format!("not between {min} and {max}"));
    }
    Ok(n)
}

fn boolean(value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("not true or false".into()),
    }
}

/// The words of a `kernel_params` annotation, each checked against
/// [`RESERVED_KERNEL_PARAMS`] and `agent.*` (name before `=`; the kernel
/// treats `-` and `_` in names alike).
pub fn kernel_params(value: &str) -> Result<Vec<String>, String> {
    value
        .split_ascii_whitespace()
        .map(|word| {
            if word.contains(['"', '\'']) || word.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "{word:?}: quotes and control characters are not allowed"
                ));
            }
            let name = word.split('=').next().unwrap_or_default().replace('-', "_");
            // The kernel reads `--` as the end of its own parameters: what
            // follows goes to init.
            if word == "--" || name.starts_with("agent.") {
                return Err(format!(
                    "{word:?}: the agent's options cannot be set by a pod"
                ));
            }
            if RESERVED_KERNEL_PARAMS.contains(&name.as_str()) {
                return Err(format!("{word:?}: {name} is set by capsa, not by a pod"));
            }
            Ok(word.to_string())
        })
        .collect()
}

/// `valid_*_paths`, or the configured binary alone when empty.
fn globs_or(globs: &[String], configured: &Path) -> Vec<String> {
    if globs.is_empty() {
        vec![configured.display().to_string()]
    } else {
        globs.to_vec()
    }
}

/// `value` if it is an absolute, normal path matching one of `globs`
/// (`*` does not cross `/`).
fn allowed_path(value: &str, globs: &[String], setting: &str) -> Result<PathBuf, String> {
    let path = Path::new(value);
    if !path.is_absolute()
        || path.components().any(|c| {
            !matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
    {
        return Err("not an absolute path without . or ..".into());
    }
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let matched = globs
        .iter()
        .any(|g| glob::Pattern::new(g).is_ok_and(|p| p.matches_path_with(path, options)));
    if !matched {
        return Err(format!("matches none of {setting} {globs:?}"));
    }
    Ok(path.to_path_buf())
}

/// Kata's form: a JSON array of strings (`["--thread-pool-size=4"]`);
/// each an option of [`VIRTIO_FS_EXTRA_ARGS`].
pub fn virtio_fs_extra_args(value: &str) -> Result<Vec<String>, String> {
    let args: Vec<String> =
        serde_json::from_str(value).map_err(|e| format!("not a JSON array of strings: {e}"))?;
    for arg in &args {
        let name = arg.split('=').next().unwrap_or_default();
        if !VIRTIO_FS_EXTRA_ARGS.contains(&name) {
            return Err(format!(
                "{arg:?} is not an allowed virtiofsd option ({})",
                VIRTIO_FS_EXTRA_ARGS.join(", ")
            ));
        }
        if name == "--thread-pool-size" {
            let n = arg.strip_prefix("--thread-pool-size=").unwrap_or_default();
            number(n, 0, 64).map_err(|e| format!("{arg:?}: {e}"))?;
        } else if arg.contains('=') {
            return Err(format!("{arg:?}: {name} takes no value"));
        }
    }
    Ok(args)
}

/// The pod's policy: base64 (standard alphabet) of UTF-8 Rego text.
pub fn decode_policy(value: &str) -> Result<String, String> {
    use base64::Engine as _;
    let compact: String = value.split_ascii_whitespace().collect();
    if compact.len() > MAX_POLICY_BYTES / 3 * 4 + 4 {
        return Err(format!(
            "the policy is larger than {MAX_POLICY_BYTES} bytes"
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| format!("not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "the policy is not UTF-8 text".to_string())?;
    if text.trim().is_empty() {
        return Err("the policy is empty".into());
    }
    Ok(text)
}

#[cfg(test)]
mod tests;

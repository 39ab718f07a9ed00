use std::path::Path;

use crate::{Config, Error, Invalid};

/// An OTLP/gRPC endpoint: `http://`, a host, a port. capsa's exporter
/// has no TLS (a collector on the host or a sidecar forwards).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.starts_with("https://") {
        return Err(format!(
            "{endpoint:?}: https is not supported (no TLS in capsa's exporter); \
             use a local collector over http://"
        ));
    }
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("{endpoint:?} is not an http:// URL"))?;
    let authority = rest.trim_end_matches('/');
    let port = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty() && !host.contains('/'))
        .map(|(_, port)| port);
    match port.map(str::parse::<u16>) {
        Some(Ok(p)) if p != 0 => Ok(()),
        _ => Err(format!(
            "{endpoint:?} does not name a host and a port (http://HOST:PORT)"
        )),
    }
}

/// Checks values of the shared keys that the types alone do not
/// constrain (the driver checks its own keys: [`crate::load_checked`]).
pub(crate) fn check(config: &Config, path: &Path) -> Result<(), Error> {
    let invalid = |key: &str, reason: String| Invalid::new(key, reason).at(path);
    let h = &config.hypervisor;
    let v = &h.vm;
    let key = |name: &str| h.key(name);
    one_of(
        "runtime.internetworking_model",
        &config.runtime.internetworking_model,
        &["tcfilter", "macvtap", "none"],
    )
    .map_err(|r| invalid("runtime.internetworking_model", r))?;
    if !(1..=60).contains(&v.hotplug_timeout) {
        return Err(invalid(
            &key("hotplug_timeout"),
            format!("{} is not between 1 and 60 seconds (the agent's CreateContainer is bounded to 60 s)", v.hotplug_timeout),
        ));
    }
    if !(1..=256).contains(&v.default_vcpus) {
        return Err(invalid(
            &key("default_vcpus"),
            format!("{} is not between 1 and 256", v.default_vcpus),
        ));
    }
    if v.default_memory < 128 {
        return Err(invalid(
            &key("default_memory"),
            format!("{} MiB is less than 128 MiB", v.default_memory),
        ));
    }
    // 0 stands for the host's size (resolved when the VM starts).
    if v.default_maxvcpus != 0 && v.default_maxvcpus < v.default_vcpus {
        return Err(invalid(
            &key("default_maxvcpus"),
            format!(
                "{} is less than default_vcpus ({}); 0 means the host's CPU count",
                v.default_maxvcpus, v.default_vcpus
            ),
        ));
    }
    if v.default_maxmemory != 0 && v.default_maxmemory < v.default_memory {
        return Err(invalid(
            &key("default_maxmemory"),
            format!(
                "{} MiB is less than default_memory ({} MiB); 0 means the host's memory",
                v.default_maxmemory, v.default_memory
            ),
        ));
    }
    match (
        v.image.as_os_str().is_empty(),
        v.initrd.as_os_str().is_empty(),
    ) {
        (false, false) => {
            return Err(invalid(
                &key("image"),
                format!(
                    "{:?} and {} ({:?}) are exclusive: \
                     set initrd = \"\" to boot the image",
                    v.image,
                    key("initrd"),
                    v.initrd
                ),
            ))
        }
        (true, true) => {
            return Err(invalid(
                &key("initrd"),
                format!("must be set (or {})", key("image")),
            ))
        }
        _ => {}
    }
    if !config.runtime.state_dir.is_absolute() {
        return Err(invalid(
            "runtime.state_dir",
            format!("{:?} is not an absolute path", config.runtime.state_dir),
        ));
    }
    let cni = &config.runtime;
    for (key, path) in std::iter::once(("runtime.cni_conflist", &cni.cni_conflist))
        .chain(std::iter::once(("runtime.timeline_dir", &cni.timeline_dir)))
        .filter(|(_, p)| !p.as_os_str().is_empty())
        .chain(
            cni.cni_plugin_dirs
                .iter()
                .map(|d| ("runtime.cni_plugin_dirs", d)),
        )
    {
        if !path.is_absolute() {
            return Err(invalid(key, format!("{path:?} is not an absolute path")));
        }
    }
    // annotations (issue 25): the patterns of enable_annotations compile.
    if let Err(crate::AnnotationError::BadPattern {
        setting,
        pattern,
        reason,
    }) = crate::annotations::check_patterns(config)
    {
        let key = if setting.starts_with("[runtime]") {
            "runtime.enable_annotations".to_string()
        } else {
            h.key("enable_annotations")
        };
        return Err(invalid(&key, format!("{pattern:?}: {reason}")));
    }
    if config.runtime.enable_tracing {
        check_endpoint(&config.runtime.tracing_endpoint)
            .map_err(|r| invalid("runtime.tracing_endpoint", r))?;
    }
    if config.agent.capsa.dial_timeout == 0 {
        return Err(invalid(
            "agent.capsa.dial_timeout",
            "must be at least 1 second".into(),
        ));
    }
    Ok(())
}

fn one_of(_key: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not one of {}", allowed.join(", ")))
    }
}

//! `capsa ps` and `capsa inspect`.

use std::path::Path;

use crate::output;

use anyhow::Context;
use capsa_runtime::record::human_age;
use capsa_runtime::Found;

pub fn ps(config: Option<&Path>) -> anyhow::Result<u8> {
    let (config, _) = capsa_runtime::load_config(config)?;
    let found = Found::all(&config.runtime.state_dir);
    output::line(format_args!(
        "{:<20} {:<9} {:>8} {:>5}  COMMAND",
        "ID", "STATE", "PID", "AGE"
    ))?;
    for f in found {
        if f.liveness == capsa_runtime::Liveness::Dead {
            // Its capsa was killed: the network it made (netns, IP
            // allocation, port forwarding) goes now, the record with `rm`.
            if let Err(e) = f.dir.release_cni() {
                tracing::warn!(sandbox = %f.record.id, error = %format!("{:#}", anyhow::Error::from(e)), "network of a dead sandbox not released");
            }
        }
        let r = &f.record;
        let pid = r
            .hypervisor_pid
            .filter(|_| matches!(f.liveness, capsa_runtime::Liveness::Recorded(s) if s != capsa_runtime::record::SandboxStatus::Stopped))
            .map_or_else(|| "-".to_string(), |p| p.to_string());
        let command = r
            .containers
            .first()
            .map(|c| c.command.join(" "))
            .unwrap_or_default();
        output::line(format_args!(
            "{:<20} {:<9} {:>8} {:>5}  {}",
            r.id,
            f.liveness.to_string(),
            pid,
            human_age(r.age()),
            command
        ))?;
    }
    Ok(0)
}

pub fn inspect(config: Option<&Path>, id: &str) -> anyhow::Result<u8> {
    let (config, _) = capsa_runtime::load_config(config)?;
    let found = Found::open(&config.runtime.state_dir, id)?;
    let mut value = serde_json::to_value(&found.record).context("encode the record")?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("state".into(), found.liveness.to_string().into());
        obj.insert("age_seconds".into(), found.record.age().into());
        obj.insert(
            "state_dir".into(),
            found.dir.path().display().to_string().into(),
        );
    }
    output::line(format_args!(
        "{}",
        serde_json::to_string_pretty(&value).context("encode the record")?
    ))?;
    Ok(0)
}

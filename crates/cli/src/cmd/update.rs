//! `capsa update`: new limits for a running sandbox's container, asked of
//! the sandbox's owner over its control socket (only the owner holds the
//! VM's driver session, so only it resizes the VM).

use std::path::Path;

use anyhow::{bail, Context};
use capsa_runtime::control::{self, Reply, Request};
use capsa_runtime::Found;

use crate::output;

pub async fn update(
    config: Option<&Path>,
    id: &str,
    cpus: Option<u32>,
    memory_mib: Option<u32>,
) -> anyhow::Result<u8> {
    if cpus.is_none() && memory_mib.is_none() {
        bail!("nothing to update: give --cpus and/or --memory");
    }
    let (config, _) = capsa_runtime::load_config(config)?;
    let found = Found::open(&config.runtime.state_dir, id)?;
    // `capsa run`'s container has the sandbox's id.
    let req = Request::Update {
        container: found.record.id.clone(),
        cpus,
        memory_mib,
    };
    let reply = control::request(found.dir.path(), id, &req)
        .await
        .with_context(|| format!("update sandbox {id}"))?;
    match reply {
        Reply::Done { resources } => {
            if let Some(r) = resources {
                output::line(format_args!(
                    "{id}: VM {} vCPUs (max {}), {} MiB (max {})",
                    r.vcpus, r.max_vcpus, r.memory_mib, r.max_memory_mib
                ))?;
            }
            Ok(0)
        }
        Reply::Failed { error } => bail!("update sandbox {id}: {error}"),
    }
}

//! `capsa kill` and `capsa rm`.

use std::path::Path;

use anyhow::Context;
use capsa_runtime::Found;

use crate::output;

pub async fn kill(config: Option<&Path>, id: &str, signal: i32) -> anyhow::Result<u8> {
    let (config, _) = capsa_runtime::load_config(config)?;
    let found = Found::open(&config.runtime.state_dir, id)?;
    found
        .kill(None, signal)
        .await
        .with_context(|| format!("signal {signal} to sandbox {id}"))?;
    Ok(0)
}

pub async fn rm(config: Option<&Path>, ids: &[String], force: bool) -> anyhow::Result<u8> {
    let (config, _) = capsa_runtime::load_config(config)?;
    let mut failed = false;
    for id in ids {
        let removed = match Found::open(&config.runtime.state_dir, id) {
            Ok(found) => found.remove(force).await,
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => output::line(id)?,
            Err(e) => {
                failed = true;
                eprintln!("capsa: error: remove {id}: {:#}", anyhow::Error::from(e));
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

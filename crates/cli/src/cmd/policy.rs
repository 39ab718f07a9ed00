//! `capsa policy set|get`: a running sandbox's agent policy.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use capsa_runtime::Found;

use crate::output;

pub async fn set(config: Option<&Path>, id: &str, file: &Path) -> anyhow::Result<u8> {
    let policy = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("read the policy from standard input")?;
        text
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("read the policy {}", file.display()))?
    };
    let (config, _) = capsa_runtime::load_config(config)?;
    let found = Found::open(&config.runtime.state_dir, id)?;
    let agent = found.agent().await?;
    capsa_runtime::policy::set(&agent, found.dir.path(), &policy).await?;
    Ok(0)
}

pub fn get(config: Option<&Path>, id: &str) -> anyhow::Result<u8> {
    let (config, _) = capsa_runtime::load_config(config)?;
    let found = Found::open(&config.runtime.state_dir, id)?;
    if let Some(policy) = capsa_runtime::policy::get(found.dir.path())? {
        output::text(&policy)?;
    }
    Ok(0)
}

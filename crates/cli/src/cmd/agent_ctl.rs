//! `capsa agent-ctl`: any agent method, JSON in and out.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use capsa_runtime::Found;

use crate::output;

/// Time allowed for one call (WaitProcess and GetOOMEvent may block long).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn agent_ctl(
    config: Option<&Path>,
    id: &str,
    method: Option<&str>,
    request: &str,
    list: bool,
) -> anyhow::Result<u8> {
    if list {
        for m in capsa_agent_client::methods() {
            output::line(m)?;
        }
        return Ok(0);
    }
    let method = method.context("a method name is needed")?;
    let (config, _) = capsa_runtime::load_config(config)?;
    let found = Found::open(&config.runtime.state_dir, id)?;
    let agent = found.agent().await?;
    let reply = agent.call_json(method, request, CALL_TIMEOUT).await?;
    output::line(reply)?;
    Ok(0)
}

//! `capsa config`: the resolved configuration and its source.

use std::path::Path;

use anyhow::Context;

use crate::output;

pub fn show(explicit: Option<&Path>) -> anyhow::Result<u8> {
    let (config, source) = capsa_runtime::load_config(explicit)?;
    output::line(format_args!("# source: {source}"))?;
    output::text(toml::to_string(&config).context("print the configuration")?)?;
    Ok(0)
}

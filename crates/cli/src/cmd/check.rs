//! `capsa check`: what the host offers, what capsa would use, what is missing.

use std::path::Path;

use crate::output;

pub fn check(explicit: Option<&Path>) -> anyhow::Result<u8> {
    let (config, source) = capsa_runtime::load_config(explicit)?;
    let mut missing = 0;

    output::line(format_args!("configuration   {source}"))?;
    // The driver says what the host offers it and what it would use.
    for line in capsa_hypervisor::check_host(&config.hypervisor) {
        let what = &line.what;
        if line.missing {
            missing += 1;
            output::line(format_args!("{what:<15} MISSING: {}", line.detail))?;
        } else {
            output::line(format_args!("{what:<15} {}", line.detail))?;
        }
    }
    if missing > 0 {
        output::line(format_args!(
            "{missing} missing: run `make install` (or fix the configuration)"
        ))?;
        return Ok(1);
    }
    Ok(0)
}

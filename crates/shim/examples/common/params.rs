//! The environment the shim's examples take their parameters from.

use std::path::PathBuf;

/// `RUNS`: samples of each measurement, `default` when unset or not a
/// number.
pub fn runs(default: usize) -> usize {
    capsa_test_infra::bench_runs(default)
}

/// `SHIM_DIR`: the directory of the release shim (the Makefile sets it).
pub fn shim_dir() -> PathBuf {
    PathBuf::from(std::env::var("SHIM_DIR").expect("SHIM_DIR: the shim's directory"))
}

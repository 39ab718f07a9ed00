//! `capsa assets build`.

use anyhow::Context;
use capsa_assets::{AssetsSpec, KernelSource};

use crate::args::AssetsBuildArgs;

pub fn build(args: AssetsBuildArgs) -> anyhow::Result<u8> {
    let kernel = match args.kernel {
        Some(kernel) => KernelSource::Path {
            kernel,
            modules_dir: args.modules_dir,
        },
        None => KernelSource::DebianPackage {
            name: args.kernel_package,
        },
    };
    let spec = AssetsSpec {
        out_dir: args.out,
        kernel,
        agent_binary: args.agent,
        modules: args.modules,
        image: args.image,
    };
    let manifest = capsa_assets::build(&spec).context("build guest assets")?;
    crate::output::line(serde_json::to_string_pretty(&manifest).context("print the manifest")?)?;
    Ok(0)
}

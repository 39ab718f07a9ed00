//! `capsa assets build`.

use std::path::Path;

use anyhow::Context;
use capsa_assets::{AssetsSpec, KernelSource, SHELL_PACKAGE};

use crate::args::AssetsBuildArgs;

/// Where the Debian kernel's assets go, under the output directory.
const DEBIAN_DIR: &str = "debian";

/// What a kernel build does goes to stderr: it takes minutes.
fn progress(note: &str) {
    eprintln!("capsa assets: {note}");
}

pub fn build(args: AssetsBuildArgs) -> anyhow::Result<u8> {
    let kernel = match (args.kernel, args.kernel_package) {
        (Some(kernel), _) => KernelSource::Path {
            kernel,
            modules_dir: args.modules_dir,
        },
        (None, Some(name)) => KernelSource::DebianPackage { name },
        (None, None) => KernelSource::Build {
            kernel_dir: args.kernel_dir.clone(),
            cache: args.kernel_cache.clone(),
        },
    };
    let spec = AssetsSpec {
        out_dir: args.out.clone(),
        kernel,
        agent_binary: args.agent,
        modules: args.modules,
        image: args.image,
    };
    // The package cache of the main output directory serves both builds.
    let packages = args.out.join("cache");
    let manifest =
        capsa_assets::build_with_progress(&spec, Some(SHELL_PACKAGE), Some(&packages), &progress)
            .context("build guest assets")?;
    if !args.no_debian_kernel && matches!(spec.kernel, KernelSource::Build { .. }) {
        let debian = AssetsSpec {
            out_dir: args.out.join(DEBIAN_DIR),
            kernel: KernelSource::DebianPackage {
                name: args.debian_kernel,
            },
            image: false,
            ..spec
        };
        let m = capsa_assets::build_with_progress(
            &debian,
            Some(SHELL_PACKAGE),
            Some(&packages),
            &progress,
        )
        .context("build the Debian kernel's guest assets")?;
        progress(&format!(
            "Debian kernel {} in {}",
            m.kernel_version,
            debian.out_dir.display()
        ));
    }
    if args.uml {
        build_uml(&args.kernel_dir, &args.kernel_cache, &args.out)?;
    }
    crate::output::line(serde_json::to_string_pretty(&manifest).context("print the manifest")?)?;
    Ok(0)
}

fn build_uml(kernel_dir: &Path, cache: &Path, out: &Path) -> anyhow::Result<()> {
    let uml = capsa_assets::build_uml(kernel_dir, cache, out, &progress)
        .context("build the User-Mode Linux kernel")?;
    progress(&format!(
        "User-Mode Linux kernel {} in {}",
        uml.release,
        uml.image.display()
    ));
    Ok(())
}

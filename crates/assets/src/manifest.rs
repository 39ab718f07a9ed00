//! `manifest.json`: what the assets were built from, and their hashes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// What a build depends on; a change in any field triggers a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub kernel: String,
    pub kernel_sha256: String,
    pub agent_sha256: String,
    pub modules: Vec<String>,
    pub builder: String,
}

/// The built assets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub kernel_version: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Module files in the initrd, in load order.
    pub modules: Vec<String>,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    pub inputs: Inputs,
}

const FILE: &str = "manifest.json";

pub fn load_manifest(out_dir: &Path) -> Result<Manifest, Error> {
    let path = out_dir.join(FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Manifest(format!("{}: {e}", path.display())))
}

pub(crate) fn save(out_dir: &Path, manifest: &Manifest) -> Result<(), Error> {
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| Error::Manifest(e.to_string()))?;
    crate::write_atomic(&out_dir.join(FILE), text.as_bytes())
}

/// The existing manifest if it was built from `inputs` and its outputs are
/// still there.
pub(crate) fn up_to_date(out_dir: &Path, inputs: &Inputs) -> Option<Manifest> {
    let m = load_manifest(out_dir).ok()?;
    (m.inputs == *inputs && m.kernel.is_file() && m.initrd.is_file()).then_some(m)
}

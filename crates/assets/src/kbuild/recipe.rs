//! What a kernel is built from, besides the pinned source: the
//! repository's configuration fragments (`kernel/<arch>/*.conf`) and
//! patches (`kernel/patches/<arch>/*.patch`), each set in name order, and
//! the build's id (the cache key) that hashes them all.

use fs_err as fs;
use std::path::Path;

use crate::files::sha256;
use crate::Error;

use super::{source, Arch};

/// Bump when the build steps change what comes out of the same inputs.
const BUILD_FORMAT: u32 = 2;

/// One fragment or patch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub data: Vec<u8>,
}

/// A kernel's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub arch: Arch,
    pub fragments: Vec<Part>,
    pub patches: Vec<Part>,
}

impl Recipe {
    /// Reads the fragments and patches of `arch` under `kernel_dir` (the
    /// repository's `kernel/`). A missing directory holds nothing.
    pub fn load(kernel_dir: &Path, arch: Arch) -> Result<Self, Error> {
        Ok(Recipe {
            arch,
            fragments: read_sorted(&kernel_dir.join(arch.dir()), ".conf")?,
            patches: read_sorted(&kernel_dir.join("patches").join(arch.dir()), ".patch")?,
        })
    }

    /// The build's id: the sha256 of the source's pin, the architecture,
    /// and every fragment and patch (name and content) in order.
    pub fn id(&self) -> String {
        let mut text = format!(
            "capsa kernel build {BUILD_FORMAT}\nsource {} {} {}\narch {}\n",
            source::PACKAGE,
            source::VERSION,
            source::SHA256,
            self.arch.dir()
        )
        .into_bytes();
        for (kind, parts) in [("fragment", &self.fragments), ("patch", &self.patches)] {
            for p in parts {
                text.extend(format!("{kind} {} {}\n", p.name, p.data.len()).bytes());
                text.extend(&p.data);
            }
        }
        sha256(&text)
    }

    /// The fragments one after the other (`KCONFIG_ALLCONFIG`).
    pub fn merged_config(&self) -> String {
        self.fragments
            .iter()
            .map(|f| {
                let mut text = String::from_utf8_lossy(&f.data).into_owned();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text
            })
            .collect()
    }
}

/// The files of `dir` whose name ends in `suffix`, by name.
fn read_sorted(dir: &Path, suffix: &str) -> Result<Vec<Part>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix) && !n.starts_with('.'))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let data = fs::read(&path)?;
            Ok(Part { name, data })
        })
        .collect()
}

/// The options `fragments` sets (`CONFIG_X=v`) or unsets (`# CONFIG_X is
/// not set`) that `config` (a `.config`) does not have as asked, each as
/// `CONFIG_X=v (got ...)`. Later fragments override earlier ones, as in
/// the build.
pub fn missing_options(fragments: &str, config: &str) -> Vec<String> {
    let wanted = settings(fragments);
    let got = settings(config);
    let mut missing: Vec<String> = wanted
        .iter()
        .filter(|(name, value)| got.get(*name).map_or("n", String::as_str) != value.as_str())
        .map(|(name, value)| {
            let got = got.get(name).map_or("n", String::as_str);
            let show = |v: &str| match v {
                "n" => format!("{name} not set"),
                v => format!("{name}={v}"),
            };
            format!("{} (got {})", show(value), show(got))
        })
        .collect();
    missing.sort();
    missing
}

/// Option name → value (`n` for "is not set"), the last line winning.
fn settings(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                if name.starts_with("CONFIG_") {
                    map.insert(name.to_string(), "n".to_string());
                }
            }
        } else if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") {
                map.insert(name.to_string(), value.to_string());
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(dir: &Path) -> Recipe {
        Recipe::load(dir, Arch::X86_64).unwrap()
    }

    #[test]
    fn id_changes_with_any_fragment_or_patch_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("x86_64");
        let patches = dir.path().join("patches/x86_64");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&patches).unwrap();
        std::fs::write(conf.join("10-b.conf"), "CONFIG_B=y\n").unwrap();
        std::fs::write(conf.join("00-a.conf"), "CONFIG_A=y").unwrap();
        std::fs::write(conf.join("notes.txt"), "not a fragment").unwrap();
        let first = recipe(dir.path());
        let names: Vec<&str> = first.fragments.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["00-a.conf", "10-b.conf"]);
        assert_eq!(first.merged_config(), "CONFIG_A=y\nCONFIG_B=y\n");
        assert_eq!(recipe(dir.path()).id(), first.id(), "same inputs, same id");

        std::fs::write(conf.join("notes.txt"), "still not a fragment").unwrap();
        assert_eq!(recipe(dir.path()).id(), first.id());

        std::fs::write(conf.join("10-b.conf"), "CONFIG_B=n\n").unwrap();
        let changed = recipe(dir.path()).id();
        assert_ne!(changed, first.id(), "a changed fragment");

        std::fs::write(patches.join("0001-fix.patch"), "--- a\n+++ b\n").unwrap();
        let patched = recipe(dir.path()).id();
        assert_ne!(patched, changed, "a new patch");

        std::fs::rename(
            patches.join("0001-fix.patch"),
            patches.join("0002-fix.patch"),
        )
        .unwrap();
        assert_ne!(recipe(dir.path()).id(), patched, "a renamed patch");

        let um = Recipe::load(dir.path(), Arch::Um).unwrap();
        assert!(um.fragments.is_empty() && um.patches.is_empty());
        assert_ne!(
            um.id(),
            Recipe::load(dir.path(), Arch::X86_64).unwrap().id()
        );
    }

    #[test]
    fn missing_options_are_named() {
        let fragments = "CONFIG_A=y\n# CONFIG_MODULES is not set\nCONFIG_S=\"x\"\nCONFIG_C=y\nCONFIG_C=n\n# comment\n";
        let config = "CONFIG_A=y\nCONFIG_MODULES=y\n# CONFIG_S is not set\n";
        assert_eq!(
            missing_options(fragments, config),
            [
                "CONFIG_MODULES not set (got CONFIG_MODULES=y)",
                "CONFIG_S=\"x\" (got CONFIG_S not set)",
            ]
        );
        let good = "CONFIG_A=y\nCONFIG_S=\"x\"\n# CONFIG_C is not set\n";
        assert!(missing_options("CONFIG_A=y\n# CONFIG_C is not set\n", good).is_empty());
    }
}

//! capsa's own kernels, built from Debian's kernel source with the
//! repository's configuration fragments and patches (`kernel/`,
//! documented in `kernel/README.md`), and cached by the build's id.
//!
//! A build, in `<cache>/<arch>-<id>/work`: the pinned source unpacked,
//! the patches applied in name order (`patch -p1`), `make allnoconfig`
//! with the fragments as `KCONFIG_ALLCONFIG` (everything not asked for is
//! off), a check that every option of the fragments took (an option whose
//! dependencies are missing is silently dropped by Kconfig: here it is an
//! error naming it), then `nice -n 10 make -jN` of the architecture's
//! target. The kernel and its `.config` are kept in `<cache>/<arch>-<id>/`,
//! the work directory is removed: a second build with the same inputs
//! only reads the cache. A build cut short resumes in its configured work
//! directory (make compiles what is missing).

mod recipe;
mod source;

use fs_err as fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::files::{lock_dir, run, write_atomic};
use crate::Error;

pub use recipe::{missing_options, Part, Recipe};
pub use source::{PACKAGE as SOURCE_PACKAGE, VERSION as SOURCE_VERSION};

/// The cache's default place.
pub const DEFAULT_CACHE: &str = "/var/cache/capsa/kernels";

/// The architectures capsa builds kernels for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// The QEMU guest.
    X86_64,
    /// User-Mode Linux (`ARCH=um`), a host program.
    Um,
}

impl Arch {
    /// Its directory under `kernel/` and `kernel/patches/`.
    pub fn dir(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Um => "um",
        }
    }

    /// What the progress messages call it.
    pub fn describe(self) -> &'static str {
        match self {
            Arch::X86_64 => "the x86_64 guest kernel",
            Arch::Um => "the User-Mode Linux kernel",
        }
    }

    fn make_vars(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["ARCH=x86_64"],
            Arch::Um => &["ARCH=um", "SUBARCH=x86_64"],
        }
    }

    /// The make target, which is also the file it writes in the build
    /// directory: the uncompressed ELF kernel (PVH entry: QEMU starts it
    /// without a decompressor or real-mode setup), or UML's program.
    fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => "vmlinux",
            Arch::Um => "linux",
        }
    }
}

/// A built kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltKernel {
    pub arch: Arch,
    /// The build's id (sha256 of its inputs).
    pub id: String,
    /// `uname -r` in the guest: `6.12.118-capsa-<id's first 12>`.
    pub release: String,
    pub image: PathBuf,
    /// Its `.config`.
    pub config: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// The first 12 hex digits of an id: the release names the build by it.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The build directory of `recipe` in `cache`.
fn build_dir(cache: &Path, recipe: &Recipe, id: &str) -> PathBuf {
    cache.join(format!("{}-{}", recipe.arch.dir(), short_id(id)))
}

const RELEASE_FILE: &str = "release";
const CONFIG_FILE: &str = "config";
/// In the work directory once it is configured: the build's id.
const CONFIGURED_STAMP: &str = ".capsa-configured";

/// The kernel of `recipe` from `cache`, built first if the cache has none
/// for its id. `progress` receives what is done and why.
pub fn build(recipe: &Recipe, cache: &Path, progress: &dyn Fn(&str)) -> Result<BuiltKernel, Error> {
    if recipe.fragments.is_empty() {
        return Err(Error::NoFragments(recipe.arch.dir().into()));
    }
    let id = recipe.id();
    let dir = build_dir(cache, recipe, &id);
    fs::create_dir_all(&dir)?;
    let _lock = lock_dir(&dir)?;
    let what = recipe.arch.describe();
    if let Some(built) = cached(recipe.arch, &id, &dir) {
        progress(&format!(
            "{what}: cached build {} ({})",
            short_id(&id),
            built.image.display()
        ));
        return Ok(built);
    }
    progress(&format!(
        "building {what}: no cached build for {} (in {})",
        short_id(&id),
        dir.display()
    ));
    let started = Instant::now();
    let work = dir.join("work");
    let src = work.join("src");
    let out = work.join("out");
    // A build cut short (interrupted, or its compiler failed) left its
    // configured tree: make goes on from there.
    let stamp = work.join(CONFIGURED_STAMP);
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == id) {
        progress(&format!("resuming the build in {}", work.display()));
    } else {
        if work.exists() {
            fs::remove_dir_all(&work)?;
        }
        let deb = source::fetch(&cache.join("source"))?;
        progress(&format!(
            "unpacking {} {}",
            source::PACKAGE,
            source::VERSION
        ));
        source::unpack(&deb, &src)?;
        for patch in &recipe.patches {
            progress(&format!("applying {}", patch.name));
            apply_patch(&src, &work, patch)?;
        }
        fs::create_dir_all(&out)?;
        configure(recipe, &src, &out)?;
        write_atomic(&stamp, id.as_bytes())?;
    }
    let log = dir.join("build.log");
    let local = format!("LOCALVERSION=-capsa-{}", short_id(&id));
    compile(recipe.arch, &src, &out, &local, &log, progress)?;

    let release = String::from_utf8_lossy(&run(
        "make kernelrelease",
        make(recipe.arch, &src, &out).args(["-s", &local, "kernelrelease"]),
    )?)
    .trim()
    .to_string();
    let image = dir.join(recipe.arch.target());
    let config = dir.join(CONFIG_FILE);
    copy(&out.join(recipe.arch.target()), &image)?;
    copy(&out.join(".config"), &config)?;
    write_atomic(&dir.join(RELEASE_FILE), release.as_bytes())?;
    fs::remove_dir_all(&work)?;
    progress(&format!(
        "built {what} {release} in {} s",
        started.elapsed().as_secs()
    ));
    Ok(BuiltKernel {
        arch: recipe.arch,
        id,
        release,
        image,
        config,
        cached: false,
    })
}

/// The finished build in `dir` (its release file is written last).
fn cached(arch: Arch, id: &str, dir: &Path) -> Option<BuiltKernel> {
    let release = std::fs::read_to_string(dir.join(RELEASE_FILE)).ok()?;
    let image = dir.join(arch.target());
    let config = dir.join(CONFIG_FILE);
    (image.is_file() && config.is_file()).then(|| BuiltKernel {
        arch,
        id: id.to_string(),
        release: release.trim().to_string(),
        image,
        config,
        cached: true,
    })
}

fn make(arch: Arch, src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src)
        .arg(format!("O={}", out.display()))
        .args(arch.make_vars())
        .args(BUILD_IDENTITY);
    cmd
}

/// `/proc/version` names the builder: capsa, not the build machine (on a
/// capsa host that is the host's own name).
const BUILD_IDENTITY: [&str; 2] = ["KBUILD_BUILD_USER=capsa", "KBUILD_BUILD_HOST=capsa"];

fn apply_patch(src: &Path, work: &Path, patch: &Part) -> Result<(), Error> {
    let file = work.join(&patch.name);
    fs::write(&file, &patch.data)?;
    run(
        &format!("patch {}", patch.name),
        Command::new("patch")
            .args(["-p1", "--batch", "--forward", "--quiet", "-i"])
            .arg(&file)
            .current_dir(src),
    )?;
    Ok(())
}

/// The base configuration with the fragments over it, then the check
/// that each of their options is in the result. The x86_64 guest starts
/// from `allnoconfig` (the fragments as `KCONFIG_ALLCONFIG`: nothing is on
/// unless asked for); User-Mode Linux from `make ARCH=um defconfig`, the
/// fragments appended (later lines win) and `olddefconfig`, as its
/// fragments were written for (kernel/README.md).
fn configure(recipe: &Recipe, src: &Path, out: &Path) -> Result<(), Error> {
    let merged_text = recipe.merged_config();
    let merged = out.join("capsa.config");
    fs::write(&merged, &merged_text)?;
    let dot = out.join(".config");
    match recipe.arch {
        Arch::X86_64 => {
            run(
                "make allnoconfig",
                make(recipe.arch, src, out)
                    .arg(format!("KCONFIG_ALLCONFIG={}", merged.display()))
                    .arg("allnoconfig"),
            )?;
        }
        Arch::Um => {
            run(
                "make defconfig",
                make(recipe.arch, src, out).arg("defconfig"),
            )?;
            let mut base = fs::read_to_string(&dot)?;
            base.push_str(&merged_text);
            fs::write(&dot, base)?;
            run(
                "make olddefconfig",
                make(recipe.arch, src, out).arg("olddefconfig"),
            )?;
        }
    }
    let config = fs::read_to_string(&dot)?;
    let missing = missing_options(&merged_text, &config);
    if !missing.is_empty() {
        return Err(Error::ConfigNotApplied {
            arch: recipe.arch.dir().into(),
            missing: missing.join(", "),
        });
    }
    Ok(())
}

/// `nice -n 10 make -jN TARGET`, its output in `log`; every 30 s the
/// number of files compiled so far goes to `progress`.
fn compile(
    arch: Arch,
    src: &Path,
    out: &Path,
    local: &str,
    log: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), Error> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    progress(&format!(
        "compiling (make -j{jobs} {}, log in {})",
        arch.target(),
        log.display()
    ));
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "make", "-C"])
        .arg(src)
        .arg(format!("O={}", out.display()))
        .args(arch.make_vars())
        .args(BUILD_IDENTITY)
        .arg(format!("-j{jobs}"))
        .arg(local)
        .arg(arch.target())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn = |source| Error::Spawn {
        tool: "make".into(),
        source,
    };
    let mut log_file = fs::File::create(log)?;
    let mut child = cmd.spawn().map_err(spawn)?;
    let stderr = child.stderr.take().expect("piped stderr");
    let stdout = child.stdout.take().expect("piped stdout");
    // stderr is kept whole (warnings, the error) and appended to the log.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut compiled = 0usize;
    let mut last_note = Instant::now();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let _ = writeln!(log_file, "{line}");
        if line.trim_start().starts_with("CC ") {
            compiled += 1;
        }
        if last_note.elapsed() >= Duration::from_secs(30) {
            last_note = Instant::now();
            progress(&format!("compiling: {compiled} files so far"));
        }
    }
    let status = child.wait().map_err(spawn)?;
    let errors = errors.join().unwrap_or_default();
    let _ = log_file.write_all(errors.as_bytes());
    if !status.success() {
        let tail: Vec<&str> = errors.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Tool {
            tool: format!("make {} (log {})", arch.target(), log.display()),
            stderr: tail.join("\n"),
        });
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp)?;
    Ok(fs::rename(&tmp, to)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe {
            arch: Arch::X86_64,
            fragments: vec![Part {
                name: "00-base.conf".into(),
                data: b"CONFIG_A=y\n".to_vec(),
            }],
            patches: Vec::new(),
        }
    }

    /// A finished build in the cache is used as is: nothing is fetched
    /// nor compiled (the build would need apt and minutes otherwise).
    #[test]
    fn a_finished_build_is_taken_from_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let r = recipe();
        let dir = build_dir(cache.path(), &r, &r.id());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(dir.join(CONFIG_FILE), b"CONFIG_A=y\n").unwrap();
        assert!(
            cached(Arch::X86_64, &r.id(), &dir).is_none(),
            "no release yet"
        );
        std::fs::write(dir.join(RELEASE_FILE), b"6.12.118-capsa-x\n").unwrap();
        let notes = std::cell::RefCell::new(Vec::new());
        let built = build(&r, cache.path(), &|n| {
            notes.borrow_mut().push(n.to_string())
        })
        .unwrap();
        assert!(built.cached);
        assert_eq!(built.release, "6.12.118-capsa-x");
        assert_eq!(built.image, dir.join("vmlinux"));
        assert_eq!(
            notes.borrow()[0],
            format!(
                "the x86_64 guest kernel: cached build {} ({})",
                short_id(&r.id()),
                dir.join("vmlinux").display()
            )
        );

        // A changed fragment is another build: not in the cache.
        let mut changed = recipe();
        changed.fragments[0].data = b"CONFIG_A=y\nCONFIG_B=y\n".to_vec();
        let other = build_dir(cache.path(), &changed, &changed.id());
        assert_ne!(other, dir);
        assert!(cached(Arch::X86_64, &changed.id(), &other).is_none());
    }

    #[test]
    fn no_fragments_no_build() {
        let cache = tempfile::tempdir().unwrap();
        let mut r = recipe();
        r.arch = Arch::Um;
        r.fragments.clear();
        let err = build(&r, cache.path(), &|_| ()).unwrap_err().to_string();
        assert!(err.contains("kernel/um"), "{err}");
    }
}

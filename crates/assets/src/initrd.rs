//! The initrd: an LZ4-compressed (legacy format) cpio "newc" archive with the agent as
//! `/init`, the modules it loads and their list, and optionally busybox as
//! `/bin/busybox` with `/bin/sh` linked to it (the debug console's shell). Entries are sorted and
//! carry fixed owners and times, so the bytes depend only on the inputs.

use fs_err as fs;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::Error;

/// A module file for the initrd.
pub struct Module {
    /// Path under `/lib/modules/<version>/`, ending in `.ko`.
    pub path: String,
    pub data: Vec<u8>,
}

/// Where the agent finds the modules to load, one path per line relative to
/// `/lib/modules/<version>/`, in load order.
pub const MODULES_LOAD: &str = "etc/capsa/modules.load";

/// The agent's default policy (allow-all; capsa_protocols::policy): where
/// the agent reads it at boot, relative to `/`.
pub fn default_policy_path() -> &'static str {
    capsa_protocols::policy::DEFAULT_POLICY_PATH.trim_start_matches('/')
}

enum Node<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
    CharDev { major: u32, minor: u32 },
}

/// Where the shell goes, and its link.
pub const BUSYBOX: &str = "bin/busybox";
pub const SH: &str = "bin/sh";

/// Builds the compressed initrd.
pub fn build(
    agent: &[u8],
    version: &str,
    modules: &[Module],
    busybox: Option<&[u8]>,
) -> Result<Vec<u8>, Error> {
    let load: String = modules.iter().map(|m| format!("{}\n", m.path)).collect();
    let moddir = format!("lib/modules/{version}");
    let mut tree = Tree::default();
    for dir in ["dev", "etc/capsa", "proc", "run", "sys", &moddir] {
        tree.add(dir.to_string(), 0o755, Node::Dir);
    }
    tree.add("tmp".into(), 0o1777, Node::Dir);
    tree.add(
        "dev/console".into(),
        0o600,
        Node::CharDev { major: 5, minor: 1 },
    );
    tree.add("init".into(), 0o755, Node::File(agent));
    tree.add(MODULES_LOAD.into(), 0o644, Node::File(load.as_bytes()));
    tree.add(
        default_policy_path().into(),
        0o644,
        Node::File(capsa_protocols::policy::ALLOW_ALL.as_bytes()),
    );
    for m in modules {
        tree.add(format!("{moddir}/{}", m.path), 0o644, Node::File(&m.data));
    }
    if let Some(busybox) = busybox {
        tree.add(BUSYBOX.into(), 0o755, Node::File(busybox));
        tree.add(SH.into(), 0o777, Node::Symlink("busybox"));
    }

    let mut cpio = Vec::new();
    tree.write(&mut cpio)?;
    lz4(&cpio)
}

/// `data` compressed by Debian's `lz4` in the legacy format, the one the
/// kernel unpacks (`CONFIG_RD_LZ4`), at its best ratio (`-9`).
///
/// LZ4 rather than gzip: under TCG the guest kernel inflated the gzip
/// initrd in about 0.35 s of every boot's CPU, and unpacks LZ4 for about
/// the cost of a copy, at the same size (performance.md, "Spending less
/// per start"). No crate at hand writes the legacy format (`lz4_flex`
/// writes blocks and the frame format only), so the tool does, as for the
/// modules' decompression. The legacy format has no end mark: the kernel
/// reads it to the end of the initrd, so nothing may be appended to it (an
/// extra archive goes in front).
pub fn lz4(data: &[u8]) -> Result<Vec<u8>, Error> {
    let spawn = |source| Error::Spawn {
        tool: "lz4".into(),
        source,
    };
    let mut child = Command::new("lz4")
        .args(["-l", "-9", "-q", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Written from a thread: lz4 writes its output while it reads.
    let out = std::thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.write_all(data));
        let out = child.wait_with_output();
        (writer.join(), out)
    });
    let (written, out) = out;
    let out = out.map_err(spawn)?;
    // lz4's own failure first: a write that failed because lz4 exited
    // early (EPIPE) says less than lz4's message.
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "lz4".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    match written {
        Ok(Ok(())) => Ok(out.stdout),
        Ok(Err(e)) => Err(spawn(e)),
        Err(_) => Err(spawn(std::io::Error::other("writer thread panicked"))),
    }
}

/// The cpio archive inside an initrd written by [`build`] (`lz4 -d`).
pub fn unpack_lz4(initrd: &[u8]) -> Result<Vec<u8>, Error> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("initrd.lz4");
    fs::write(&file, initrd)?;
    crate::files::run(
        "lz4",
        Command::new("lz4").args(["-d", "-q", "-c"]).arg(&file),
    )
}

/// Entries by path; a path's parents are added as directories.
#[derive(Default)]
struct Tree<'a> {
    entries: BTreeMap<String, (u32, Node<'a>)>,
}

impl<'a> Tree<'a> {
    fn add(&mut self, path: String, mode: u32, node: Node<'a>) {
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries
                .entry(p.to_string())
                .or_insert((0o755, Node::Dir));
            parent = p;
        }
        self.entries.insert(path, (mode, node));
    }

    /// Writes the entries in path order (a directory before its content).
    fn write<W: Write>(&self, out: &mut W) -> Result<(), Error> {
        let io = Error::WriteInitrd;
        for (ino, (path, (mode, node))) in self.entries.iter().enumerate() {
            let (kind, nlink, data, rdev) = match node {
                Node::Dir => (cpio::newc::ModeFileType::Directory, 2, &[][..], (0, 0)),
                Node::File(data) => (cpio::newc::ModeFileType::Regular, 1, *data, (0, 0)),
                Node::Symlink(target) => (
                    cpio::newc::ModeFileType::Symlink,
                    1,
                    target.as_bytes(),
                    (0, 0),
                ),
                Node::CharDev { major, minor } => {
                    (cpio::newc::ModeFileType::Char, 1, &[][..], (*major, *minor))
                }
            };
            let size = u32::try_from(data.len()).map_err(|_| Error::TooLarge(path.clone()))?;
            let mut w = cpio::NewcBuilder::new(path)
                .ino(ino as u32 + 1)
                .mode(*mode)
                .set_mode_file_type(kind)
                .nlink(nlink)
                .rdev_major(rdev.0)
                .rdev_minor(rdev.1)
                .write(&mut *out, size);
            w.write_all(data).map_err(io)?;
            w.finish().map_err(io)?;
        }
        cpio::newc::trailer(out).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct Item {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        mtime: u32,
        data: Vec<u8>,
    }

    /// Parses an archive back with the `cpio` crate's reader.
    fn read_back(initrd: &[u8]) -> Vec<Item> {
        let cpio = unpack_lz4(initrd).unwrap();
        let mut rest = &cpio[..];
        let mut items = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                return items;
            }
            let e = r.entry();
            let mut item = Item {
                name: e.name().to_string(),
                mode: e.mode(),
                rdev: (e.rdev_major(), e.rdev_minor()),
                mtime: e.mtime(),
                data: Vec::new(),
            };
            r.read_to_end(&mut item.data).unwrap();
            items.push(item);
            rest = r.finish().unwrap();
        }
    }

    fn sample() -> Vec<u8> {
        let modules = [
            Module {
                path: "kernel/drivers/virtio/virtio_ring.ko".into(),
                data: b"ring".to_vec(),
            },
            Module {
                path: "kernel/fs/fuse/fuse.ko".into(),
                data: b"fuse!".to_vec(),
            },
        ];
        build(b"#!agent\n", "6.1.0-9-test", &modules, Some(b"busybox!")).unwrap()
    }

    #[test]
    fn holds_init_modules_and_their_list() {
        let items = read_back(&sample());
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries are sorted");
        for dir in ["dev", "etc", "etc/capsa", "proc", "run", "sys", "tmp"] {
            let i = items.iter().find(|i| i.name == dir).expect(dir);
            assert_eq!(i.mode & 0o170000, 0o040000, "{dir} is a directory");
        }
        let get = |n: &str| items.iter().find(|i| i.name == n).unwrap();
        assert_eq!(get("lib/modules/6.1.0-9-test").mode, 0o040755);
        assert_eq!(get("tmp").mode, 0o041777);
        assert_eq!(get("init").mode, 0o100755);
        assert_eq!(get("init").data, b"#!agent\n");
        assert_eq!(get("dev/console").mode, 0o020600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(
            String::from_utf8(get(MODULES_LOAD).data.clone()).unwrap(),
            "kernel/drivers/virtio/virtio_ring.ko\nkernel/fs/fuse/fuse.ko\n"
        );
        assert_eq!(
            get("lib/modules/6.1.0-9-test/kernel/fs/fuse/fuse.ko").data,
            b"fuse!"
        );
        assert_eq!(
            get("etc/capsa/default-policy.rego").data,
            capsa_protocols::policy::ALLOW_ALL.as_bytes(),
            "the default policy is allow-all"
        );
        assert!(items.iter().all(|i| i.mtime == 0));
        assert_eq!(get(BUSYBOX).mode, 0o100755);
        assert_eq!(get(BUSYBOX).data, b"busybox!");
        assert_eq!(get(SH).mode, 0o120777);
        assert_eq!(get(SH).data, b"busybox");
        let bare = build(b"a", "v", &[], None).unwrap();
        assert!(read_back(&bare).iter().all(|i| !i.name.starts_with("bin")));
    }

    #[test]
    fn output_is_reproducible() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn gnu_cpio_lists_the_same_entries() {
        let cpio = unpack_lz4(&sample()).unwrap();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio (Debian package cpio)");
        child.stdin.take().unwrap().write_all(&cpio).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let line = |name: &str| {
            listing
                .lines()
                .find(|l| l.ends_with(&format!(" {name}")))
                .unwrap_or_else(|| panic!("{name} not in {listing}"))
                .to_string()
        };
        assert!(line("init").starts_with("-rwxr-xr-x"));
        assert!(line("bin/sh -> busybox").starts_with("lrwxrwxrwx"));
        assert!(line("dev/console").starts_with("crw-------"));
        assert!(line("dev/console").contains(" 5,"));
        assert!(line("lib/modules/6.1.0-9-test/kernel/fs/fuse/fuse.ko").starts_with("-rw-r--r--"));
        assert_eq!(listing.lines().count(), read_back(&sample()).len());
    }
}

//! The guest root filesystem image, in Kata's DAX layout, and the small
//! initrd that reaches it.
//!
//! ```text
//! 0        4 KiB          2 MiB     3 MiB                     end
//! | MBR #1 | pfn info ... | MBR #2 ..| ext4 (the root, read-only) |
//! ```
//!
//! - As a disk (virtio-blk, `disable_image_nvdimm`), the guest reads MBR #1:
//!   partition 1 starts at 3 MiB (`/dev/vda1`).
//! - As an NVDIMM, the guest's label-less namespace holds an NVDIMM "pfn"
//!   info block at 4 KiB (what Kata's `nsdax` tool writes): the kernel then
//!   maps the namespace with struct pages (in guest RAM, `PFN_MODE_RAM`) and
//!   `/dev/pmem0` starts at the block's data offset, 2 MiB, where MBR #2
//!   puts partition 1 at 1 MiB: the same ext4 at the same file offset
//!   (`/dev/pmem0p1`), mountable with `dax`.
//!
//! The image is sized to a multiple of 128 MiB (a guest memory block, as
//! Kata does): the NVDIMM sits in the hot-plug memory area, and DIMMs
//! plugged after it stay block-aligned.
//!
//! The filesystem is made by `mkfs.ext4 -d` (Debian's `e2fsprogs`) straight
//! into the file at its offset: no loop device, no mount.

use fs_err as fs;
use std::path::Path;
use std::process::Command;

use crate::initrd::{default_policy_path, Module, BUSYBOX, MODULES_LOAD, SH};
use crate::Error;

const MIB: u64 = 1 << 20;
/// The NVDIMM metadata area (MBR #1 and the pfn info block).
pub const DAX_HEADER: u64 = 2 * MIB;
/// Where the partition starts inside the pmem device (after MBR #2).
const PART_START: u64 = MIB;
/// Where the filesystem starts in the file.
pub const FS_OFFSET: u64 = DAX_HEADER + PART_START;
/// Images are whole guest memory blocks.
const ALIGN: u64 = 128 * MIB;
/// Where the kernel reads the pfn info block in the namespace.
const PFN_INFO_OFFSET: usize = 4096;
const PFN_INFO_SIZE: usize = 4096;
/// `PFN_MODE_RAM`: the struct pages of the namespace live in guest RAM.
const PFN_MODE_RAM: u32 = 1;
/// The filesystem's UUID and hash seed: fixed, so the bytes depend only on
/// the content.
const FS_UUID: &str = "6361b7d8-6361-4170-8361-636170736131";

/// The modules the boot initrd loads to reach the root: the NVDIMM (ACPI
/// NFIT, libnvdimm, the pmem block driver with its pfn support) and, for
/// `disable_image_nvdimm`, virtio-blk on PCI. Their dependencies come first.
pub const BOOT_MODULES: &[&str] = &["nfit", "nd_pmem", "virtio_pci", "virtio_blk"];

/// `/init` of the boot initrd (busybox's shell): loads the modules, waits
/// (bounded: 60 s, as TCG guests on a loaded host probe slowly) for the
/// root device of the kernel command line, mounts it
/// read-only with its `rootflags`, and hands PID 1 to the image's `/init`
/// (the agent). Any failure ends init, and the kernel panics (`panic=1`:
/// the VM stops) with the reason on the console.
pub const BOOT_INIT: &str = r#"#!/bin/sh
# capsa boot initrd: reach the root image, then run its /init (the agent).
b=/bin/busybox
fail() { echo "capsa boot initrd: $*" > /dev/console; exit 1; }
$b mount -t devtmpfs devtmpfs /dev || fail "cannot mount /dev"
$b mount -t proc proc /proc || fail "cannot mount /proc"
v=$($b uname -r)
for m in $($b cat /etc/capsa/modules.load); do
  $b insmod "/lib/modules/$v/$m" 2> /dev/null
done
root= flags= fstype=ext4
for p in $($b cat /proc/cmdline); do
  case "$p" in
    root=*) root=${p#root=} ;;
    rootflags=*) flags=${p#rootflags=} ;;
    rootfstype=*) fstype=${p#rootfstype=} ;;
  esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ $i -le 6000 ] || fail "$root did not appear within 60 s"
  $b usleep 10000
done
$b mkdir -p /newroot
$b mount -t "$fstype" -o "ro${flags:+,$flags}" "$root" /newroot || fail "cannot mount $root ($fstype, $flags)"
$b umount /proc
# /dev goes along: the agent's first words (a failed boot) reach the console.
$b mount --move /dev /newroot/dev
exec $b switch_root /newroot /init
"#;

/// Writes the image of the guest root to `out`: the agent as `/init`, the
/// modules it loads at boot (listed in `/etc/capsa/modules.load`), busybox
/// as `/bin/sh` if given, and the mount points of the agent's base
/// filesystems.
pub fn build(
    agent: &[u8],
    version: &str,
    modules: &[Module],
    busybox: Option<&[u8]>,
    out: &Path,
) -> Result<(), Error> {
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("root");
    let content = populate(&root, agent, version, modules, busybox)?;
    // ext4 metadata, the journal and room for the inode tables: a quarter
    // more than the content, and 16 MiB.
    let fs_min = content + content / 4 + 16 * MIB;
    let total = (FS_OFFSET + fs_min).div_ceil(ALIGN) * ALIGN;
    let fs_size = total - FS_OFFSET;

    let tmp = out.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    let written =
        write_image(&root, &tmp, total, fs_size).and_then(|()| Ok(fs::rename(&tmp, out)?));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The whole image of `total` bytes at `path`: the filesystem of `root`
/// (`fs_size` bytes), both tables and the pfn info block.
fn write_image(root: &Path, path: &Path, total: u64, fs_size: u64) -> Result<(), Error> {
    let file = fs::File::create(path)?;
    file.set_len(total)?;
    drop(file);
    mkfs(root, path, fs_size)?;
    let mut header = vec![0u8; (DAX_HEADER + 512) as usize];
    header[..512].copy_from_slice(&mbr(FS_OFFSET, fs_size));
    header[PFN_INFO_OFFSET..PFN_INFO_OFFSET + PFN_INFO_SIZE]
        .copy_from_slice(&pfn_info(total - DAX_HEADER));
    header[DAX_HEADER as usize..].copy_from_slice(&mbr(PART_START, fs_size));
    write_at(path, 0, &header)
}

/// Lays out the root tree in `root`; returns the bytes of its files.
fn populate(
    root: &Path,
    agent: &[u8],
    version: &str,
    modules: &[Module],
    busybox: Option<&[u8]>,
) -> Result<u64, Error> {
    use std::os::unix::fs::PermissionsExt;
    let moddir = format!("lib/modules/{version}");
    // `.capsa-root`: where the agent bind-mounts the root before moving it
    // onto `/` (`capsa_agent::init::leave_rootfs`, made for the initramfs);
    // on the read-only image it cannot create it.
    for dir in [
        ".capsa-root",
        "dev",
        "etc/capsa",
        "proc",
        "run",
        "sys",
        "tmp",
        &moddir,
    ] {
        mkdir(&root.join(dir))?;
    }
    let set_mode =
        |p: &Path, mode: u32| fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    set_mode(&root.join("tmp"), 0o1777)?;
    let mut bytes = 0u64;
    let mut file = |rel: &str, data: &[u8], mode: u32| -> Result<(), Error> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            mkdir(parent)?;
        }
        fs::write(&p, data)?;
        set_mode(&p, mode)?;
        bytes += data.len() as u64;
        Ok(())
    };
    file("init", agent, 0o755)?;
    let load: String = modules.iter().map(|m| format!("{}\n", m.path)).collect();
    file(MODULES_LOAD, load.as_bytes(), 0o644)?;
    file(
        default_policy_path(),
        capsa_protocols::policy::ALLOW_ALL.as_bytes(),
        0o644,
    )?;
    for m in modules {
        file(&format!("{moddir}/{}", m.path), &m.data, 0o644)?;
    }
    if let Some(busybox) = busybox {
        file(BUSYBOX, busybox, 0o755)?;
        let sh = root.join(SH);
        fs::os::unix::fs::symlink("busybox", &sh)?;
    }
    Ok(bytes)
}

fn mkdir(p: &Path) -> Result<(), Error> {
    Ok(fs::create_dir_all(p)?)
}

/// `mkfs.ext4` of `root` into `image` at [`FS_OFFSET`], `size` bytes, with
/// 4 KiB blocks (DAX needs the page size), files owned by root, fixed
/// UUID, hash seed and times.
fn mkfs(root: &Path, image: &Path, size: u64) -> Result<(), Error> {
    let tool = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("mkfs.ext4");
    let out = Command::new(tool)
        .args(["-q", "-F", "-b", "4096", "-L", "capsa-root", "-U", FS_UUID])
        .arg("-E")
        .arg(format!(
            "offset={FS_OFFSET},root_owner=0:0,hash_seed={FS_UUID}"
        ))
        .arg("-d")
        .arg(root)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        .env("E2FSPROGS_FAKE_TIME", "1")
        .output()
        .map_err(|source| Error::Spawn {
            tool: format!("{tool} (Debian package e2fsprogs)"),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: tool.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn write_at(path: &Path, offset: u64, data: &[u8]) -> Result<(), Error> {
    use fs::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(data, offset)?;
    Ok(f.sync_all()?)
}

/// A DOS partition table with one Linux partition of `size` bytes at
/// `start` (both multiples of 512).
pub fn mbr(start: u64, size: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    // Not bootable; CHS fields 0xfffffe ("use the LBA fields").
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = 0x83;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&((start / 512) as u32).to_le_bytes());
    e[12..16].copy_from_slice(&((size / 512) as u32).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// The NVDIMM pfn info block (the kernel's `struct nd_pfn_sb`, version
/// 1.4) of a namespace of `size` bytes: data at [`DAX_HEADER`], aligned to
/// 2 MiB, struct pages in RAM. The parent UUID stays zero: QEMU's NVDIMM
/// without a label area is a label-less namespace, whose UUID is zero.
pub fn pfn_info(size: u64) -> [u8; PFN_INFO_SIZE] {
    let mut b = [0u8; PFN_INFO_SIZE];
    b[0..16].copy_from_slice(b"NVDIMM_PFN_INFO\0");
    // uuid (16..32): any, fixed for reproducible bytes.
    b[16..32].copy_from_slice(b"capsa-dax-pfn-01");
    // parent_uuid (32..48) zero, flags (48..52) zero.
    b[52..54].copy_from_slice(&1u16.to_le_bytes()); // version_major
    b[54..56].copy_from_slice(&4u16.to_le_bytes()); // version_minor
    b[56..64].copy_from_slice(&DAX_HEADER.to_le_bytes()); // dataoff
    b[64..72].copy_from_slice(&((size - DAX_HEADER) / 4096).to_le_bytes()); // npfns
    b[72..76].copy_from_slice(&PFN_MODE_RAM.to_le_bytes()); // mode
                                                            // start_pad (76..80) and end_trunc (80..84) zero: sizes are aligned.
    b[84..88].copy_from_slice(&(DAX_HEADER as u32).to_le_bytes()); // align
    b[88..92].copy_from_slice(&4096u32.to_le_bytes()); // page_size
    b[92..94].copy_from_slice(&64u16.to_le_bytes()); // page_struct_size
    let sum = fletcher64(&b);
    b[PFN_INFO_SIZE - 8..].copy_from_slice(&sum.to_le_bytes());
    b
}

/// The kernel's `nd_fletcher64` over little-endian 32-bit words (with the
/// checksum field zero).
fn fletcher64(data: &[u8]) -> u64 {
    let (mut lo, mut hi) = (0u32, 0u64);
    for w in data.chunks_exact(4) {
        lo = lo.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        hi = hi.wrapping_add(u64::from(lo));
    }
    (hi << 32) | u64::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfn_info_block_is_what_the_kernel_validates() {
        let b = pfn_info(128 * MIB);
        assert_eq!(&b[..16], b"NVDIMM_PFN_INFO\0");
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(u64_at(56), 2 * MIB, "dataoff");
        assert_eq!(u64_at(64), 126 * 256, "npfns");
        // The checksum is over the block with its own field zero.
        let mut zeroed = b;
        zeroed[4088..].fill(0);
        assert_eq!(u64_at(4088), fletcher64(&zeroed));
        assert_ne!(u64_at(4088), 0);
        assert!(b[94..4088].iter().all(|&x| x == 0), "padding is zero");
    }

    #[test]
    fn fletcher64_matches_the_kernels_definition() {
        // Words 1, 2, 3: lo = 6, hi = 1 + 3 + 6.
        let data = [1u32, 2, 3]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect::<Vec<_>>();
        assert_eq!(fletcher64(&data), (10 << 32) | 6);
    }

    #[test]
    fn mbr_has_one_linux_partition() {
        let m = mbr(3 * MIB, 125 * MIB);
        assert_eq!(&m[510..], [0x55, 0xaa]);
        assert_eq!(m[446 + 4], 0x83);
        assert_eq!(
            u32::from_le_bytes(m[454..458].try_into().unwrap()),
            6144,
            "start LBA"
        );
        assert_eq!(
            u32::from_le_bytes(m[458..462].try_into().unwrap()),
            125 * 2048
        );
        assert!(m[462..510].iter().all(|&x| x == 0), "one entry only");
    }

    /// A real image: both partition tables point at the same ext4, which
    /// e2fsprogs reads back with the files in it.
    #[test]
    fn image_holds_an_ext4_root_behind_both_tables() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("root.img");
        let modules = [Module {
            path: "kernel/fs/x.ko".into(),
            data: b"module".to_vec(),
        }];
        build(b"#!agent", "6.1.0-test", &modules, Some(b"bb"), &out).unwrap();
        let img = std::fs::read(&out).unwrap();
        assert_eq!(img.len() as u64 % ALIGN, 0);
        let lba = |m: &[u8]| u64::from(u32::from_le_bytes(m[454..458].try_into().unwrap())) * 512;
        assert_eq!(lba(&img[..512]), FS_OFFSET);
        assert_eq!(DAX_HEADER + lba(&img[DAX_HEADER as usize..]), FS_OFFSET);
        assert_eq!(&img[4096..4112], b"NVDIMM_PFN_INFO\0");
        // The ext4 superblock magic, 1080 bytes into the filesystem.
        let sb = FS_OFFSET as usize + 1080;
        assert_eq!(&img[sb..sb + 2], [0x53, 0xef]);

        let fs = format!("{}?offset={FS_OFFSET}", out.display());
        let cat = |p: &str| {
            let o = Command::new("/usr/sbin/debugfs")
                .args(["-R", &format!("cat {p}"), &fs])
                .output()
                .expect("debugfs (e2fsprogs)");
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        assert_eq!(cat("/init"), "#!agent");
        assert_eq!(cat("/etc/capsa/modules.load"), "kernel/fs/x.ko\n");
        assert_eq!(cat("/lib/modules/6.1.0-test/kernel/fs/x.ko"), "module");
        assert_eq!(cat("/bin/busybox"), "bb");
        assert_eq!(
            cat("/etc/capsa/default-policy.rego"),
            capsa_protocols::policy::ALLOW_ALL
        );
    }
}

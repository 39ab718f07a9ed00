//! The filesystem a volume holds, from its superblock's magic (the first
//! bytes of an image a user gave: read as untrusted, bounds-checked).

/// How much of a volume [`filesystem_of`] needs (the ext superblock ends
/// at 2048).
pub const LEN: usize = 2048;

/// The ext superblock starts 1024 bytes in.
const EXT_SB: usize = 1024;
/// `s_magic` (little-endian 0xEF53).
const EXT_MAGIC_AT: usize = EXT_SB + 0x38;
const EXT_MAGIC: u16 = 0xef53;
/// `s_feature_compat`, `s_feature_incompat`, `s_feature_ro_compat`.
const EXT_COMPAT_AT: usize = EXT_SB + 0x5c;
const EXT_INCOMPAT_AT: usize = EXT_SB + 0x60;
const EXT_RO_COMPAT_AT: usize = EXT_SB + 0x64;
/// `COMPAT_HAS_JOURNAL`: ext3 rather than ext2.
const EXT_HAS_JOURNAL: u32 = 0x4;
/// Incompatible features ext3 does not know (all but `FILETYPE`,
/// `RECOVER`, `JOURNAL_DEV`, `META_BG`): their presence makes it ext4.
const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x8 | 0x10;
/// Read-only features ext3 knows (`SPARSE_SUPER`, `LARGE_FILE`,
/// `BTREE_DIR`); any other makes it ext4.
const EXT3_RO_COMPAT: u32 = 0x1 | 0x2 | 0x4;
/// The xfs superblock's `sb_magicnum`, at 0.
const XFS_MAGIC: &[u8] = b"XFSB";

/// `ext4`, `ext3`, `ext2` or `xfs` from the first bytes of a volume
/// (at least [`LEN`] for ext), `None` if none of them.
pub fn filesystem_of(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(XFS_MAGIC) {
        return Some("xfs");
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
    if u16_at(EXT_MAGIC_AT)? != EXT_MAGIC {
        return None;
    }
    let incompat = u32_at(EXT_INCOMPAT_AT)?;
    let ro_compat = u32_at(EXT_RO_COMPAT_AT)?;
    if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
        return Some("ext4");
    }
    if u32_at(EXT_COMPAT_AT)? & EXT_HAS_JOURNAL != 0 {
        return Some("ext3");
    }
    Some("ext2")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(compat: u32, incompat: u32, ro_compat: u32) -> Vec<u8> {
        let mut sb = vec![0u8; LEN];
        sb[EXT_MAGIC_AT..EXT_MAGIC_AT + 2].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        sb[EXT_COMPAT_AT..EXT_COMPAT_AT + 4].copy_from_slice(&compat.to_le_bytes());
        sb[EXT_INCOMPAT_AT..EXT_INCOMPAT_AT + 4].copy_from_slice(&incompat.to_le_bytes());
        sb[EXT_RO_COMPAT_AT..EXT_RO_COMPAT_AT + 4].copy_from_slice(&ro_compat.to_le_bytes());
        sb
    }

    #[test]
    fn tells_the_ext_generations_apart() {
        assert_eq!(filesystem_of(&ext(0, 0x2, 0x1 | 0x2)), Some("ext2"));
        assert_eq!(filesystem_of(&ext(EXT_HAS_JOURNAL, 0x2, 0x1)), Some("ext3"));
        // extents, 64bit, flex_bg; metadata_csum
        assert_eq!(
            filesystem_of(&ext(EXT_HAS_JOURNAL, 0x2c2, 0x1)),
            Some("ext4")
        );
        assert_eq!(
            filesystem_of(&ext(EXT_HAS_JOURNAL, 0x2, 0x400)),
            Some("ext4")
        );
    }

    /// The fuzz seeds are the first 2 KiB of volumes made by mkfs.ext2,
    /// mkfs.ext3 and mkfs.ext4 (e2fsprogs 1.47).
    #[test]
    fn reads_what_mkfs_wrote() {
        let seed = |name: &str| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            std::fs::read(root.join("fuzz/corpus/block_superblock").join(name)).unwrap()
        };
        for fs in ["ext2", "ext3", "ext4"] {
            assert_eq!(filesystem_of(&seed(fs)), Some(fs));
        }
        assert_eq!(filesystem_of(&seed("raw")), None);
    }

    #[test]
    fn xfs_raw_and_short_input() {
        assert_eq!(filesystem_of(b"XFSB\0\0\x10\0"), Some("xfs"));
        assert_eq!(filesystem_of(&vec![0u8; LEN]), None);
        assert_eq!(filesystem_of(&[]), None);
        // The magic present but the volume cut before the feature flags.
        let sb = ext(0, 0, 0);
        assert_eq!(filesystem_of(&sb[..EXT_MAGIC_AT + 2]), None);
    }
}

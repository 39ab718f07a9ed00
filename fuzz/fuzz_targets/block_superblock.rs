//! The superblock magic of a block source (`capsa_runtime::resource::
//! block_source::filesystem_of`): the first bytes of an image or device a
//! user hands to `-v` or `--rootfs-image`, which decide whether it is
//! mounted as a filesystem in the guest or passed on raw.
#![no_main]

use capsa_runtime::resource::block_source::filesystem_of;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match filesystem_of(data) {
        None => {}
        Some("xfs") => assert!(data.starts_with(b"XFSB")),
        Some("ext2" | "ext3" | "ext4") => {
            assert_eq!(data.get(1080..1082), Some(&[0x53, 0xef][..]), "ext magic");
            assert!(data.len() >= 1128, "ext feature flags read past the input");
        }
        Some(other) => panic!("unknown filesystem {other}"),
    }
});

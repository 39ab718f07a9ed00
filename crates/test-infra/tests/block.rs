//! The block helpers against the real tools: an ext4 image made from a
//! directory is read back without mounting it, and a loop device is
//! detached when its guard goes.

use capsa_test_infra::block::{loops_below, HostMount, ImageFile, LoopDevice};

#[test]
fn an_ext4_image_is_populated_read_back_and_its_loop_device_detached() {
    let dir = tempfile::Builder::new()
        .prefix("capsa-test-blk-")
        .tempdir_in("/tmp")
        .unwrap();
    let content = dir.path().join("content");
    std::fs::create_dir_all(content.join("etc")).unwrap();
    std::fs::write(content.join("etc/greeting"), b"hello block\n").unwrap();
    let image = ImageFile::ext4(dir.path(), 16, Some(&content));
    assert_eq!(image.read("/etc/greeting").unwrap(), b"hello block\n");
    let missing = image.read("/etc/missing").unwrap_err();
    assert!(missing.contains("/etc/missing"), "{missing}");

    let dev = LoopDevice::attach(image.path(), true);
    let at = dir.path().join("mnt");
    std::fs::create_dir(&at).unwrap();
    {
        let _m = HostMount::read_only(dev.path(), &at, "ext4");
        assert_eq!(
            std::fs::read(at.join("etc/greeting")).unwrap(),
            b"hello block\n"
        );
    }
    let attached = loops_below(dir.path());
    assert_eq!(attached.len(), 1, "{attached:?}");
    assert_eq!(attached[0].0, dev.path());
    drop(dev);
    assert!(loops_below(dir.path()).is_empty());
}

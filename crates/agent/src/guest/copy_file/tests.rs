use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::validate::ValidateError;

fn req(root: &Path, rel: &str, data: &[u8]) -> CopyFileRequest {
    CopyFileRequest {
        path: format!("{}/{rel}", root.display()),
        file_size: data.len() as i64,
        file_mode: 0o100640,
        dir_mode: 0o040750,
        uid: -1,
        gid: -1,
        offset: 0,
        data: data.to_vec(),
        ..Default::default()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn writes_a_file_in_chunks_and_creates_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = req(root, "a/b/f.txt", b"hello ");
    r.file_size = 11;
    copy_file(root, &r).unwrap();
    assert!(
        !root.join("a/b/f.txt").exists(),
        "not in place before complete"
    );
    assert_eq!(mode(&root.join("a")), 0o750);
    assert_eq!(mode(&root.join("a/b")), 0o750);
    r.offset = 6;
    r.data = b"world".to_vec();
    copy_file(root, &r).unwrap();
    assert_eq!(
        std::fs::read(root.join("a/b/f.txt")).unwrap(),
        b"hello world"
    );
    assert_eq!(mode(&root.join("a/b/f.txt")), 0o640);
    let names: Vec<_> = std::fs::read_dir(root.join("a/b"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left");

    // A second copy replaces the file.
    copy_file(root, &req(root, "a/b/f.txt", b"new")).unwrap();
    assert_eq!(std::fs::read(root.join("a/b/f.txt")).unwrap(), b"new");
    // An empty file.
    copy_file(root, &req(root, "empty", b"")).unwrap();
    assert_eq!(std::fs::read(root.join("empty")).unwrap(), b"");
}

#[test]
fn directories_and_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut d = req(root, "x/y", b"");
    d.file_mode = 0o040700;
    copy_file(root, &d).unwrap();
    assert!(root.join("x/y").is_dir());
    assert_eq!(mode(&root.join("x/y")), 0o700);
    let mut l = req(root, "x/link", b"y");
    l.file_mode = 0o120777;
    l.file_size = 1;
    copy_file(root, &l).unwrap();
    assert_eq!(
        std::fs::read_link(root.join("x/link")).unwrap(),
        Path::new("y")
    );
    let mut bad = req(root, "dev", b"");
    bad.file_mode = 0o020644;
    assert!(matches!(
        copy_file(root, &bad),
        Err(GuestError::FileType(_))
    ));
}

#[test]
fn symlinks_do_not_lead_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
    std::os::unix::fs::symlink("/proc/self/root", root.join("magic")).unwrap();
    for link in ["abs", "rel", "magic"] {
        let r = req(&root, &format!("{link}/f"), b"x");
        let err = copy_file(&root, &r).unwrap_err();
        assert!(
            matches!(err, GuestError::Invalid(ValidateError::Escapes { .. })),
            "{link}: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "copy file path \"{}\" escapes {} (through a symbolic link)",
                r.path,
                root.display()
            )
        );
        let r = req(&root, &format!("{link}/new/f"), b"x");
        assert!(matches!(
            copy_file(&root, &r),
            Err(GuestError::Invalid(ValidateError::Escapes { .. }))
        ));
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // A link inside the root is followed; a final link is replaced, never
    // written through.
    std::fs::create_dir(root.join("d")).unwrap();
    std::os::unix::fs::symlink("d", root.join("in")).unwrap();
    copy_file(&root, &req(&root, "in/f", b"ok")).unwrap();
    assert_eq!(std::fs::read(root.join("d/f")).unwrap(), b"ok");
    std::fs::write(outside.join("victim"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), root.join("last")).unwrap();
    copy_file(&root, &req(&root, "last", b"mine")).unwrap();
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    assert_eq!(std::fs::read(root.join("last")).unwrap(), b"mine");
    // The temporary file cannot be a planted link either.
    std::os::unix::fs::symlink(outside.join("victim"), root.join(".t.capsa-copy")).unwrap();
    let err = copy_file(&root, &req(&root, "t", b"x")).unwrap_err();
    assert!(
        matches!(err, GuestError::Invalid(ValidateError::Escapes { .. })),
        "{err}"
    );
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
}

#[test]
fn paths_outside_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let at = |p: &str| CopyFileRequest {
        path: p.into(),
        ..req(root, "x", b"")
    };
    let err = copy_file(root, &at("/etc/passwd")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "copy file path \"/etc/passwd\" is not below {}",
            root.display()
        )
    );
    let dotdot = format!("{}/a/../../etc", root.display());
    let err = copy_file(root, &at(&dotdot)).unwrap_err();
    assert!(err.to_string().contains("\"..\""), "{err}");
    assert!(matches!(
        copy_file(root, &at("relative/x")),
        Err(GuestError::Invalid(_))
    ));
    let itself = root.display().to_string();
    assert!(matches!(
        copy_file(root, &at(&itself)),
        Err(GuestError::Invalid(ValidateError::NotBelow { .. }))
    ));
    let sibling = format!("{}x/f", root.display());
    assert!(matches!(
        copy_file(root, &at(&sibling)),
        Err(GuestError::Invalid(ValidateError::NotBelow { .. }))
    ));
}

#[test]
fn sizes_are_checked_first() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = req(root, "f", b"abc");
    r.file_size = 2;
    let err = copy_file(root, &r).unwrap_err();
    assert!(matches!(err, GuestError::PastEnd { .. }), "{err}");
    r.file_size = MAX_FILE_SIZE + 1;
    assert!(matches!(
        copy_file(root, &r),
        Err(GuestError::OutOfRange { .. })
    ));
    r.file_size = 3;
    r.offset = -1;
    assert!(matches!(
        copy_file(root, &r),
        Err(GuestError::PastEnd { .. })
    ));
    r.offset = i64::MAX;
    assert!(matches!(
        copy_file(root, &r),
        Err(GuestError::PastEnd { .. })
    ));
    r.offset = 0;
    r.data = vec![0; MAX_DATA + 1];
    r.file_size = MAX_FILE_SIZE;
    assert!(matches!(
        copy_file(root, &r),
        Err(GuestError::TooLarge { .. })
    ));
    assert_eq!(
        std::fs::read_dir(root).unwrap().count(),
        0,
        "nothing written"
    );
}

//! `/proc/self/mountinfo` parsing (`capsa_runtime::resource::share::mount`), which decides
//! what is unmounted below a sandbox's state directory. Input: three
//! NUL-separated parts: mountinfo text, a directory, and a mount point put
//! in a line escaped as the kernel does, which must come back whole.
#![no_main]

use std::path::{Path, PathBuf};

use capsa_runtime::resource::share::mount;
use libfuzzer_sys::fuzz_target;

/// The kernel's escaping of a mount point (`show_mountinfo`: space, tab,
/// newline and backslash as `\ooo`).
fn escape(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let (info, dir) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mount_point = parts.next().unwrap_or("");
    let dir = Path::new(dir);
    for p in mount::parse_mounts_below(info, dir) {
        assert!(p.starts_with(dir), "{p:?} is not below {dir:?}");
    }
    let _ = mount::unescape(info);

    if !mount_point.starts_with('/') {
        return;
    }
    let line = format!(
        "36 35 98:0 / {} rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
        escape(mount_point)
    );
    let found = mount::parse_mounts_below(&line, Path::new("/"));
    assert_eq!(
        found,
        vec![PathBuf::from(mount_point)],
        "mountinfo line {line:?}"
    );
});

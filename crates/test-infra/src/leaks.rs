//! Checks that a test left nothing behind: no process, mount, loop device
//! or state.

use std::path::Path;

/// Processes whose command line contains `needle`, as `pid: cmdline`.
pub fn processes_naming(needle: &str) -> Vec<String> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            procs.push(format!("{pid}: {cmdline}"));
        }
    }
    procs
}

/// The pid of sandbox `id`'s one `helper` process (`vhost-device-vsock`,
/// `virtiofsd`): its command line names the sandbox's state directory.
pub fn helper_pid(state_dir: &Path, id: &str, helper: &str) -> i32 {
    let dir = state_dir.join(id).display().to_string();
    let pids: Vec<i32> = processes_naming(&dir)
        .iter()
        .filter(|p| p.contains(helper))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "one {helper} of {id} expected: {pids:?}");
    pids[0]
}

/// Fails if a loop device is still attached to an image file below `dir`
/// (a test's own directory).
pub fn assert_no_loop_devices(dir: &Path) {
    let loops = crate::block::loops_below(dir);
    assert!(loops.is_empty(), "loop devices left attached: {:?}", loops);
}

/// Fails if anything still refers to `state_dir`: a process whose command
/// line names it (QEMU, virtiofsd and vhost-device-vsock all get paths
/// below it), a mount below it, a loop device over a file below it, or an
/// entry in it.
pub fn assert_no_leaks(state_dir: &Path) {
    let needle = state_dir.to_string_lossy().into_owned();
    let procs = processes_naming(&needle);
    assert!(
        procs.is_empty(),
        "processes left behind:\n{}",
        procs.join("\n")
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mounts: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&needle)).collect();
    assert!(
        mounts.is_empty(),
        "mounts left behind:\n{}",
        mounts.join("\n")
    );
    assert_no_loop_devices(state_dir);
    if let Ok(entries) = std::fs::read_dir(state_dir) {
        let left: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "state left behind: {left:?}");
    }
}

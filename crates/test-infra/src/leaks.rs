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

/// The pid of sandbox `id`'s one process with `role` (`hypervisor`,
/// `shared_fs`, `vsock`), as its record lists the processes its VM owns.
pub fn vm_process_pid(state_dir: &Path, id: &str, role: &str) -> i32 {
    let path = state_dir.join(id).join("state.json");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the sandbox's record"))
            .expect("a JSON record");
    let pids: Vec<i64> = record["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["role"] == role)
        .filter_map(|p| p["pid"].as_i64())
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "one {role} process of {id} expected: {record}"
    );
    pids[0] as i32
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

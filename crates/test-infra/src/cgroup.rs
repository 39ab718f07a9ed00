//! Host cgroup facts for the tests that check where capsa puts its
//! processes (`capsa run` and the shim with `sandbox_cgroup_only`).

use std::path::PathBuf;

/// The mounted cgroup hierarchies capsa uses: every v1 one, else the v2
/// root.
pub fn hierarchies() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let of = |t: &str| -> Vec<PathBuf> {
        info.lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mount = PathBuf::from(left.split(' ').nth(4)?);
                (right.split(' ').next()? == t).then_some(mount)
            })
            .collect()
    };
    let v1 = of("cgroup");
    if v1.is_empty() {
        of("cgroup2")
    } else {
        v1
    }
}

/// `/proc/PID/cgroup`: the path of `pid` in every hierarchy capsa uses
/// (on a v1 host, the controller-less v2 line of a hybrid setup is not).
pub fn cgroups_of(pid: u32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let lines: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect();
    let v1 = lines.iter().any(|(controllers, _)| !controllers.is_empty());
    lines
        .into_iter()
        .filter(|(controllers, _)| !v1 || !controllers.is_empty())
        .map(|(_, path)| path)
        .collect()
}

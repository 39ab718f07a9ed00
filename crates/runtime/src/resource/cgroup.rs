//! The pod's host cgroup (`[runtime] sandbox_cgroup_only`, Kata's key):
//! the process that starts the sandbox (the shim, or `capsa run`'s
//! owner) moves itself into the cgroup named by the sandbox spec's
//! `linux.cgroupsPath` (see [`crate::request`]) before it starts the VM,
//! so the hypervisor, virtiofsd and the vsock daemon (its children) are born there
//! and the pod's limits cover the whole VM. The cgroup (and any ancestor) capsa had to create
//! is removed when the pod goes, once empty; one that existed is left.
//!
//! Both drivers of containerd and the kubelet are understood:
//! - cgroupfs: an absolute path (`/kubepods/burstable/pod<uid>/<id>`)
//!   below the root of every hierarchy (cgroup v1: each mounted
//!   hierarchy; v2: the unified one);
//! - systemd: `slice:prefix:name`, the transient scope `prefix-name.scope`
//!   in `slice`, which systemd creates (over D-Bus) with the shim in it.
//!
//! Before anything is created, [`check_fits`] compares the cgroup's memory
//! limit (the smallest of the cgroup's and its existing ancestors') with
//! what the VM needs, so a pod that could only be OOM-killed later fails
//! now, with the numbers.

use fs_err as fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Host memory the VM's processes use besides the guest's RAM: the hypervisor's own
/// (under TCG mostly the translation cache, ~110 MiB anonymous, plus its
/// binary), virtiofsd, the vsock daemon and the shim, measured on
/// an idle pod, ~150 MiB (docs/architecture.md, "Host cgroups and the pod's
/// overhead"), rounded up.
pub const VM_OVERHEAD_MIB: u64 = 160;

/// A cgroup v1 limit this large (the kernel's "unlimited" is
/// `PAGE_COUNTER_MAX * PAGE_SIZE`, about 2^63) means no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// How long systemd may take to put the shim into a new scope.
const SYSTEMD_LIMIT: Duration = Duration::from_secs(10);

/// How long the processes of a cgroup about to be removed may take to
/// exit.
const EMPTY_LIMIT: Duration = Duration::from_secs(5);

/// Name of the file, in the sandbox's bundle, that lists the cgroup
/// directories capsa made, for the `delete` action after the shim died.
pub const CGROUP_RECORD_FILE: &str = "capsa-pod-cgroups";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    Path { path: String, reason: &'static str },
    #[error(
        "pod cgroup {cgroup} memory limit {limit_mib} MiB ({file}) is below the VM's \
         {guest_mib} MiB guest memory + {overhead_mib} MiB overhead \
         (raise the pod's limit or the RuntimeClass overhead)"
    )]
    TooSmall {
        cgroup: String,
        file: String,
        limit_mib: u64,
        guest_mib: u64,
        overhead_mib: u64,
    },
    #[error("no cgroup hierarchy mounted (read /proc/self/mountinfo)")]
    NoHierarchy,
    /// A cgroupfs call failed; through `fs_err`, the error names the
    /// operation and the file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("systemd did not create scope {unit} in {slice}: {reason}")]
    Systemd {
        unit: String,
        slice: String,
        reason: String,
    },
}

/// A sandbox's `cgroupsPath`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPath {
    /// cgroupfs driver: the path below each hierarchy's root, as
    /// normal components.
    Cgroupfs(PathBuf),
    /// systemd driver: the scope `unit` in `slice`; `path` is where
    /// systemd puts it below each hierarchy's root.
    Systemd {
        slice: String,
        unit: String,
        path: PathBuf,
    },
}

impl CgroupPath {
    /// Decodes `raw` as containerd and runc read it: `slice:prefix:name`
    /// (no leading `/`) is systemd's, anything else a cgroupfs path (a
    /// relative one is taken from the root, as Kata does). An empty path
    /// is `/capsa_<pod>` (cgroupfs).
    pub fn parse(raw: &str, pod: &str) -> Result<Self, Error> {
        let bad = |reason| Error::Path {
            path: raw.into(),
            reason,
        };
        if raw.is_empty() {
            return Self::parse(&format!("/capsa_{pod}"), pod);
        }
        if raw.contains('\0') || raw.contains('\n') {
            return Err(bad("contains a NUL or a newline"));
        }
        let parts: Vec<&str> = raw.split(':').collect();
        if !raw.starts_with('/') && parts.len() == 3 {
            let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
            if name.is_empty() {
                return Err(bad("systemd form slice:prefix:name with an empty name"));
            }
            if name.ends_with(".slice") {
                return Err(bad(
                    "a slice as the pod's unit is not supported (a scope is)",
                ));
            }
            for part in [slice, prefix, name] {
                if part.contains('/') {
                    return Err(bad("systemd form slice:prefix:name with a '/'"));
                }
            }
            let slice = if slice.is_empty() { "-.slice" } else { slice };
            if !slice.ends_with(".slice") {
                return Err(bad("systemd slice must end in .slice"));
            }
            let unit = match (prefix.is_empty(), name.ends_with(".scope")) {
                (_, true) => name.to_string(),
                (true, false) => format!("{name}.scope"),
                (false, false) => format!("{prefix}-{name}.scope"),
            };
            let path = expand_slice(slice).ok_or_else(|| bad("malformed systemd slice name"))?;
            return Ok(Self::Systemd {
                slice: slice.into(),
                path: path.join(&unit),
                unit,
            });
        }
        let mut path = PathBuf::new();
        for c in Path::new(raw).components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => path.push(n),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(bad("'..' is not allowed"))
                }
            }
        }
        if path.as_os_str().is_empty() {
            return Err(bad("the root cgroup cannot be a pod's"));
        }
        Ok(Self::Cgroupfs(path))
    }

    /// The cgroup's path below each hierarchy's root.
    pub fn rel(&self) -> &Path {
        match self {
            Self::Cgroupfs(p) => p,
            Self::Systemd { path, .. } => path,
        }
    }

    /// The path as shown in messages (`/a/b`).
    pub fn display(&self) -> String {
        format!("/{}", self.rel().display())
    }
}

/// systemd's slice naming: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`
/// below the root; `-.slice` is the root itself.
pub fn expand_slice(slice: &str) -> Option<PathBuf> {
    let name = slice.strip_suffix(".slice")?;
    if name == "-" {
        return Some(PathBuf::new());
    }
    if name.is_empty() || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone)]
struct Hierarchy {
    mount: PathBuf,
    /// Its controllers (`cpu`, `name=systemd`), empty for v2.
    controllers: Vec<String>,
}

impl Hierarchy {
    fn v2(&self) -> bool {
        self.controllers.is_empty()
    }

    fn has(&self, controller: &str) -> bool {
        self.v2() || self.controllers.iter().any(|c| c == controller)
    }
}

/// The hierarchies the shim's cgroup is made of: every cgroup v1 mount
/// (a hybrid host's controller-less `unified` v2 mount is not used), or
/// the v2 mount on a unified host.
fn hierarchies() -> Result<Vec<Hierarchy>, Error> {
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(info)?;
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = match left.split(' ').nth(4) {
            Some(m) => PathBuf::from(m),
            None => continue,
        };
        let mut r = right.split(' ');
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
        match fstype {
            Some("cgroup") => v1.push(Hierarchy {
                mount,
                controllers: options
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
                    .filter(|o| !matches!(*o, "noprefix" | "clone_children" | "xattr"))
                    .map(String::from)
                    .collect(),
            }),
            Some("cgroup2") => v2.push(Hierarchy {
                mount,
                controllers: Vec::new(),
            }),
            _ => {}
        }
    }
    let found = if v1.is_empty() { v2 } else { v1 };
    if found.is_empty() {
        return Err(Error::NoHierarchy);
    }
    Ok(found)
}

/// This process's cgroup in hierarchy `h` (from `/proc/self/cgroup`).
fn own_cgroup(h: &Hierarchy) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (_id, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let mine: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
        let matches = if h.v2() {
            mine.is_empty()
        } else {
            !mine.is_empty()
                && mine.len() == h.controllers.len()
                && mine.iter().all(|c| h.controllers.iter().any(|hc| hc == c))
        };
        matches.then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The memory limit (bytes) in force for cgroup `rel` of hierarchy `h`:
/// the smallest of its own and its existing ancestors', with the file
/// that sets it.
fn memory_limit(h: &Hierarchy, rel: &Path) -> Option<(u64, PathBuf)> {
    let file = if h.v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for dir in rel.ancestors() {
        let f = h.mount.join(dir).join(file);
        let Some(v) = read_trimmed(&f) else { continue };
        let Ok(bytes) = v.parse::<u64>() else {
            continue; // "max"
        };
        if !h.v2() && bytes >= V1_UNLIMITED {
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| bytes < *b) {
            best = Some((bytes, f));
        }
    }
    best
}

/// The CPU limit (in CPUs) in force for cgroup `rel`: the smallest
/// quota/period of it and its existing ancestors.
fn cpu_limit(h: &Hierarchy, rel: &Path) -> Option<f64> {
    let mut best: Option<f64> = None;
    for dir in rel.ancestors() {
        let d = h.mount.join(dir);
        let cpus = if h.v2() {
            read_trimmed(&d.join("cpu.max")).and_then(|v| {
                let mut f = v.split(' ');
                let quota = f.next()?.parse::<f64>().ok()?;
                let period = f.next()?.parse::<f64>().ok()?;
                Some(quota / period)
            })
        } else {
            let quota =
                read_trimmed(&d.join("cpu.cfs_quota_us")).and_then(|v| v.parse::<f64>().ok());
            let period =
                read_trimmed(&d.join("cpu.cfs_period_us")).and_then(|v| v.parse::<f64>().ok());
            match (quota, period) {
                (Some(q), Some(p)) if q > 0.0 && p > 0.0 => Some(q / p),
                _ => None,
            }
        };
        if let Some(c) = cpus {
            if best.is_none_or(|b| c < b) {
                best = Some(c);
            }
        }
    }
    best
}

/// Fails if the memory limit of `path` (or of an existing ancestor) is
/// below `guest_mib` + [`VM_OVERHEAD_MIB`]. A CPU quota below `vcpus`
/// only slows the VM down (its vCPU threads are throttled, nothing is
/// killed): it is logged, not refused.
pub fn check_fits(path: &CgroupPath, guest_mib: u64, vcpus: u32) -> Result<(), Error> {
    let hs = hierarchies()?;
    let rel = path.rel();
    if let Some(h) = hs.iter().find(|h| h.has("memory")) {
        if let Some((limit, file)) = memory_limit(h, rel) {
            let need = (guest_mib + VM_OVERHEAD_MIB) << 20;
            if limit < need {
                return Err(Error::TooSmall {
                    cgroup: path.display(),
                    file: file.display().to_string(),
                    limit_mib: limit >> 20,
                    guest_mib,
                    overhead_mib: VM_OVERHEAD_MIB,
                });
            }
        }
    }
    if let Some(h) = hs.iter().find(|h| h.has("cpu")) {
        if let Some(cpus) = cpu_limit(h, rel) {
            if cpus < f64::from(vcpus) {
                tracing::warn!(
                    cgroup = %path.display(),
                    cpu_limit = cpus,
                    vcpus,
                    "the pod cgroup's CPU quota is below the VM's vCPUs: the VM will be throttled"
                );
            }
        }
    }
    Ok(())
}

/// The pod's cgroup, joined by this process.
#[derive(Debug)]
pub struct PodCgroup {
    path: CgroupPath,
    hierarchies: Vec<Hierarchy>,
    /// Where this process was before, per hierarchy.
    origin: Vec<Option<PathBuf>>,
    /// Directories capsa made (cgroupfs), shallowest first.
    created: Vec<PathBuf>,
    /// The systemd scope capsa had systemd make.
    created_unit: Option<String>,
    /// The bundle file listing `created`, for the `delete` action.
    record: Option<PathBuf>,
}

impl PodCgroup {
    /// Creates the cgroup `path` where it is missing and moves this
    /// process into it; what was created is listed in `record` (a bundle
    /// file) until [`PodCgroup::release`]. On failure nothing created is
    /// left.
    pub fn join(path: CgroupPath, record: Option<PathBuf>) -> Result<Self, Error> {
        Self::join_in(path, record, hierarchies()?)
    }

    fn join_in(
        path: CgroupPath,
        record: Option<PathBuf>,
        hierarchies: Vec<Hierarchy>,
    ) -> Result<Self, Error> {
        let origin = hierarchies.iter().map(own_cgroup).collect();
        let mut cg = Self {
            path,
            hierarchies,
            origin,
            created: Vec::new(),
            created_unit: None,
            record,
        };
        let joined = match cg.path.clone() {
            CgroupPath::Cgroupfs(rel) => cg.join_cgroupfs(&rel),
            CgroupPath::Systemd { slice, unit, path } => cg.join_systemd(&slice, &unit, &path),
        };
        match joined {
            Ok(()) => {
                tracing::info!(cgroup = %cg.path.display(), created = cg.created.len(), unit = ?cg.created_unit, "shim joined the pod cgroup");
                Ok(cg)
            }
            Err(e) => {
                cg.release();
                Err(e)
            }
        }
    }

    fn join_cgroupfs(&mut self, rel: &Path) -> Result<(), Error> {
        let pid = std::process::id();
        for h in self.hierarchies.clone() {
            let mut dir = h.mount.clone();
            for c in rel.components() {
                let parent = dir.clone();
                dir.push(c);
                if dir.is_dir() {
                    continue;
                }
                if h.v2() {
                    enable_controllers(&parent);
                }
                fs::create_dir(&dir)?;
                self.created.push(dir.clone());
                self.write_record();
                if h.has("cpuset") && !h.v2() {
                    // A new v1 cpuset has no CPUs nor memory nodes: no
                    // process may join it until they are set.
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        if let Some(v) = read_trimmed(&parent.join(f)) {
                            write(&dir.join(f), &v)?;
                        }
                    }
                }
            }
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Has systemd make the transient scope `unit` in `slice` with this
    /// process in it (`StartTransientUnit` with `PIDs`, `Delegate`, as
    /// runc's systemd driver does), or joins the scope if it exists.
    ///
    /// The D-Bus call is made with systemd's own client, `busctl`, rather
    /// than a D-Bus crate (`zbus`): it is one call at pod start, only on
    /// systemd hosts (where `busctl` always is), and the shim stays free
    /// of a second async runtime stack for it.
    fn join_systemd(&mut self, slice: &str, unit: &str, rel: &Path) -> Result<(), Error> {
        let exists = self.hierarchies.iter().any(|h| h.mount.join(rel).is_dir());
        if exists {
            let pid = std::process::id().to_string();
            for h in &self.hierarchies {
                let dir = h.mount.join(rel);
                if dir.is_dir() {
                    write(&dir.join("cgroup.procs"), &pid)?;
                }
            }
            return Ok(());
        }
        let failed = |reason: String| Error::Systemd {
            unit: unit.into(),
            slice: slice.into(),
            reason,
        };
        let pid = std::process::id().to_string();
        let description = format!("capsa pod {unit}");
        let out = std::process::Command::new("busctl")
            .args([
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "StartTransientUnit",
                "ssa(sv)a(sa(sv))",
                unit,
                "fail",
                "4",
                "Description",
                "s",
                &description,
                "Slice",
                "s",
                slice,
                "Delegate",
                "b",
                "true",
                "PIDs",
                "au",
                "1",
                &pid,
                "0",
            ])
            .output()
            .map_err(|e| failed(format!("run busctl: {e}")))?;
        if !out.status.success() {
            return Err(failed(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        self.created_unit = Some(unit.into());
        // systemd moves the process as the job runs: wait for it.
        let deadline = Instant::now() + SYSTEMD_LIMIT;
        let inside = |hs: &[Hierarchy]| {
            hs.iter()
                .filter(|h| h.has("name=systemd") || h.v2())
                .all(|h| own_cgroup(h).as_deref() == Some(rel))
        };
        while !inside(&self.hierarchies) {
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "the shim is not in the scope after {SYSTEMD_LIMIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn write_record(&self) {
        let Some(record) = &self.record else { return };
        let text: String = self
            .created
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        if let Err(e) = std::fs::write(record, text) {
            tracing::warn!(path = %record.display(), error = %e, "cgroup record not written");
        }
    }

    /// Moves this process back where it was and removes what capsa
    /// created, deepest first, each only once it has no process left.
    pub fn release(mut self) {
        let pid = std::process::id().to_string();
        for (h, origin) in self.hierarchies.iter().zip(&self.origin) {
            let back = origin
                .as_ref()
                .map(|o| h.mount.join(o))
                .filter(|d| d.is_dir())
                .unwrap_or_else(|| h.mount.clone());
            if let Err(e) = write(&back.join("cgroup.procs"), &pid) {
                tracing::warn!(error = %e, "shim not moved out of the pod cgroup");
            }
        }
        let created = std::mem::take(&mut self.created);
        remove_dirs(&created);
        let scope_empty = self.hierarchies.iter().all(|h| {
            read_trimmed(&h.mount.join(self.path.rel()).join("cgroup.procs"))
                .is_none_or(|p| p.is_empty())
        });
        if let Some(unit) = self.created_unit.take().filter(|_| scope_empty) {
            // An empty transient scope is stopped and removed by systemd
            // itself; a stop is asked in case it is not yet (never of a
            // scope with processes: stopping kills them).
            let _ = std::process::Command::new("busctl")
                .args([
                    "call",
                    "org.freedesktop.systemd1",
                    "/org/freedesktop/systemd1",
                    "org.freedesktop.systemd1.Manager",
                    "StopUnit",
                    "ss",
                    &unit,
                    "replace",
                ])
                .output();
        }
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
        tracing::info!(cgroup = %self.path.display(), "pod cgroup released");
    }
}

/// Removes the cgroup directories `created` (shallowest first), deepest
/// first, each only when no process is in it; the `delete` action uses
/// it on a dead shim's record. Returns those left.
pub fn remove_dirs(created: &[PathBuf]) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let deadline = Instant::now() + EMPTY_LIMIT;
    for dir in created.iter().rev() {
        if !dir.is_dir() {
            continue;
        }
        // The VM's processes were killed just before: their exits may
        // still be under way.
        let procs_file = dir.join("cgroup.procs");
        let mut procs = read_trimmed(&procs_file).unwrap_or_default();
        while !procs.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            procs = read_trimmed(&procs_file).unwrap_or_default();
        }
        if !procs.is_empty() {
            tracing::warn!(cgroup = %dir.display(), pids = %procs.replace('\n', " "), "cgroup still has processes: left");
            left.push(dir.clone());
            continue;
        }
        // A cgroup directory is removed with rmdir even though it
        // lists files (the kernel's).
        if let Err(e) = std::fs::remove_dir(dir) {
            tracing::warn!(cgroup = %dir.display(), error = %e, "cgroup not removed");
            left.push(dir.clone());
        }
    }
    left
}

/// The `delete` action's part: removes the cgroups listed in `record`
/// (written by a shim that died) and the record.
pub fn cleanup_record(record: &Path) {
    let Ok(text) = std::fs::read_to_string(record) else {
        return;
    };
    // Only directories strictly below a cgroup mount are touched.
    let mounts: Vec<PathBuf> = hierarchies()
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.mount)
        .collect();
    let dirs: Vec<PathBuf> = text
        .lines()
        .map(PathBuf::from)
        .filter(|p| mounts.iter().any(|m| p.starts_with(m) && p != m))
        .filter(|p| !p.components().any(|c| c == Component::ParentDir))
        .collect();
    let left = remove_dirs(&dirs);
    if left.is_empty() {
        let _ = std::fs::remove_file(record);
    }
}

/// On cgroup v2, makes the controllers of `parent` available to its
/// children (kubelet does so for its own cgroups); a cgroup with
/// processes cannot do so, which is left to its owner.
fn enable_controllers(parent: &Path) {
    let Some(list) = read_trimmed(&parent.join("cgroup.controllers")) else {
        return;
    };
    let enable: String = list.split_whitespace().map(|c| format!("+{c} ")).collect();
    if enable.is_empty() {
        return;
    }
    if let Err(e) = write(&parent.join("cgroup.subtree_control"), enable.trim()) {
        tracing::debug!(error = %e, "controllers not enabled");
    }
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    Ok(f.write_all(value.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths() {
        assert_eq!(
            CgroupPath::parse("/kubepods/burstable/podx/abc", "p").unwrap(),
            CgroupPath::Cgroupfs("kubepods/burstable/podx/abc".into())
        );
        assert_eq!(
            CgroupPath::parse("rel/x", "p").unwrap(),
            CgroupPath::Cgroupfs("rel/x".into())
        );
        assert_eq!(
            CgroupPath::parse("", "pod1").unwrap(),
            CgroupPath::Cgroupfs("capsa_pod1".into())
        );
        let e = CgroupPath::parse("/a/../../etc", "p").unwrap_err();
        assert!(e.to_string().contains("/a/../../etc"), "{e}");
        assert!(CgroupPath::parse("/", "p").is_err());
    }

    #[test]
    fn systemd_paths() {
        let p =
            CgroupPath::parse("kubepods-burstable-pod12.slice:cri-containerd:abc", "p").unwrap();
        assert_eq!(
            p,
            CgroupPath::Systemd {
                slice: "kubepods-burstable-pod12.slice".into(),
                unit: "cri-containerd-abc.scope".into(),
                path: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/cri-containerd-abc.scope".into(),
            }
        );
        let root = CgroupPath::parse(":capsa:x", "p").unwrap();
        assert_eq!(root.rel(), Path::new("capsa-x.scope"));
        assert!(CgroupPath::parse("system:capsa:x", "p").is_err());
        assert!(CgroupPath::parse("a--b.slice:capsa:x", "p").is_err());
        assert!(CgroupPath::parse("a.slice:capsa:", "p").is_err());
        assert!(CgroupPath::parse("a.slice:capsa:x/y", "p").is_err());
    }

    /// The cgroup v2 code path on the host's v2 hierarchy (the `unified`
    /// mount of a hybrid host has no controllers, but directories,
    /// `cgroup.procs` and the rules on removal are the same): a made
    /// cgroup is joined, left and removed; an existing parent stays.
    #[test]
    fn joins_and_leaves_a_v2_hierarchy() {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(mount) = info.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = PathBuf::from(left.split(' ').nth(4)?);
            right.starts_with("cgroup2 ").then_some(mount)
        }) else {
            eprintln!("no cgroup2 mount: nothing to test");
            return;
        };
        let h = Hierarchy {
            mount: mount.clone(),
            controllers: Vec::new(),
        };
        let before = own_cgroup(&h);
        let parent = format!("capsa-test-cg-unit-{}", std::process::id());
        std::fs::create_dir(mount.join(&parent)).expect("make the parent (root needed)");
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(self.0.join("leaf"));
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _rm = Rm(mount.join(&parent));
        let path = CgroupPath::parse(&format!("/{parent}/leaf"), "p").unwrap();
        let cg = PodCgroup::join_in(path, None, vec![h.clone()]).unwrap();
        assert_eq!(
            own_cgroup(&h),
            Some(PathBuf::from(format!("{parent}/leaf"))),
            "not in the pod cgroup"
        );
        assert_eq!(cg.created, vec![mount.join(&parent).join("leaf")]);
        cg.release();
        assert_eq!(own_cgroup(&h), before, "not back where it was");
        assert!(
            !mount.join(&parent).join("leaf").exists(),
            "made cgroup left"
        );
        assert!(
            mount.join(&parent).is_dir(),
            "a cgroup capsa did not make was removed"
        );
    }

    #[test]
    fn slices_expand() {
        assert_eq!(expand_slice("-.slice"), Some(PathBuf::new()));
        assert_eq!(
            expand_slice("a-b.slice"),
            Some(PathBuf::from("a.slice/a-b.slice"))
        );
        assert_eq!(expand_slice("a-.slice"), None);
        assert_eq!(expand_slice("a"), None);
    }
}

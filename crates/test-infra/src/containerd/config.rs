//! containerd's configuration file and the choice of snapshotter.

use std::path::Path;

/// Image reference of the pod sandbox ("pause") image: CRI's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "capsa.test/pause:1";

/// The snapshotter that works on `dir`'s filesystem: `overlayfs` if an
/// overlay mount succeeds there, else `native`.
pub fn detect_snapshotter(dir: &Path) -> &'static str {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let probe = dir.join("overlay-probe");
    let [lower, upper, work, merged] = ["l", "u", "w", "m"].map(|d| probe.join(d));
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(d).expect("create overlay probe dirs");
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let works = mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .is_ok();
    if works {
        let _ = umount2(&merged, MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&probe);
    let name = if works { "overlayfs" } else { "native" };
    eprintln!(
        "capsa-test-infra: containerd snapshotter {name} (overlay mount {} in {})",
        if works { "works" } else { "fails" },
        dir.display()
    );
    name
}

/// Paths and choices the configuration is made of.
pub struct ConfigParams<'a> {
    pub dir: &'a Path,
    pub socket: &'a Path,
    pub snapshotter: &'a str,
    pub capsa_config: Option<&'a Path>,
    /// Socket of a proxy snapshotter registered as [`PROXY_SNAPSHOTTER`].
    pub proxy_snapshotter: Option<&'a Path>,
}

/// Name under which [`ConfigParams::proxy_snapshotter`] is registered
/// (`ctr --snapshotter capsa`).
pub const PROXY_SNAPSHOTTER: &str = "capsa";

/// containerd's `config.toml` (version 2): everything private to `dir`,
/// CRI with runtimes `runc` (default) and `capsa`.
pub fn render(p: &ConfigParams) -> String {
    let dir = p.dir;
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let capsa_options = match p.capsa_config {
        Some(path) => format!(
            "\n[{cri}.containerd.runtimes.capsa.options]\nConfigPath = {:?}\n",
            path.display().to_string()
        ),
        None => String::new(),
    };
    let proxy = match p.proxy_snapshotter {
        Some(sock) => format!(
            "\n[proxy_plugins.{PROXY_SNAPSHOTTER}]\ntype = \"snapshot\"\naddress = {:?}\n",
            s(sock)
        ),
        None => String::new(),
    };
    format!(
        r#"version = 2
root = {root:?}
state = {state:?}

[grpc]
address = {sock:?}

[ttrpc]
address = {ttrpc:?}

[debug]
level = "debug"

[plugins."io.containerd.internal.v1.opt"]
path = {opt:?}

[{cri}]
sandbox_image = {pause:?}
stream_server_address = "127.0.0.1"
stream_server_port = "0"
enable_selinux = false
# Containers may not get a lower OOM score than containerd: CRI's -998 for
# the sandbox needs CAP_SYS_RESOURCE, which sandboxed CI machines lack.
restrict_oom_score_adj = true

[{cri}.cni]
bin_dir = {cni_bin:?}
conf_dir = {cni_conf:?}

[{cri}.containerd]
snapshotter = {snap:?}
default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
Root = {runc_root:?}

[{cri}.containerd.runtimes.capsa]
runtime_type = "io.containerd.capsa.v2"
# Kata's pod annotations reach the shim (capsa gates them: enable_annotations).
pod_annotations = ["io.katacontainers.*"]
{capsa_options}{proxy}"#,
        root = s(&dir.join("root")),
        state = s(&dir.join("state")),
        sock = s(p.socket),
        ttrpc = format!("{}.ttrpc", p.socket.display()),
        opt = s(&dir.join("opt")),
        pause = PAUSE_IMAGE,
        cni_bin = s(&dir.join("cni/bin")),
        cni_conf = s(&dir.join("cni/net.d")),
        snap = p.snapshotter,
        runc_root = s(&dir.join("runc")),
    )
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

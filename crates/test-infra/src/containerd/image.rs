//! OCI images built locally from the busybox rootfs (there is no registry),
//! as OCI layout tarballs for `ctr images import`, cached by content hash.

use super::{Containerd, PAUSE_IMAGE};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Reference of the busybox image ([`Containerd::import_busybox`]).
pub const BUSYBOX_IMAGE: &str = "capsa.test/busybox:1";

/// Where built image tarballs are kept between runs.
const CACHE_DIR: &str = "/var/cache/capsa/images";
/// Bumped when the tarball format changes, to invalidate the cache.
const FORMAT: &str = "capsa-oci-1";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The sandbox's process: waits for ever, exits 0 on SIGTERM or SIGINT
/// (as pid 1 it gets only signals it handles).
const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// Reference of the image with no layers ([`Containerd::import_empty`]).
pub const EMPTY_IMAGE: &str = "capsa.test/empty:1";

struct Spec {
    reference: &'static str,
    entrypoint: Vec<&'static str>,
    cmd: Vec<&'static str>,
    /// No layer at all (Kata's `k8s-empty-image` case), not the busybox one.
    empty: bool,
}

impl Containerd {
    /// Imports the busybox image (`Cmd ["sh"]`) and returns its reference.
    pub fn import_busybox(&self) -> String {
        self.import(&Spec {
            reference: BUSYBOX_IMAGE,
            entrypoint: vec![],
            cmd: vec!["sh"],
            empty: false,
        })
    }

    /// Imports the pod sandbox image, CRI's `sandbox_image`; returns its
    /// reference.
    pub fn import_pause(&self) -> String {
        self.import(&Spec {
            reference: PAUSE_IMAGE,
            entrypoint: vec!["/bin/sh", "-c", PAUSE_SCRIPT],
            cmd: vec![],
            empty: false,
        })
    }

    /// Imports an image with no layers (its rootfs is an empty
    /// directory under the overlayfs or native snapshotter) and returns
    /// its reference. A container of it runs what a volume brings.
    pub fn import_empty(&self) -> String {
        self.import(&Spec {
            reference: EMPTY_IMAGE,
            entrypoint: vec![],
            cmd: vec![],
            empty: true,
        })
    }

    /// Imports the busybox image and unpacks it into `snapshotter` (such
    /// as [`super::PROXY_SNAPSHOTTER`]) instead of the default one.
    pub fn import_busybox_into(&self, snapshotter: &str) -> String {
        self.import_with(
            &Spec {
                reference: BUSYBOX_IMAGE,
                entrypoint: vec![],
                cmd: vec!["sh"],
                empty: false,
            },
            Some(snapshotter),
        )
    }

    fn import(&self, spec: &Spec) -> String {
        self.import_with(spec, None)
    }

    fn import_with(&self, spec: &Spec, snapshotter: Option<&str>) -> String {
        let tarball = tarball(spec, self.dir());
        let path = tarball.to_str().expect("utf-8 path");
        match snapshotter {
            Some(name) => self.ctr_ok(&["images", "import", "--snapshotter", name, path]),
            None => self.ctr_ok(&["images", "import", path]),
        };
        let names = self.ctr_ok(&["images", "ls", "-q"]);
        assert!(
            names.lines().any(|n| n == spec.reference),
            "{} not among the images after importing {path}:\n{names}",
            spec.reference
        );
        spec.reference.to_string()
    }
}

/// The image's OCI layout tarball: from the cache if there, else built (and
/// cached when the cache directory is writable, else built in `scratch`).
fn tarball(spec: &Spec, scratch: &Path) -> PathBuf {
    let key = cache_key(spec);
    let name = spec.reference.replace(['/', ':'], "_");
    let file = format!("{name}-{}.tar", &key[..16]);
    let cache = Path::new(CACHE_DIR);
    let dir = if std::fs::create_dir_all(cache).is_ok() {
        cache
    } else {
        scratch
    };
    let path = dir.join(file);
    if path.is_file() {
        return path;
    }
    let bytes = build(spec, scratch);
    // Written aside and renamed: concurrent tests never see half a file.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).expect("image tarball temp file");
    std::io::Write::write_all(&mut tmp, &bytes).expect("write image tarball");
    tmp.persist(&path).expect("rename image tarball");
    path
}

/// Hash of everything the tarball is made of.
fn cache_key(spec: &Spec) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT);
    h.update(crate::rootfs::BUSYBOX_ROOTFS_SH);
    h.update(std::fs::read("/bin/busybox").expect("/bin/busybox: run `make deps`"));
    let described = json!([spec.reference, spec.entrypoint, spec.cmd, spec.empty]);
    h.update(serde_json::to_vec(&described).unwrap());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Builds the OCI layout tarball: one uncompressed layer (the busybox
/// rootfs; none for an empty image), the image config, the manifest and
/// `index.json` naming it.
fn build(spec: &Spec, scratch: &Path) -> Vec<u8> {
    let layers: Vec<Vec<u8>> = if spec.empty {
        vec![]
    } else {
        let rootfs = tempfile::tempdir_in(scratch).expect("rootfs dir");
        crate::rootfs::busybox(rootfs.path());
        vec![layer_tar(rootfs.path())]
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l))
        .collect();

    let mut config = json!({"Env": [PATH_ENV], "WorkingDir": "/"});
    if !spec.entrypoint.is_empty() {
        config["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        config["Cmd"] = json!(spec.cmd);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layer_descs,
    }))
    .unwrap();
    let tag = spec.reference.rsplit_once(':').map_or("latest", |(_, t)| t);
    let mut manifest_desc = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    manifest_desc["platform"] = json!({"architecture": arch(), "os": "linux"});
    manifest_desc["annotations"] = json!({
        "io.containerd.image.name": spec.reference,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    }))
    .unwrap();

    let mut out = tar::Builder::new(Vec::new());
    add_file(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add_file(&mut out, "index.json", &index);
    for blob in layers.iter().chain([&config, &manifest]) {
        let name = format!("blobs/sha256/{}", &sha256(blob)["sha256:".len()..]);
        add_file(&mut out, &name, blob);
    }
    out.into_inner().expect("image tarball")
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()})
}

fn add_file(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data).expect("tar entry");
}

/// `dir` as a tar stream: entries sorted, owned by root, fixed mtimes,
/// symlinks kept as links.
fn layer_tar(dir: &Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(&rel))
            .expect("read rootfs")
            .map(|e| rel.join(e.expect("rootfs entry").file_name()))
            .collect();
        entries.sort();
        for entry in &entries {
            tar.append_path_with_name(dir.join(entry), entry)
                .expect("tar rootfs entry");
        }
        let dirs = entries.into_iter().filter(|e| {
            let meta = std::fs::symlink_metadata(dir.join(e)).expect("stat");
            meta.is_dir()
        });
        // Reversed so that popping visits them in order.
        stack.extend(dirs.rev());
    }
    tar.into_inner().expect("layer tar")
}

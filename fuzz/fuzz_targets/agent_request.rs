//! The agent's checks of requests from the host: a request message decoded
//! from the bytes (the first byte picks its type), then every check the
//! agent makes before it acts: ids, paths, storages, the OCI spec's
//! conversion (`capsa_protocols::convert`), its check and its adaptation to
//! the guest (`container::spec`, bind sources resolved lexically instead of
//! on the filesystem), CopyFile, SetGuestDateTime, ReseedRandomDev and
//! kernel module names, and the network requests' conversions (MACs,
//! addresses and masks, routes, neighbours, DNS lines).
#![no_main]

use std::path::{Component, Path, PathBuf};

use capsa_agent::container::{hooks, spec};
use capsa_agent::guest::{copy_file, random, time};
use capsa_agent::network::{convert, dns, neigh, route};
use capsa_agent::storage::{self, StorageSpec};
use capsa_agent::{device, modules, rpc, validate};
use capsa_protocols::agent;
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::LinuxNamespaceType;
use protobuf::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => create_container(bytes),
        1 => exec_process(bytes),
        2 => copy_file(bytes),
        3 => create_sandbox(bytes),
        4 => update_container(bytes),
        5 => signal_process(bytes),
        6 => guest_time_and_random(bytes),
        7 => network(bytes),
        _ => sysctls(bytes),
    }
});

fn decode<M: Message>(bytes: &[u8]) -> Option<M> {
    M::parse_from_bytes(bytes).ok()
}

/// What the agent checks of a storage before it mounts it.
fn storage(s: &StorageSpec) {
    let root = Path::new(storage::STORAGE_ROOT);
    if let Ok(rel) = validate::relative_below("storage mount point", root, &s.mount_point) {
        assert!(rel.is_relative(), "{rel:?} from {:?}", s.mount_point);
        assert!(
            !rel.components().any(|c| c == Component::ParentDir),
            "{rel:?} from {:?}",
            s.mount_point
        );
    }
    let _ = storage::parse_options(&s.options);
    let _ = storage::local_mode(&s.options);
}

/// `path` made absolute and without `.`/`..`, as `canonicalize` would
/// without symbolic links.
fn lexical(path: &Path) -> std::io::Result<PathBuf> {
    if !path.is_absolute() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

fn create_container(bytes: &[u8]) {
    let Some(req) = decode::<agent::CreateContainerRequest>(bytes) else {
        return;
    };
    let Ok(req) = rpc::container_request(req) else {
        return;
    };
    req.storages.iter().for_each(storage);
    if validate::container_id(&req.container_id).is_err()
        || (!req.exec_id.is_empty() && validate::exec_id(&req.exec_id).is_err())
    {
        return;
    }
    let mut spec = req.spec;
    if spec::check(&spec).is_err() {
        return;
    }
    // Devices: their addresses parse or not, the spec rewrite for them
    // (found at one guest number) never panics.
    let found: Vec<_> = req
        .devices
        .iter()
        .filter(|d| device::Source::parse(&d.kind, &d.id).is_ok())
        .map(|d| {
            let block = device::Block {
                node: "/dev/vdb".into(),
                major: 254,
                minor: 16,
            };
            (d.clone(), block)
        })
        .collect();
    let _ = device::spec::update(&mut spec.clone(), &found);
    // The storages the agent would mount: their mount points are roots of
    // bind sources.
    let storage_root = Path::new(storage::STORAGE_ROOT);
    let roots: Vec<PathBuf> = req
        .storages
        .iter()
        .filter_map(|s| {
            validate::relative_below("storage mount point", storage_root, &s.mount_point).ok()
        })
        .map(|rel| storage_root.join(rel))
        .collect();
    if spec::adapt_with(&mut spec, &req.container_id, &roots, &lexical).is_ok() {
        // The hooks the agent runs itself are taken out; libcontainer gets
        // only createContainer and startContainer (guest hooks).
        let _ = hooks::AgentHooks::take(&mut spec, &req.container_id, PathBuf::from("/run/fuzz"));
        if let Some(h) = spec.hooks() {
            #[allow(deprecated)] // prestart: deprecated by OCI, still sent
            let prestart = h.prestart();
            assert!(
                prestart.is_none()
                    && h.create_runtime().is_none()
                    && h.poststart().is_none()
                    && h.poststop().is_none(),
                "hooks the agent runs are left for libcontainer: {h:?}"
            );
        }
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        for typ in [LinuxNamespaceType::Mount, LinuxNamespaceType::Pid] {
            assert!(
                namespaces.iter().any(|n| n.typ() == typ),
                "no {typ:?} namespace"
            );
        }
        assert!(
            namespaces
                .iter()
                .all(|n| n.typ() != LinuxNamespaceType::Network && n.path().is_none()),
            "{namespaces:?}"
        );
        // Bind mounts take their source from the share or a storage only.
        let shared = Path::new(capsa_protocols::GUEST_SHARED_DIR);
        for m in spec.mounts().iter().flatten().filter(|m| spec::is_bind(m)) {
            let source = m.source().clone().unwrap_or_default();
            assert!(
                source.starts_with(shared)
                    || roots
                        .iter()
                        .any(|r| source.starts_with(lexical(r).unwrap_or_default())),
                "bind source {source:?} outside {shared:?} and {roots:?}"
            );
        }
        let cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .expect("an adapted spec has a cgroups path");
        assert!(cgroup.is_absolute(), "cgroups path {cgroup:?}");
        assert!(
            !cgroup.components().any(|c| c == Component::ParentDir),
            "cgroups path {cgroup:?}"
        );
        let keys: Vec<String> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.sysctl().as_ref())
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            if let Some(path) = spec::sysctl_path(&key) {
                assert!(path.starts_with("/proc/sys/"), "sysctl {key:?}: {path:?}");
            }
        }
    }
}

fn exec_process(bytes: &[u8]) {
    let Some(req) = decode::<agent::ExecProcessRequest>(bytes) else {
        return;
    };
    let _ = validate::container_id(&req.container_id);
    let _ = validate::exec_id(&req.exec_id);
    if let Some(process) = req.process.as_ref() {
        let _ = capsa_protocols::convert::process_from_grpc(process);
    }
}

fn copy_file(bytes: &[u8]) {
    let Some(req) = decode::<agent::CopyFileRequest>(bytes) else {
        return;
    };
    let root = Path::new(copy_file::SANDBOX_DIR);
    if copy_file::check(root, &req).is_ok() {
        let rel = copy_file::relative_path(root, &req.path).expect("checked");
        let target = root.join(&rel);
        assert!(
            target.starts_with(root) && target != root,
            "{:?} accepted as {target:?}",
            req.path
        );
        assert!(req.offset >= 0 && req.offset <= req.file_size);
    }
}

fn create_sandbox(bytes: &[u8]) {
    let Some(req) = decode::<agent::CreateSandboxRequest>(bytes) else {
        return;
    };
    let req = rpc::sandbox_request(&req);
    req.storages.iter().for_each(storage);
    for (name, _) in &req.kernel_modules {
        let _ = modules::check_name(name);
    }
    let conf = dns::resolv_conf(&req.dns);
    assert!(conf.lines().count() >= req.dns.len());
}

/// What the agent converts of the network requests before it asks netlink.
fn network(bytes: &[u8]) {
    if let Some(req) = decode::<agent::UpdateInterfaceRequest>(bytes) {
        if let Some(iface) = req.interface.as_ref() {
            if let Ok(mac) = convert::parse_mac(&iface.hwAddr) {
                assert_eq!(mac.len(), 6);
                assert!(convert::format_mac(&mac).eq_ignore_ascii_case(&iface.hwAddr));
            }
            for a in &iface.IPAddresses {
                if let Ok((ip, len)) = convert::ip_address(a) {
                    assert!(len <= if ip.is_ipv4() { 32 } else { 128 });
                }
            }
        }
    }
    if let Some(req) = decode::<agent::UpdateRoutesRequest>(bytes) {
        let routes = req.routes.into_option().unwrap_or_default().Routes;
        assert_eq!(route::ordered(&routes).len(), routes.len());
        for r in &routes {
            let _ = route::to_message(r, Some(1));
        }
    }
    if let Some(req) = decode::<agent::AddARPNeighborsRequest>(bytes) {
        for n in req.neighbors.into_option().unwrap_or_default().ARPNeighbors {
            let _ = neigh::state(&n);
            let _ = convert::parse_mac(&n.lladdr);
            if let Some(to) = n.toIPAddress.as_ref() {
                let _ = convert::ip_address(to);
            }
        }
    }
}

fn update_container(bytes: &[u8]) {
    let Some(req) = decode::<agent::UpdateContainerRequest>(bytes) else {
        return;
    };
    let _ = validate::container_id(&req.container_id);
    if let Some(resources) = req.resources.as_ref() {
        let _ = capsa_protocols::convert::resources_from_grpc(resources);
    }
}

fn signal_process(bytes: &[u8]) {
    let Some(req) = decode::<agent::SignalProcessRequest>(bytes) else {
        return;
    };
    if validate::container_id(&req.container_id).is_ok() {
        let joined = Path::new("/run/capsa-agent").join(&req.container_id);
        assert_eq!(joined.parent(), Some(Path::new("/run/capsa-agent")));
    }
    let _ = validate::exec_id(&req.exec_id);
}

fn guest_time_and_random(bytes: &[u8]) {
    if let Some(req) = decode::<agent::SetGuestDateTimeRequest>(bytes) {
        let _ = time::timespec(req.Sec, req.Usec);
    }
    if let Some(req) = decode::<agent::ReseedRandomDevRequest>(bytes) {
        if random::check(&req.data).is_ok() {
            let _ = random::pool_info(&req.data);
        }
    }
}

fn sysctls(bytes: &[u8]) {
    let key = String::from_utf8_lossy(bytes);
    if let Some(path) = spec::sysctl_path(&key) {
        assert!(
            path.starts_with("/proc/sys/") && !path.components().any(|c| c == Component::ParentDir),
            "sysctl {key:?}: {path:?}"
        );
    }
}

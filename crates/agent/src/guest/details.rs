//! GetGuestDetails: what the guest and its agent offer.

use std::path::Path;

use capsa_protocols::agent;

use super::GuestError;

/// The storage drivers [`crate::storage`] handles.
pub const STORAGE_HANDLERS: &[&str] =
    &["virtio-fs", "local", "ephemeral", "blk", "scsi", "mmioblk"];
/// capsa's optional features (`AgentDetails.extra_features`): passfd I/O
/// ([`crate::passfd`]), guest hooks ([`crate::container::hooks`]), storages
/// shared by containers (`Storage.shared`).
pub const EXTRA_FEATURES: &[&str] = &["passfd-io", "guest-hooks", "shared-storage"];
/// Memory hotplug files, relative to the sysfs root.
const BLOCK_SIZE: &str = "devices/system/memory/block_size_bytes";
const PROBE: &str = "devices/system/memory/probe";

/// The memory block size: `block_size_bytes` holds it in hexadecimal
/// without a prefix (`8000000`).
pub fn parse_block_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    u64::from_str_radix(t, 16).ok()
}

/// The reply to `req`, with the memory facts read below `sys` (`/sys`).
/// As in Kata, each memory fact is given only when asked for; a guest
/// without memory hotplug (no `block_size_bytes`) answers 0.
pub fn details(
    sys: &Path,
    req: &agent::GuestDetailsRequest,
) -> Result<agent::GuestDetailsResponse, GuestError> {
    let mut reply = agent::GuestDetailsResponse::default();
    if req.mem_block_size {
        let path = sys.join(BLOCK_SIZE);
        reply.mem_block_size_bytes = match fs_err::read_to_string(&path) {
            Ok(text) => parse_block_size(&text).ok_or_else(|| GuestError::Unparsable {
                path: path.clone(),
                text: text.trim().to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
    }
    if req.mem_hotplug_probe {
        reply.support_mem_hotplug_probe = sys.join(PROBE).exists();
    }
    reply.agent_details = protobuf::MessageField::some(agent_details());
    Ok(reply)
}

/// The agent's own details.
pub fn agent_details() -> agent::AgentDetails {
    agent::AgentDetails {
        version: crate::rpc::AGENT_VERSION.to_string(),
        init_daemon: crate::init::is_init(),
        device_handlers: crate::device::HANDLERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        storage_handlers: STORAGE_HANDLERS.iter().map(|s| s.to_string()).collect(),
        supports_seccomp: false,
        extra_features: EXTRA_FEATURES.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_hexadecimal() {
        assert_eq!(parse_block_size("8000000\n"), Some(128 << 20));
        assert_eq!(parse_block_size("0x8000000"), Some(128 << 20));
        assert_eq!(parse_block_size("zz"), None);
    }

    #[test]
    fn reads_the_memory_facts_when_asked() {
        let sys = tempfile::tempdir().unwrap();
        let mem = sys.path().join("devices/system/memory");
        let ask = agent::GuestDetailsRequest {
            mem_block_size: true,
            mem_hotplug_probe: true,
            ..Default::default()
        };
        let r = details(sys.path(), &ask).unwrap();
        assert_eq!(r.mem_block_size_bytes, 0);
        assert!(!r.support_mem_hotplug_probe);

        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(mem.join("block_size_bytes"), "8000000\n").unwrap();
        std::fs::write(mem.join("probe"), "").unwrap();
        let r = details(sys.path(), &ask).unwrap();
        assert_eq!(r.mem_block_size_bytes, 0x800_0000);
        assert!(r.support_mem_hotplug_probe);
        let d = r.agent_details.as_ref().unwrap();
        assert_eq!(d.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(d.storage_handlers, STORAGE_HANDLERS);
        assert_eq!(d.device_handlers, ["blk", "scsi", "mmioblk"]);
        assert_eq!(d.extra_features, EXTRA_FEATURES);
        assert!(!d.init_daemon);

        let r = details(sys.path(), &agent::GuestDetailsRequest::default()).unwrap();
        assert_eq!(r.mem_block_size_bytes, 0, "not asked for");

        std::fs::write(mem.join("block_size_bytes"), "nope").unwrap();
        let e = details(sys.path(), &ask).unwrap_err().to_string();
        assert!(e.contains("block_size_bytes"), "{e}");
    }
}

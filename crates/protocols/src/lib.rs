//! The capsa agent API, shared by the host and the guest.
//!
//! Our own `.proto` files (`protos/`), wire-compatible with the Kata
//! Containers agent API: packages `grpc` and `types`, services
//! `grpc.AgentService` and `grpc.Health`, same method names and field
//! numbers. Code is generated at build time by `ttrpc-codegen` (async server
//! and client).

#![allow(clippy::all, unknown_lints, renamed_and_removed_lints)]

macro_rules! generated {
    ($($name:ident),*) => {
        $(
            #[allow(missing_docs, dead_code, non_camel_case_types, non_snake_case, non_upper_case_globals, trivial_casts, unused_imports, unused_results, unused_mut, unused_qualifications, clippy::all)]
            pub mod $name {
                include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
            }
        )*
    };
}

generated!(
    agent,
    agent_ttrpc,
    oci,
    types,
    health,
    health_ttrpc,
    tracing,
    tracing_ttrpc,
    cgroups_v2
);

pub mod convert;

/// The ttRPC metadata key of the W3C trace context of a request (Kata's
/// runtime and agent use OpenTelemetry's `TraceContextPropagator`).
pub const TRACEPARENT: &str = "traceparent";

/// vsock port the agent listens on (Kata's convention).
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Line capsa's agent writes on the guest console, whatever its log level,
/// once it listens. Not part of Kata's protocol: a runtime may use it to
/// avoid dialing too early, and must not require it.
pub const AGENT_READY_LINE: &str = "capsa-agent: listening on vsock port 1024";
/// virtio-fs tag of the directory the host shares with the guest.
pub const SHARED_FS_TAG: &str = "kataShared";
/// Where the guest mounts the shared directory.
pub const GUEST_SHARED_DIR: &str = "/run/kata-containers/shared/containers";

/// The guest path of a container's rootfs inside the shared directory.
pub fn guest_rootfs_path(container_id: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{container_id}/rootfs")
}

/// `Storage.driver` and `Device.type` of a virtio-blk PCI drive (Kata's
/// `blk`): `Storage.source` / `Device.id` is its PCI path (`02/00`: slot
/// of each device from the root bus down, two hex digits each).
pub const DRIVER_BLK: &str = "blk";
/// `Storage.driver` and `Device.type` of a SCSI disk on the VM's
/// virtio-scsi controller (Kata's `scsi`): `Storage.source` / `Device.id`
/// is its address `scsi-id:lun`.
pub const DRIVER_SCSI: &str = "scsi";
/// `Storage.driver` and `Device.type` of a disk the guest finds by its
/// kernel name (Kata's `mmioblk`, its Firecracker disks): `Storage.source`
/// / `Device.id` is its node, `/dev/<name>` (UML's `/dev/ubda`).
pub const DRIVER_MMIO_BLK: &str = "mmioblk";

/// The guest path where a container's rootfs on a hot-plugged block
/// device is mounted (Kata's `/run/kata-containers/<id>/rootfs`).
pub fn guest_block_rootfs_path(container_id: &str) -> String {
    format!("/run/kata-containers/{container_id}/rootfs")
}

/// The guest path where a block volume (a hot-plugged drive with a
/// filesystem) is mounted before it is bound into its container.
pub fn guest_block_volume_path(device_id: &str) -> String {
    format!("/run/kata-containers/sandbox/storage/{device_id}")
}

/// The agent policy's fixed names (Kata's), shared by the host and the guest.
pub mod policy {
    /// Where the guest keeps the policy the agent loads at boot.
    pub const DEFAULT_POLICY_PATH: &str = "/etc/capsa/default-policy.rego";
    /// The default policy: every request of the agent API allowed.
    pub const ALLOW_ALL: &str = include_str!("../policy/allow-all.rego");
    /// The Rego package of the rules (`data.agent_policy.<Request>`).
    pub const PACKAGE: &str = "agent_policy";
    /// The pod annotation carrying the pod's policy, base64-encoded Rego.
    pub const ANNOTATION: &str = "io.katacontainers.config.agent.policy";

    /// The rule deciding requests of type `request` (a message name).
    pub fn rule(request: &str) -> String {
        format!("data.{PACKAGE}.{request}")
    }
}

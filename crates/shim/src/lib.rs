//! The pure parts of the shim, as a library: what it reads from a task's
//! OCI spec (pod annotations, VM sizing, pod network) and the pod's host
//! cgroup (`sandbox_cgroup_only`). The binary
//! `containerd-shim-capsa-v2` uses them from here; the fuzz targets
//! (`fuzz/`) call them without a containerd.

pub mod annotations;
pub mod cgroup;
pub mod network;
pub mod sizing;

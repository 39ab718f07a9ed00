//! Host-side resources of a sandbox: what the runtime prepares on the
//! host and attaches to the VM for a container (the rootfs share,
//! volumes, block devices; network endpoints later). Each kind has the
//! same shape: prepare (check the host side), attach, detach, clean up.

pub mod block_source;

pub use block_source::{BlockKind, BlockSource, BlockSourceError, Refusal};

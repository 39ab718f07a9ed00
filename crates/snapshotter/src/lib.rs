//! `capsa-snapshotter`: a containerd proxy snapshotter whose snapshots are
//! filesystem image files (ext4 by default), one per snapshot, mounted by
//! whoever uses them as `ext4` with the `loop` option — or, for capsa's
//! shim, hot-plugged into the VM as a virtio block device.
//!
//! Layers: [`store`] (records on disk), [`copy`] (reflink or sparse copy of
//! images), [`snapshotter`] (the operations), [`service`] (containerd's
//! snapshots gRPC API over them), [`filter`] (`Walk` filters).

pub mod copy;
pub mod filter;
pub mod service;
pub mod snapshotter;
pub mod store;

pub use service::Service;
pub use snapshotter::{Config, Error, Snapshotter};

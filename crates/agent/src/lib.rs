//! capsa-agent: the guest agent of capsa.
//!
//! It runs as PID 1 of the VM's initrd: it mounts the base filesystems,
//! loads kernel modules, reaps orphans, and serves the agent API (ttRPC over
//! vsock, wire-compatible with the Kata Containers agent) that creates
//! containers with youki's libcontainer. A fatal error powers the VM off.
//!
//! Layers: [`rpc`] speaks the wire format and maps errors to ttRPC codes;
//! [`sandbox`] holds the state and implements the operations; [`container`],
//! [`storage`], [`device`], [`network`], [`stdio`], [`reaper`] and [`modules`] do the work.

pub mod connections;
pub mod container;
pub mod debug_console;
pub mod device;
pub mod error;
pub mod guest;
pub mod init;
pub mod logging;
pub mod modules;
pub mod network;
pub mod passfd;
pub mod policy;
pub mod power;
pub mod process;
pub mod reaper;
pub mod rpc;
pub mod sandbox;
pub mod server;
pub mod stdio;
pub mod storage;
pub mod validate;

//! capsa's sandbox runtime.
//!
//! Turns a configuration into a running sandbox (a VM with its helpers and an
//! agent), puts containers in it and takes everything down again, leaving
//! nothing behind.

mod error;
pub mod mount;
pub mod run;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod vm;

pub use error::Error;
pub use run::{run, RunSpec, Stdio};
pub use sandbox::Sandbox;
pub use spec::ProcessSpec;
pub use vm::VmSize;

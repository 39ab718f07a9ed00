//! capsa's configuration.
//!
//! One TOML file whose keys follow Kata Containers' `configuration.toml` where
//! the concept is the same (`[hypervisor.qemu]`, `[agent.capsa]`, `[runtime]`).
//! Unknown keys and bad values are errors that name the key and the file.
//!
//! A `[hypervisor.<driver>]` table is read into one driver-neutral
//! [`VmSettings`] (the keys every driver shares) and the driver's own
//! settings ([`DriverSettings`], e.g. [`QemuSettings`]). This crate checks
//! the shared keys; each driver checks its own (`capsa-hypervisor`'s
//! `load_config` runs both, through [`load_checked`]).

pub mod annotations;
mod driver;
mod error;
mod lookup;
mod model;
mod qemu;
mod uml;
mod validate;

pub use annotations::{apply_annotations, AnnotationError, Applied};
pub use error::{Error, Invalid};
pub use lookup::{
    find, load, load_checked, parse, parse_checked, Source, DEFAULT_PATHS, ENV_CONF_FILE,
};
pub use model::{
    AcceleratorChoice, AgentConfig, AgentSection, BlockDriver, Config, DriverSettings,
    HypervisorConfig, MachineType, QemuSettings, RuntimeConfig, SharedFs, UmlSettings,
    VirtioFsCache, VmSettings, DEFAULT_TCG_TB_SIZE, HEALTH_CHECK_FAILURES,
};

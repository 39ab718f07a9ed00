//! capsa's configuration.
//!
//! One TOML file whose keys follow Kata Containers' `configuration.toml` where
//! the concept is the same (`[hypervisor.qemu]`, `[agent.capsa]`, `[runtime]`).
//! Unknown keys and bad values are errors that name the key and the file.

pub mod annotations;
mod error;
mod lookup;
mod model;
mod validate;

pub use annotations::{apply_annotations, AnnotationError, Applied};
pub use error::Error;
pub use lookup::{find, load, parse, Source, DEFAULT_PATHS, ENV_CONF_FILE};
pub use model::{
    AgentConfig, AgentSection, Config, HypervisorConfig, QemuConfig, RuntimeConfig,
    HEALTH_CHECK_FAILURES,
};

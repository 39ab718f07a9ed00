use std::path::PathBuf;

/// Errors of loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration file {path} not found")]
    NotFound { path: PathBuf },
    #[error("read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors and unknown keys; toml's message names the key and the
    /// line.
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration file {path}: invalid value for `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A pod annotation that is not enabled, not supported, or bad.
    #[error(transparent)]
    Annotation(#[from] crate::AnnotationError),
}

/// A value out of range: the key (its full name, `hypervisor.qemu.x`)
/// and why. A driver's checks of its own keys return it; the loader adds
/// the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{key}`: {reason}")]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The error of the file at `path`.
    pub fn at(self, path: &std::path::Path) -> Error {
        Error::Invalid {
            path: path.into(),
            key: self.key,
            reason: self.reason,
        }
    }
}

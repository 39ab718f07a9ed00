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

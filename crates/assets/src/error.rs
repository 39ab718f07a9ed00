use std::path::PathBuf;

/// Errors of building guest assets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {0} not found")]
    MissingKernel(PathBuf),
    #[error("module {0} is neither in the kernel's module tree nor built in")]
    UnknownModule(String),
    #[error("{0} failed: {1}")]
    Tool(String, String),
    #[error("manifest: {0}")]
    Manifest(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

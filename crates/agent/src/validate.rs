//! Checks on identifiers and paths received from the host.
//!
//! Container and exec ids become directory names, cgroup names and map keys:
//! they must not be able to walk out of the directory they are joined to.

use std::path::{Component, Path, PathBuf};

mod beneath;

pub use beneath::{Beneath, ConfineError, SysError};

/// Longest container or exec id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why an id or a path from the host was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long, more than {MAX_ID_LEN}")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} {id:?} contains '/'")]
    Slash { kind: &'static str, id: String },
    #[error("{kind} {id:?} contains \"..\"")]
    DotDot { kind: &'static str, id: String },
    #[error("{kind} {id:?} is \".\"")]
    Dot { kind: &'static str, id: String },
    #[error("{kind} contains a NUL byte")]
    Nul { kind: &'static str },
    #[error("{kind} {path:?} is not absolute")]
    NotAbsolute { kind: &'static str, path: String },
    #[error("{kind} {path:?} contains a \"..\" component")]
    ParentComponent { kind: &'static str, path: String },
    #[error("{kind} {path:?} is not below {root}")]
    NotBelow {
        kind: &'static str,
        path: String,
        root: String,
    },
    #[error("{kind} {path:?} escapes {root} (through a symbolic link)")]
    Escapes {
        kind: &'static str,
        path: String,
        root: String,
    },
}

/// Checks a container id.
pub fn container_id(id: &str) -> Result<(), ValidateError> {
    check_id("container id", id)
}

/// Checks an exec id (the id of a process inside a container).
pub fn exec_id(id: &str) -> Result<(), ValidateError> {
    check_id("exec id", id)
}

fn check_id(kind: &'static str, id: &str) -> Result<(), ValidateError> {
    if id.is_empty() {
        return Err(ValidateError::Empty { kind });
    }
    if id.len() > MAX_ID_LEN {
        return Err(ValidateError::TooLong {
            kind,
            len: id.len(),
        });
    }
    if id.contains('\0') {
        return Err(ValidateError::Nul { kind });
    }
    let id_owned = || id.to_string();
    if id.contains('/') {
        return Err(ValidateError::Slash {
            kind,
            id: id_owned(),
        });
    }
    if id.contains("..") {
        return Err(ValidateError::DotDot {
            kind,
            id: id_owned(),
        });
    }
    if id == "." {
        return Err(ValidateError::Dot {
            kind,
            id: id_owned(),
        });
    }
    Ok(())
}

/// Checks a path of the guest given by the host (a mount point, a rootfs):
/// absolute, without NUL and without `..` components.
pub fn guest_path(kind: &'static str, path: &str) -> Result<PathBuf, ValidateError> {
    if path.is_empty() {
        return Err(ValidateError::Empty { kind });
    }
    if path.contains('\0') {
        return Err(ValidateError::Nul { kind });
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(ValidateError::NotAbsolute {
            kind,
            path: path.to_string(),
        });
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(ValidateError::ParentComponent {
            kind,
            path: path.to_string(),
        });
    }
    Ok(p.to_path_buf())
}

/// `path` (checked with [`guest_path`]) relative to `root`, of which it
/// must be a strict descendant (lexically; [`Beneath`] confines lookups).
pub fn relative_below(
    kind: &'static str,
    root: &Path,
    path: &str,
) -> Result<PathBuf, ValidateError> {
    let p = guest_path(kind, path)?;
    let outside = || ValidateError::NotBelow {
        kind,
        path: path.to_string(),
        root: root.display().to_string(),
    };
    let rel: PathBuf = p
        .strip_prefix(root)
        .map_err(|_| outside())?
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    if rel.as_os_str().is_empty() {
        return Err(outside());
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_ids() {
        for id in [
            "a",
            "web",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "pod_1.ctr-2+x",
            "a.b",
        ] {
            assert_eq!(container_id(id), Ok(()), "{id:?}");
        }
        assert_eq!(container_id(&"x".repeat(MAX_ID_LEN)), Ok(()));
    }

    #[test]
    fn refuses_bad_ids_with_precise_reasons() {
        assert_eq!(
            container_id(""),
            Err(ValidateError::Empty {
                kind: "container id"
            })
        );
        assert_eq!(
            exec_id(&"x".repeat(MAX_ID_LEN + 1)),
            Err(ValidateError::TooLong {
                kind: "exec id",
                len: MAX_ID_LEN + 1
            })
        );
        assert!(matches!(
            container_id("a/b"),
            Err(ValidateError::Slash { .. })
        ));
        assert!(matches!(
            container_id("/"),
            Err(ValidateError::Slash { .. })
        ));
        assert!(matches!(
            container_id(".."),
            Err(ValidateError::DotDot { .. })
        ));
        assert!(matches!(
            container_id("a..b"),
            Err(ValidateError::DotDot { .. })
        ));
        assert!(matches!(container_id("."), Err(ValidateError::Dot { .. })));
        assert!(matches!(
            container_id("a\0b"),
            Err(ValidateError::Nul { .. })
        ));
    }

    #[test]
    fn messages_name_the_kind_and_the_id() {
        let err = container_id("a/b").unwrap_err();
        assert_eq!(err.to_string(), "container id \"a/b\" contains '/'");
        let err = exec_id("").unwrap_err();
        assert_eq!(err.to_string(), "exec id is empty");
    }

    #[test]
    fn guest_paths() {
        assert_eq!(
            guest_path("mount point", "/run/x").unwrap(),
            PathBuf::from("/run/x")
        );
        assert!(matches!(
            guest_path("mount point", "run/x"),
            Err(ValidateError::NotAbsolute { .. })
        ));
        assert!(matches!(
            guest_path("mount point", "/run/../etc"),
            Err(ValidateError::ParentComponent { .. })
        ));
        assert!(matches!(
            guest_path("mount point", ""),
            Err(ValidateError::Empty { .. })
        ));
        assert!(matches!(
            guest_path("mount point", "/a\0"),
            Err(ValidateError::Nul { .. })
        ));
    }
}

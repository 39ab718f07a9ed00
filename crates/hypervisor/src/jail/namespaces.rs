//! The jail's namespaces and how its ids are mapped.
//!
//! The jailed process is `clone(2)`d straight into new user, mount, PID,
//! IPC and UTS namespaces (and a network one if asked): the kernel creates
//! the user namespace first and makes it the owner of the others, and the
//! process is PID 1 of its PID namespace, so nothing it forks outlives it.
//!
//! **Ids.** One host uid and one host gid ([`Identity`]) are mapped to
//! themselves, and nothing else is mapped: not host root, not a range.
//! The process runs as that uid inside and outside, and uid 0 does not
//! exist inside, so "root in the namespace" is never reachable (a 65536-id
//! subordinate range with 0 inside, as rootless containers use, would make
//! the guest's exploit "root in a user namespace" first: no gain here, the
//! kernel runs one uid). A dedicated host user without a user namespace
//! was the other choice; the namespace adds that every host file not owned
//! by the jail's uid appears owned by `nobody` inside, and that the jail's
//! mount, PID and IPC namespaces are owned by an unprivileged namespace.
//! The maps are written by the parent (host root), which holds
//! `CAP_SETUID`/`CAP_SETGID` in the parent namespace as the kernel requires.

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use super::{Identity, JailError};

/// The namespaces the jailed process is cloned into.
pub fn clone_flags(new_network: bool) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if new_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// The line of `/proc/PID/uid_map` (or `gid_map`) mapping `id` to itself.
pub fn id_map_line(id: u32) -> String {
    format!("{id} {id} 1\n")
}

/// Writes the jailed process's uid and gid maps (before it goes on).
pub fn write_id_maps(name: &str, pid: Pid, id: Identity) -> Result<(), JailError> {
    for (file, value) in [("uid_map", id.uid), ("gid_map", id.gid)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, id_map_line(value)).map_err(|source| JailError::Os {
            name: name.into(),
            what: format!("write {path}"),
            source,
        })?;
    }
    Ok(())
}

/// Refuses host root as the jail's identity.
pub fn check_identity(name: &str, id: Identity) -> Result<(), JailError> {
    for (what, value) in [("uid", id.uid), ("gid", id.gid)] {
        if value == 0 {
            return Err(JailError::RootIdentity {
                name: name.into(),
                what,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_id_is_mapped_to_itself() {
        assert_eq!(id_map_line(100_000), "100000 100000 1\n");
    }

    #[test]
    fn root_is_refused() {
        let err = check_identity("uml", Identity { uid: 0, gid: 5 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "jail uml: uid must not be 0 (root on the host)"
        );
        assert!(check_identity("uml", Identity { uid: 7, gid: 0 }).is_err());
        assert!(check_identity("uml", Identity { uid: 7, gid: 7 }).is_ok());
    }

    #[test]
    fn network_namespace_only_when_asked() {
        assert!(!clone_flags(false).contains(CloneFlags::CLONE_NEWNET));
        assert!(clone_flags(true).contains(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUSER));
    }
}

//! Netlink work inside a network namespace. `setns` changes the namespace
//! of the calling thread only, so the work runs on a thread of its own,
//! never on a tokio worker (which would then serve other tasks in the pod's
//! netns); the thread ends with the work.
//!
//! Also makes and removes the named network namespaces of `capsa run
//! --network bridge`: a new namespace bound on a file, as `ip netns add`
//! does, without `ip`.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::Handle;

use super::NetworkError;

/// Runs `work` with a netlink handle whose socket lives in `netns`.
pub(super) async fn run_in<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let netns_err = |path: &Path, source: std::io::Error| NetworkError::Netns {
        path: path.into(),
        source,
    };
    let file = File::open(netns).map_err(|e| netns_err(netns, e))?;
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("capsa-netns".into())
        .spawn(move || {
            let result = (|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| netns_err(&path, e.into()))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| netns_err(&path, e))?;
                rt.block_on(async {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(|e| netns_err(&path, e))?;
                    tokio::spawn(conn);
                    work(handle).await
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| netns_err(netns, e))?;
    rx.await
        .map_err(|_| NetworkError::ThreadLost(netns.to_path_buf()))?
}

/// Makes a new network namespace and binds it on `path` (a new file), so
/// that it lives until [`remove_named`]. `unshare` runs on a thread of its
/// own, which ends right after: no other work ever runs in the new netns
/// by accident.
pub(super) fn create_named(path: &Path) -> Result<(), NetworkError> {
    let netns_err = |source: std::io::Error| NetworkError::Netns {
        path: path.into(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(netns_err)?;
    let target = path.to_path_buf();
    let made = std::thread::Builder::new()
        .name("capsa-netns-new".into())
        .spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET)?;
            // The thread's own namespace (`/proc/self` is the process's).
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .map_err(netns_err)?
        .join()
        .unwrap_or(Err(nix::Error::EIO));
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(netns_err(e.into()));
    }
    Ok(())
}

/// Unbinds and removes a namespace made by [`create_named`]; the
/// namespace goes once nothing else holds it. Already gone is fine.
pub(super) fn remove_named(path: &Path) -> Result<(), NetworkError> {
    let netns_err = |source: std::io::Error| NetworkError::Netns {
        path: path.into(),
        source,
    };
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
        Err(e) => return Err(netns_err(e.into())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(netns_err(e)),
        _ => Ok(()),
    }
}

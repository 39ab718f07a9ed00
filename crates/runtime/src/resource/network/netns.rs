//! Netlink work inside a network namespace. `setns` changes the namespace
//! of the calling thread only, so the work runs on a thread of its own,
//! never on a tokio worker (which would then serve other tasks in the pod's
//! netns); the thread ends with the work.

use std::fs::File;
use std::future::Future;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
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

//! `capsa-snapshotter`: serves containerd's snapshots API on a Unix socket;
//! register it in containerd as `[proxy_plugins.capsa]` (see README).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use capsa_snapshotter::{Config, Service, Snapshotter};
use clap::Parser;
use containerd_snapshots::tonic::transport::Server;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Parser, Debug)]
#[command(version, about = "containerd snapshotter on filesystem image files")]
struct Args {
    /// Directory of the records, the template image and the snapshot images.
    #[arg(long, default_value = "/var/lib/capsa-snapshotter")]
    root: PathBuf,
    /// Unix socket to serve containerd's snapshots API on.
    #[arg(long, default_value = "/run/capsa-snapshotter/snapshotter.sock")]
    address: PathBuf,
    /// Size of each snapshot image (sparse), e.g. 1G, 512M.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    image_size: u64,
    /// Filesystem of the images: ext4, ext3 or ext2.
    #[arg(long, default_value = "ext4")]
    fs_type: String,
}

/// `N`, `NK`, `NM`, `NG`, `NT` (binary units) in bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("size {s:?}: unknown unit {c:?} (K, M, G, T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional unit"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "capsa_snapshotter=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = Config {
        root: args.root.clone(),
        image_size: args.image_size,
        fs_type: args.fs_type.clone(),
    };
    let snapshotter = tokio::task::spawn_blocking(move || Snapshotter::open(config))
        .await?
        .with_context(|| format!("open snapshotter root {}", args.root.display()))?;
    let listener = bind(&args.address)?;
    tracing::info!(root = %args.root.display(), address = %args.address.display(), "serving");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let served = Server::builder()
        .add_service(containerd_snapshots::server(std::sync::Arc::new(
            Service::new(snapshotter),
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&args.address);
    served.context("serve snapshots API")?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `path` (mode 0600: only root talks to a snapshotter), replacing a
/// stale socket but never another kind of file.
fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?,
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1X").unwrap_err().contains("\"1X\""));
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}

//! Sockets: listeners on TCP or unix endpoints, and the writer half of a connection.

use crate::config::Endpoint;
use crate::core::{Inbox, Input};
use anyhow::{Context, Result, bail};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// The read half of an accepted connection.
pub(crate) type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
/// The write half of an accepted connection.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// A write that takes longer than this closes the connection (the peer stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listener. A unix listener removes its socket file when dropped.
pub(crate) enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream socket bound at `path`.
    Unix {
        /// The listener.
        listener: UnixListener,
        /// Its socket file.
        path: PathBuf,
    },
}

impl Listener {
    /// Binds `ep`. A unix socket file left behind by a dead process is replaced; one that a
    /// live process listens on is an error.
    pub(crate) async fn bind(ep: &Endpoint) -> Result<Listener> {
        match ep {
            Endpoint::Tcp(hp) => {
                let l = TcpListener::bind(hp.as_str())
                    .await
                    .with_context(|| format!("binding TCP {hp}"))?;
                Ok(Listener::Tcp(l))
            }
            Endpoint::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)
                    .with_context(|| format!("binding unix socket {}", path.display()))?;
                Ok(Listener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
        }
    }

    /// The bound address (with the actual port when port 0 was asked for).
    pub(crate) fn local(&self) -> Endpoint {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => Endpoint::Tcp(a.to_string()),
                Err(_) => Endpoint::Tcp("unknown:0".into()),
            },
            Listener::Unix { path, .. } => Endpoint::Unix(path.clone()),
        }
    }

    /// Accepts one connection: its halves and a description of the peer.
    pub(crate) async fn accept(&self) -> io::Result<(BoxRead, BoxWrite, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Small control messages: send them at once.
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), peer.to_string()))
            }
            Listener::Unix { listener, path } => {
                let (s, _) = listener.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), format!("unix:{}", path.display())))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            // Best effort: the directory may already be gone.
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket", path.display());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!("another process listens on {}", path.display()),
        Err(_) => std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display())),
    }
}

/// Writes every buffer received on `rx` to `wr` until the channel closes (the owner dropped
/// the sender: queued buffers are written first) or a write fails or exceeds
/// [`WRITE_TIMEOUT`]. Then it shuts the socket down, aborts the connection's reader and, on
/// a write failure, reports `closed(reason)` to the core.
pub(crate) fn spawn_writer(
    mut wr: BoxWrite,
    mut rx: mpsc::Receiver<Vec<u8>>,
    reader: AbortHandle,
    inbox: Inbox,
    closed: impl FnOnce(String) -> Input + Send + 'static,
) {
    tokio::spawn(async move {
        let mut failure = None;
        while let Some(buf) = rx.recv().await {
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&buf)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure = Some(format!("write failed: {e}"));
                    break;
                }
                Err(_) => {
                    failure = Some(format!("write timed out after {WRITE_TIMEOUT:?}"));
                    break;
                }
            }
        }
        // Best effort: the peer may be gone already.
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        reader.abort();
        if let Some(why) = failure {
            inbox.send(closed(why)).await;
        }
    });
}
